"""The engines the multi-adapter benchmark compares: splice, peft (LoRA, ``adapter_names``) and
AdapterHub's ``adapters`` (``BatchSplit``), each behind the same few calls; and ``splice-generic``, splice with
every delta's banked path switched off, so that a mixed batch runs each adapter on its own rows (the path a
method without a bank takes), to measure what banking buys.

Every engine gets its own copy of the same random base model (same config, same
seed), adds ``count`` adapters of one method with random weights, and answers:
``base`` (the bare Hugging Face model, a separate copy with the same weights, so
every engine is measured against the same thing), ``one`` (one adapter active),
``mixed`` (row ``i`` through ``names[i]``) and ``row`` (one row alone with its
adapter, for the equality check).
"""

from __future__ import annotations

import importlib.metadata
from typing import Callable

import torch
from torch import nn

Inputs = dict[str, torch.Tensor]


def perturb(parameters, seed: int, std: float = 0.02) -> None:
    """Random adapter weights, so every adapter really changes the output (fresh ones are the identity)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in parameters:
            p.add_((torch.randn(p.shape, generator=gen) * std).to(p.device, p.dtype))


def version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


class Engine:
    """What every engine shares: the bare model its arms are compared with."""

    def __init__(self, make_model: Callable[[], nn.Module]):
        self.make_model = make_model
        self.bare = make_model()

    def base(self, inputs: Inputs):
        return self.bare(**inputs)[0]


class Splice(Engine):
    name = "splice"
    methods = ("lora", "pfeiffer", "houlsby", "ia3", "dora", "vera", "loha", "lokr", "compacter")

    def __init__(self, make_model: Callable[[], nn.Module]):
        import splice

        super().__init__(make_model)
        self.splice = splice
        self.model = splice.attach(make_model())
        self.version = splice.__version__

    def config(self, method: str):
        s = self.splice
        return {"lora": lambda: s.LoRA(r=16, alpha=32, targets="all-linear"),
                "pfeiffer": lambda: s.Bottleneck(reduction_factor=16),
                "houlsby": lambda: s.Bottleneck(placement="houlsby", reduction_factor=16),
                "ia3": lambda: s.IA3(),
                "dora": lambda: s.DoRA(r=16, alpha=32, targets="all-linear"),
                "vera": lambda: s.VeRA(r=256, targets=("q", "v")),
                "loha": lambda: s.LoHa(r=8, alpha=16, targets="all-linear"),
                "lokr": lambda: s.LoKr(r=8, alpha=16, targets="all-linear"),
                "compacter": lambda: s.Compacter(placement="houlsby", reduction_factor=32, non_linearity="gelu"),
                }[method]()

    def add(self, method: str, count: int) -> list[str]:
        names = [f"{method}{i}" for i in range(count)]
        for i, name in enumerate(names):
            self.model.add(name, self.config(method))
            perturb(self.model.adapters[name].parameters(), seed=i)
        return names

    def one(self, inputs: Inputs, name: str):
        if self.model.active != (name,):
            self.model.activate(name)
        return self.model(**inputs)[0]

    def mixed(self, inputs: Inputs, names: list[str]):
        return self.model(**inputs, adapter_names=names)[0]

    def row(self, inputs: Inputs, name: str):
        return self.one(inputs, name)


class SpliceGeneric(Splice):
    name = "splice-generic"

    def add(self, method: str, count: int) -> list[str]:
        names = super().add(method, count)
        for name in names:
            for delta in self.model.adapters[name].modules():
                if isinstance(delta, self.splice.methods.Delta):
                    delta.banked = False  # before the first forward: no plan has banked it yet
        return names


class Peft(Engine):
    name = "peft"
    methods = ("lora",)

    def __init__(self, make_model: Callable[[], nn.Module]):
        super().__init__(make_model)
        self.model = None
        self.version = version("peft")

    def add(self, method: str, count: int) -> list[str]:
        import peft

        names = [f"{method}{i}" for i in range(count)]
        config = peft.LoraConfig(r=16, lora_alpha=32, target_modules="all-linear")
        self.model = peft.get_peft_model(self.make_model(), config, adapter_name=names[0])
        for name in names[1:]:
            self.model.add_adapter(name, config)
        for i, name in enumerate(names):
            perturb([p for n, p in self.model.named_parameters() if f".{name}." in n], seed=i)
        self.model.eval()  # peft refuses adapter_names in training mode
        return names

    def one(self, inputs: Inputs, name: str):
        if self.model.active_adapter != name:
            self.model.set_adapter(name)
        return self.model(**inputs)[0]

    def mixed(self, inputs: Inputs, names: list[str]):
        return self.model(**inputs, adapter_names=names)[0]

    def row(self, inputs: Inputs, name: str):
        return self.one(inputs, name)


class Adapters(Engine):
    """AdapterHub's ``adapters`` (pins transformers 4.57.x: run in its own environment, see multi_adapter.py)."""

    name = "adapters"
    methods = ("lora", "pfeiffer", "houlsby", "ia3")

    def __init__(self, make_model: Callable[[], nn.Module]):
        import adapters

        super().__init__(make_model)
        self.adapters = adapters
        self.model = make_model()
        adapters.init(self.model)
        self.version = version("adapters")

    def config(self, method: str):
        a = self.adapters
        return {"lora": lambda: a.LoRAConfig(r=16, alpha=32, selfattn_lora=True, intermediate_lora=True,
                                             output_lora=True, attn_matrices=["q", "k", "v"]),
                "pfeiffer": lambda: a.SeqBnConfig(reduction_factor=16),
                "houlsby": lambda: a.DoubleSeqBnConfig(reduction_factor=16),
                "ia3": lambda: a.IA3Config()}[method]()

    def add(self, method: str, count: int) -> list[str]:
        names = [f"{method}{i}" for i in range(count)]
        for i, name in enumerate(names):
            self.model.add_adapter(name, config=self.config(method))
            perturb([p for n, p in self.model.named_parameters() if f".{name}." in n], seed=i)
        return names

    def one(self, inputs: Inputs, name: str):
        self.model.set_active_adapters(name)
        return self.model(**inputs)[0]

    def mixed(self, inputs: Inputs, names: list[str]):
        """BatchSplit needs each adapter's rows together: sort rows by adapter, run, and put them back."""
        order = sorted(range(len(names)), key=lambda i: names[i])
        groups = list(dict.fromkeys(names[i] for i in order))
        sizes = [sum(1 for n in names if n == g) for g in groups]
        self.model.set_active_adapters(self.adapters.composition.BatchSplit(*groups, batch_sizes=sizes))
        take = torch.tensor(order, device=next(iter(inputs.values())).device)
        out = self.model(**{k: v.index_select(0, take) for k, v in inputs.items()})[0]
        return out.index_select(0, torch.argsort(take))

    def row(self, inputs: Inputs, name: str):
        return self.one(inputs, name)


ENGINES = {"splice": Splice, "splice-generic": SpliceGeneric, "peft": Peft, "adapters": Adapters}
