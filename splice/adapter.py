"""One named adapter: a method config, a delta module per site, and an optional head."""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping

import torch
from torch import nn

from .anatomy import Anatomy, Site
from .errors import AdapterError, ConfigError
from .heads import Head
from .methods.base import STAGES, Delta, MethodConfig

BASE_NAME = "__base__"  # reserved: "no adapter" in per-row routing
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,127}$")


def check_name(name: str) -> str:
    """Adapter names become ModuleDict keys and folder names: keep them plain."""
    if not isinstance(name, str) or not _NAME.match(name) or name == BASE_NAME:
        raise AdapterError(
            f"Invalid adapter name {name!r}: use 1-128 letters, digits, '_' or '-' "
            f"(no dots, slashes or spaces), and not the reserved {BASE_NAME!r}."
        )
    return name


def adapter_named(adapters: Mapping[str, "Adapter"], name: str) -> "Adapter":
    """``adapters[name]``, or a clear error naming the adapters there are."""
    if name not in adapters:
        known = ", ".join(adapters) or "none yet"
        raise AdapterError(f"No adapter named {name!r} (adapters: {known}). Add it with model.add(name, config).")
    return adapters[name]


class Adapter(nn.Module):
    """The trainable part of one adapter (ΔΘ), kept apart from the frozen base (Θ₀).

    ``deltas`` nests stack -> layer -> role, so checkpoint keys read like
    ``layers.3.ffn.down.weight`` (a model-level site, such as a soft prompt, by its
    role alone: ``prompt.embedding``). ``head`` is either a splice :class:`~splice.heads.Head`
    run on the backbone's hidden states, or (``head_path``) the adapter's own copy of
    a base prediction head, swapped in while the adapter is active.
    """

    def __init__(self, config: MethodConfig, anatomy: Anatomy, head: str | Head | None = None):
        super().__init__()
        self.config = config
        sites = config.sites(anatomy)
        self.sites: dict[str, Site] = {site.key: site for site in sites}  # plain dict: base modules stay out
        self.deltas = nn.ModuleDict()
        shared = config.shared(anatomy)
        self.shared = shared  # saved as shared.*, beside the deltas (see MethodConfig.shared)
        for site in sites:
            *outer, leaf = _path(site)
            table = self.deltas
            for part in outer:
                if part not in table:
                    table[part] = nn.ModuleDict()
                table = table[part]
            table[leaf] = _checked(config.build(site, anatomy), config)
            if shared is not None:
                table[leaf].use_shared(shared)
        self.head_path: str | None = None
        self.head_site: Site | None = None
        self.head: nn.Module | None = None
        if isinstance(head, Head):
            head.build(anatomy.hidden_size)  # heads are created without the backbone's width
            if getattr(head, "causal", False) is None:  # "auto" pooling: last token on decoders
                head.causal = anatomy.causal
            self.head = head
        elif isinstance(head, str):
            module = anatomy.head(head)
            self.head_path = head
            self.head_site = Site("head", "model", -1, "head", module, module, 0, 0)
            self.head = copy.deepcopy(module)
        elif head is not None:
            raise AdapterError(
                f"head must be a splice.heads head (e.g. splice.heads.Classification(num_labels=2)) or the path "
                f"of a base head module such as 'classifier', got {head!r}."
            )

    @property
    def task_head(self) -> Head | None:
        """The splice head, if this adapter has one (as opposed to a copied base head)."""
        return self.head if isinstance(self.head, Head) else None

    def head_spec(self) -> str | dict | None:
        """How adapter.json records the head: a base module path, a head's options, or nothing."""
        return self.task_head.to_dict() if self.task_head is not None else self.head_path

    def delta(self, key: str) -> Delta:
        module = self.deltas
        for part in _path(self.sites[key]):
            module = module[part]
        return module

    def items(self):
        """(site, delta) pairs, in block order."""
        for key, site in self.sites.items():
            yield site, self.delta(key)

    def export(self) -> tuple[MethodConfig, dict[str, torch.Tensor]]:
        """What a save writes: the config and tensors with training-only reparameterisations folded away
        (a prefix trained through an MLP is saved as the plain prefix it computes)."""
        tensors = {}
        for key, site in self.sites.items():
            delta, name = self.delta(key), ".".join(_path(site))
            tensors.update({f"{name}.{k}": v for k, v in delta.folded_state().items()})
        if self.shared is not None:
            tensors.update({f"shared.{k}": v for k, v in self.shared.state_dict(keep_vars=True).items()})
        if self.head is not None:
            tensors.update({f"head.{k}": v for k, v in self.head.state_dict(keep_vars=True).items()})
        return self.config.folded(), tensors

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def num_bytes(self) -> int:
        """Bytes of tensor data this adapter writes to ``adapter.safetensors``."""
        return sum(t.numel() * t.element_size() for t in self.export()[1].values())


def _checked(delta: Delta, config: MethodConfig) -> Delta:
    """A delta that follows the contract, or an error telling the method's author what is wrong."""
    if not isinstance(delta, Delta) or delta.stage not in STAGES:
        raise ConfigError(
            f"{type(config).__name__}.build returned {type(delta).__name__}, which is not a splice.methods.Delta "
            f"with a stage in {STAGES}: subclass Delta and declare its stage (see splice.methods.base)."
        )
    return delta


def _path(site: Site) -> tuple[str, ...]:
    """Where a site's delta sits in ``deltas``: stack, layer, role (a model-level site: its role alone)."""
    return (site.role,) if site.layer < 0 else (site.stack, str(site.layer), site.role)


class HeadSwap(Delta):
    """A plan entry that replaces a base head's output with the adapter's own head."""

    stage = "output"
    reads_input = True

    def __init__(self, head: nn.Module):
        super().__init__()
        self.head = head

    def forward(self, x, y):
        return self.head(x)
