"""Union: several methods under one adapter name, trained, saved and loaded together.

The union's deltas are the union of its members' deltas: at a site where one
member acts, that member's delta; where several act (LoRA and IA³ on ``v``),
each in member order. Prompt and prefix members add their soft tokens to the
call as they would alone. Presets: :func:`splice.presets.mam`,
:func:`splice.presets.unipelt`.

``gates=True`` (UniPELT, Mao et al. 2022) gives every member a learned gate at
every site, ``sigmoid(g)`` (starting at 0.5), that scales what the member adds:
``y + sigmoid(g) * (member(x, y) - y)`` for sublayer and projection deltas, and
``sigmoid(g) * prefix`` for prefix keys and values. UniPELT computes its gates
from each layer's input; here they are one learned number per member and
layer, so that they also apply to prefixes, which enter through a cache
before any input is seen, and to rows routed in one batch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from ..anatomy import Anatomy, Site
from ..errors import ConfigError
from ..hooks.programs import Chain, Leaf, Program
from .base import Delta, MethodConfig, Recipe
from .bottleneck import Bottleneck
from .lora import LoRA
from .prefix import PrefixTuning
from .registry import config_from_dict, register


@register
@dataclass(frozen=True, kw_only=True, init=False)
class Union(MethodConfig):
    """Several method configs as one adapter: ``splice.Union(splice.PrefixTuning(), splice.LoRA(), gates=True)``."""

    method: ClassVar[str] = "union"
    recipes: ClassVar[Mapping[str, Recipe]] = {
        # the builders are defined below the class: look them up when a recipe is built
        "mam": Recipe(learning_rate=1e-3, help="prefix + scaled parallel adapter (He et al. 2022)",
                      build=lambda **options: mam(**options)),
        "unipelt": Recipe(learning_rate=1e-3, help="gated LoRA + bottleneck + prefix (Mao et al. 2022)",
                          build=lambda **options: unipelt(**options)),
    }

    members: tuple[MethodConfig, ...] = ()
    gates: bool = False

    def __init__(self, *configs: MethodConfig, members=(), gates: bool = False, layers=None):
        object.__setattr__(self, "members", tuple(configs) + tuple(members))
        object.__setattr__(self, "gates", gates)
        object.__setattr__(self, "layers", layers)
        self.__post_init__()

    def validate(self) -> None:
        if len(self.members) < 2 or not all(isinstance(m, MethodConfig) for m in self.members):
            raise ConfigError(
                f"Union needs two or more method configs, e.g. Union(splice.PrefixTuning(), splice.LoRA()); "
                f"got {self.members!r}."
            )
        nested = [m.method for m in self.members if isinstance(m, Union) or m.fused_adapters]
        if nested:
            raise ConfigError(f"Union members are plain methods; {nested} cannot be members.")
        methods = [m.method for m in self.members]
        if len(set(methods)) != len(methods):
            raise ConfigError(
                f"Union members must be different methods (got {methods}); one method's own options "
                "(targets, roles, rank_pattern) already cover several sites."
            )
        if not isinstance(self.gates, bool):
            raise ConfigError(f"Union.gates must be True or False, got {self.gates!r}.")
        if self.layers is not None:
            raise ConfigError("Union takes no layers=; give each member its own.")

    def sites(self, anatomy: Anatomy) -> list[Site]:
        found: dict[str, Site] = {}
        for member in self.members:
            found.update({site.key: site for site in member.sites(anatomy) if site.key not in found})
        return list(found.values())

    def shared(self, anatomy: Anatomy) -> nn.Module | None:
        """The members' shared state (VeRA's projections), by method name."""
        found = {m.method: m.shared(anatomy) for m in self.members}
        found = {method: module for method, module in found.items() if module is not None}
        return nn.ModuleDict(found) if found else None

    def build(self, site: Site, anatomy: Anatomy) -> Delta:
        acting = {m.method: m.build(site, anatomy) for m in self.members
                  if any(s.key == site.key for s in m.sites(anatomy))}
        return UnionDelta(acting, self.gates)

    def folded(self) -> Union:
        return Union(*(m.folded() for m in self.members), gates=self.gates)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "members": [m.to_dict() for m in self.members], "gates": self.gates,
                "layers": None}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Union:
        unknown = set(data) - {"method", "members", "gates", "layers"}
        if unknown or not isinstance(data.get("members"), list):
            raise ConfigError(f"A Union config holds 'members' (a list of method configs) and 'gates'; got {data!r}.")
        return cls(*(config_from_dict(m) for m in data["members"]), gates=data.get("gates", False),
                   layers=data.get("layers"))


class UnionDelta(Delta):
    """The members' deltas at one site (by method name), and their gates when the union has them."""

    stage = "composite"

    def __init__(self, members: dict[str, Delta], gates: bool):
        super().__init__()
        self.members = nn.ModuleDict(members)
        self.gates = nn.ParameterDict({name: nn.Parameter(torch.zeros(())) for name in members}) if gates else None

    def use_shared(self, shared: nn.Module) -> None:
        for name, delta in self.members.items():
            if name in shared:
                delta.use_shared(shared[name])

    def program(self) -> Program:
        """The members one after another at this site (each gated when the union has gates)."""
        leaves = [Leaf(Gated(delta, self.gates[name]) if self.gates is not None else delta)
                  for name, delta in self.members.items()]
        return leaves[0] if len(leaves) == 1 else Chain(leaves)

    def folded_state(self) -> dict[str, torch.Tensor]:
        state = {f"gates.{name}": gate.detach() for name, gate in (self.gates or {}).items()}
        for name, delta in self.members.items():
            state.update({f"members.{name}.{key}": value for key, value in delta.folded_state().items()})
        return state


class Gated(Delta):
    """A member's delta scaled by ``sigmoid(gate)``: what it adds (or its soft tokens) times the gate."""

    def __init__(self, delta: Delta, gate: nn.Parameter):
        super().__init__()
        self.delta, self.gate = delta, gate
        self.stage = delta.stage
        self.reads_input = delta.reads_input

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        base = inputs[-1]  # x for an input-stage delta, y for an output-stage one
        return base + torch.sigmoid(self.gate).to(base.dtype) * (self.delta(*inputs) - base)

    def soft(self) -> tuple[torch.Tensor, ...]:
        gate = torch.sigmoid(self.gate)
        return tuple(value * gate.to(value.dtype) for value in self.delta.soft())


# -- published combinations (splice.presets re-exports them) ---------------------------------------


def mam(prefix_length: int = 30, reduction_factor: float = 2.0, scale: float = 4.0) -> Union:
    """Mix-and-match adapter (He et al. 2022, "Towards a Unified View of Parameter-Efficient Transfer Learning").

    Prefix tuning at every self-attention plus a scaled parallel bottleneck beside
    every FFN, the combination the paper found best: prefix length 30 and a
    parallel adapter of width hidden/2 (r=512 on BART-large) with scale 4.
    """
    return Union(PrefixTuning(length=prefix_length),
                 Bottleneck(placement="parallel", reduction_factor=reduction_factor, scale=scale))


def unipelt(prefix_length: int = 10, lora_r: int = 8, lora_alpha: float = 16.0,
            reduction_factor: float = 16.0) -> Union:
    """UniPELT (Mao et al. 2022): LoRA on q and v, a sequential bottleneck after the FFN, and prefix tuning,
    each scaled by a learned gate per layer (see :mod:`splice.methods.union` for how splice's gates work).
    """
    return Union(LoRA(r=lora_r, alpha=lora_alpha, targets=("q", "v")),
                 Bottleneck(placement="pfeiffer", reduction_factor=reduction_factor),
                 PrefixTuning(length=prefix_length), gates=True)
