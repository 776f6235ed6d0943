"""The engines the training-step benchmark compares, each training one adapter on its own copy of a causal LM.

- splice: ``LoRA(r=8, alpha=16, targets=["q", "v"])``; ``Bottleneck(reduction_factor=16, residual_input=True)``,
  the Pfeiffer adapter reading the residual stream as AdapterHub's ``seq_bn`` does, so the math is the peer's;
- peft: ``LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"])``;
- adapters (AdapterHub, transformers 4.57.x only): ``LoRAConfig(r=8, alpha=16)`` (q and v by default) and
  ``SeqBnConfig(reduction_factor=16)``.

Every engine names its trainable tensors under one neutral key,
``layers.<i>.<q|v|ffn>.<lora_A|lora_B|down|up>.<weight|bias>``, so the benchmark can
check that the engines train the same tensors and give the peer splice's initial values.
"""

from __future__ import annotations

import re

import torch
from engines import version
from torch import nn

from splice.anatomy import is_quantized

Batch = dict[str, torch.Tensor]
Patterns = tuple[tuple[str, str | None], ...]  # (regex with layer/part/kind and maybe role groups, fixed role)
CHECKPOINTING = {"use_reentrant": False}  # frozen embeddings: reentrant checkpointing would see no input grads


def keyed(model: nn.Module, patterns: Patterns) -> dict[str, nn.Parameter]:
    """The trainable parameters of ``model`` under neutral keys; raises on one that no pattern names."""
    out = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        for pattern, role in patterns:
            match = re.search(pattern, name)
            if match:
                groups = match.groupdict()
                out[f"layers.{groups['layer']}.{role or groups['role']}.{groups['part']}."
                    f"{groups['kind'] or 'weight'}"] = parameter
                break
        else:
            raise RuntimeError(f"trainable tensor {name!r} is not one the benchmark compares; the engine trains more "
                               "than the adapter")
    return out


class Trainee:
    """One engine's model with one adapter, its trainable parameters keyed, and AdamW over them alone."""

    name: str
    library: str  # the module the engine imports, loaded before memory is measured
    methods: tuple[str, ...]
    patterns: Patterns
    mixes_dtypes = True  # trains float32 adapter weights over a bfloat16 base

    def __init__(self, base: nn.Module, method: str, lr: float, adapter_dtype: torch.dtype = torch.float32):
        if method not in self.methods:
            raise ValueError(f"{self.name} has no {method!r} arm (it has {', '.join(self.methods)})")
        self.quantized = any(is_quantized(m) for m in base.modules())
        self.model = self.adapt(base, method)
        self.model.train()
        self.parameters = keyed(self.model, self.patterns)
        for parameter in self.parameters.values():
            parameter.data = parameter.data.to(adapter_dtype)
        self.optimizer = torch.optim.AdamW(self.parameters.values(), lr=lr)

    def adapt(self, base: nn.Module, method: str) -> nn.Module:
        """``base`` with a fresh adapter of ``method`` added, and only that adapter trainable."""
        raise NotImplementedError

    @property
    def trainable(self) -> int:
        return sum(p.numel() for p in self.parameters.values())

    def step(self, batch: Batch) -> torch.Tensor:
        """One training step: forward with labels (causal-LM loss), backward, AdamW, gradients dropped."""
        loss = self.model(**batch).loss
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    def checkpoint_gradients(self) -> None:
        """Recompute each block's activations in backward instead of keeping them (Hugging Face's own switch)."""
        self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=CHECKPOINTING)


class Splice(Trainee):
    name = library = "splice"
    methods = ("lora", "pfeiffer")
    patterns = ((r"layers\.(?P<layer>\d+)\.(?P<role>q|v|ffn)(?:_residual)?\.(?P<part>lora_A|lora_B|down|up)"
                 r"\.(?P<kind>weight|bias)$", None),)

    def adapt(self, base: nn.Module, method: str) -> nn.Module:
        import splice

        self.version = splice.__version__
        model = splice.attach(base)
        model.add(method, {"lora": splice.LoRA(r=8, alpha=16, targets=["q", "v"]),
                           "pfeiffer": splice.Bottleneck(reduction_factor=16, residual_input=True)}[method])
        model.train_adapter(method)
        return model


class Peft(Trainee):
    name = library = "peft"
    methods = ("lora",)
    patterns = ((r"layers\.(?P<layer>\d+)\.self_attn\.(?P<role>q|v)_proj\.(?P<part>lora_A|lora_B)\.default"
                 r"\.(?P<kind>weight)$", None),)

    def adapt(self, base: nn.Module, method: str) -> nn.Module:
        import peft

        self.version = version("peft")
        if self.quantized:  # peft's QLoRA recipe; checkpointing is this benchmark's own switch, as for every engine
            base = peft.prepare_model_for_kbit_training(base, use_gradient_checkpointing=False)
        config = peft.LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj"],
                                 task_type="CAUSAL_LM")
        return peft.get_peft_model(base, config)


class Adapters(Trainee):
    """AdapterHub's ``adapters``; it pins transformers 4.57.x, so it runs in its own Python (see train_step.py)."""

    name = library = "adapters"
    methods = ("lora", "pfeiffer")
    mixes_dtypes = False  # 1.3.0 multiplies the base's activations with its weights as they are
    patterns = ((r"layers\.(?P<layer>\d+)\.self_attn\.(?P<role>q|v)_proj\.loras\.\w+\.(?P<part>lora_A|lora_B)"
                 r"(?P<kind>)$", None),
                (r"layers\.(?P<layer>\d+)\.output_adapters\.adapters\.\w+\.adapter_(?P<part>down|up)(?:\.0)?"
                 r"\.(?P<kind>weight|bias)$", "ffn"))

    def adapt(self, base: nn.Module, method: str) -> nn.Module:
        import adapters

        self.version = version("adapters")
        adapters.init(base)
        base.add_adapter(method, config={"lora": adapters.LoRAConfig(r=8, alpha=16, attn_matrices=["q", "v"]),
                                         "pfeiffer": adapters.SeqBnConfig(reduction_factor=16)}[method])
        base.train_adapter(method)
        return base


TRAINEES: dict[str, type[Trainee]] = {"splice": Splice, "peft": Peft, "adapters": Adapters}


def nonzero_start(trainee: Trainee, seed: int = 0, std: float = 0.01) -> None:
    """Fill the tensors a fresh adapter starts at zero (LoRA's B, a bottleneck's up) with small seeded noise, so
    the adapter changes the very first loss: equal losses then show that the engines compute the same adapter,
    not merely the same base."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in trainee.parameters.values():
            if not parameter.any():
                parameter.copy_(torch.randn(parameter.shape, generator=gen) * std)


def copy_initial_values(source: Trainee, target: Trainee) -> None:
    """Give ``target`` exactly ``source``'s adapter values; raises unless both train the same tensors."""
    mine, theirs = source.parameters, target.parameters
    shapes = {key: tuple(p.shape) for key, p in mine.items()}
    other = {key: tuple(p.shape) for key, p in theirs.items()}
    if shapes != other:
        differ = sorted(set(shapes.items()) ^ set(other.items()))[:6]
        raise RuntimeError(f"{source.name} and {target.name} train different tensors, e.g. {differ}")
    with torch.no_grad():
        for key, parameter in theirs.items():
            parameter.copy_(mine[key])
