"""Bottleneck adapters: down-projection -> activation -> up-projection, added back.

Placements (Houlsby et al. 2019; Pfeiffer et al. 2021; He et al. 2022):

- ``pfeiffer``: after the FFN sublayer, ``y + f(y)``;
- ``houlsby``: after the attention sublayer and after the FFN, ``y + f(y)``;
- ``parallel``: beside the FFN, fed the sublayer's *input*, ``y + scale * f(x)``;
- any placement with ``roles=(...)`` to choose the sublayers yourself.

``y`` is the sublayer's output before the model's own residual add. The
up-projection starts at zero, so a fresh adapter leaves the output unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .. import kernels
from ..anatomy import SUBLAYER_ROLES, Anatomy, Site
from ..errors import ConfigError
from ..kernels import RowSlots, reference
from .base import ACTIVATIONS, Delta, MethodConfig, Recipe
from .registry import register

PLACEMENTS = {"pfeiffer": ("ffn",), "houlsby": ("attn", "ffn"), "parallel": ("ffn",)}


@register
@dataclass(frozen=True, kw_only=True)
class Bottleneck(MethodConfig):
    """A bottleneck adapter; size it by ``r`` (hidden units) or ``reduction_factor`` (hidden / r).

    Defaults to Pfeiffer placement with reduction factor 16, ReLU, and scale 1.
    ``ln_before`` / ``ln_after`` add the adapter's own LayerNorm on its input /
    on the up-projection's output, as the ``adapters`` library offers.

    ``residual_input`` feeds the adapter from the residual stream ``x`` entering the
    sublayer, as AdapterHub's bottleneck adapters do: a sequential adapter sees
    ``N(y + x)`` (``N`` the block's own post-LN on post-LN models, none on pre-norm
    ones) and returns ``y + f(N(y + x))`` (AdapterHub ``seq_bn``); a parallel one
    sees ``x`` itself (``par_bn``; on pre-norm models that is the un-normalised stream).
    """

    method: ClassVar[str] = "bottleneck"
    recipes: ClassVar[Mapping[str, Recipe]] = {
        "pfeiffer": Recipe({"placement": "pfeiffer", "reduction_factor": 16}, 1e-3,
                           help="bottleneck after the FFN (Pfeiffer et al. 2021)"),
        "houlsby": Recipe({"placement": "houlsby", "reduction_factor": 16}, 2e-3,
                          help="bottlenecks after attention and FFN (Houlsby et al. 2019)"),
        "parallel": Recipe({"placement": "parallel", "reduction_factor": 16, "scale": 4.0}, 1e-3,
                           help="scaled bottleneck beside the FFN (He et al. 2022)"),
    }

    placement: str = "pfeiffer"
    roles: tuple[str, ...] | None = None
    r: int | None = None
    reduction_factor: float | None = None
    non_linearity: str = "relu"
    scale: float = 1.0
    ln_before: bool = False
    ln_after: bool = False
    dropout: float = 0.0
    init: str = "bert"
    residual_input: bool = False

    def validate(self) -> None:
        self._require_choice("placement", self.placement, PLACEMENTS)
        self._require_choice("non_linearity", self.non_linearity, ACTIVATIONS)
        self._require_choice("init", self.init, {"bert", "kaiming"})
        if self.r is not None and self.reduction_factor is not None:
            raise ConfigError(
                "Bottleneck takes r or reduction_factor, not both: r is the hidden width, "
                "reduction_factor = hidden_size / r."
            )
        if self.r is None and self.reduction_factor is None:
            object.__setattr__(self, "reduction_factor", 16)
        if self.r is not None and (not isinstance(self.r, int) or isinstance(self.r, bool) or self.r <= 0):
            raise ConfigError(f"Bottleneck.r must be a positive integer, got {self.r!r}.")
        self._require_positive("reduction_factor", self.reduction_factor, allow_none=True)
        self._require_positive("scale", self.scale)
        self._require_fraction("dropout", self.dropout)
        if self.residual_input and "cross_attn" in (self.roles or ()):
            raise ConfigError("Bottleneck.residual_input reads the residual stream of attn or ffn, not cross_attn.")
        if self.roles is not None:
            bad = [role for role in self.roles if role not in SUBLAYER_ROLES]
            if bad or not self.roles:
                raise ConfigError(
                    f"Bottleneck.roles must be sublayer roles from {SUBLAYER_ROLES}, got {self.roles!r}."
                )

    @property
    def parallel(self) -> bool:
        return self.placement == "parallel"

    def sites(self, anatomy: Anatomy) -> list[Site]:
        roles = self.roles or PLACEMENTS[self.placement]
        if self.residual_input:  # the same sublayers, seen together with their residual stream
            roles = tuple(role if role.endswith("_residual") else f"{role}_residual" for role in roles)
        return self.sites_for(anatomy, roles)

    def hidden_units(self, features: int) -> int:
        """The bottleneck width at a site with ``features`` input features."""
        return self.r if self.r is not None else max(1, int(features // self.reduction_factor))

    def build(self, site: Site, anatomy: Anatomy) -> Delta:
        return BottleneckDelta(site.out_features, self.hidden_units(site.out_features), self, site.norm)


class BottleneckDelta(Delta):
    """``y + scale * up(act(down(h)))`` with ``h = y`` (sequential), ``h = x`` (parallel),
    or ``h = N(y + x)`` (sequential reading the residual stream ``x``)."""

    stage = "output"
    banked = True
    fusable = True
    bank_identity = {"ln_before.weight": 1.0, "ln_after.weight": 1.0}  # rows of other setups: LayerNorm unscaled

    def __init__(self, features: int, units: int, config: Bottleneck, norm: nn.Module | None = None):
        super().__init__()
        self.reads_input = config.parallel or config.residual_input
        self.sums_residual = config.residual_input and not config.parallel
        self._norm = (norm,)  # the base's own module: kept out of this adapter's parameters
        self.scale = config.scale
        self.ln_before = nn.LayerNorm(features) if config.ln_before else None
        self.down = nn.Linear(features, units)
        self.act = ACTIVATIONS[config.non_linearity]()
        self.activation = "silu" if config.non_linearity == "swish" else config.non_linearity  # the kernels' name
        self.dropout = nn.Dropout(config.dropout)
        self.up = nn.Linear(units, features)
        self.ln_after = nn.LayerNorm(features) if config.ln_after else None
        if config.init == "bert":
            nn.init.normal_(self.down.weight, std=0.02)
        else:
            nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)  # zero up-projection: a fresh adapter is the identity
        nn.init.zeros_(self.up.bias)

    def adapter_input(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """What the bottleneck reads: the sublayer output, its input, or the normed residual sum."""
        if self.sums_residual:
            total = y + x
            norm = self._norm[0]
            return norm(total) if norm is not None else total
        return x if self.reads_input else y

    @staticmethod
    def route_key(delta: "BottleneckDelta") -> tuple:
        return (delta.activation, delta.reads_input, delta.sums_residual, delta.ln_before is None,
                delta.ln_after is None, delta.dropout.p)

    @staticmethod
    def bank_sources(delta: "BottleneckDelta") -> dict[str, torch.Tensor | float]:
        sources = {"down.weight": delta.down.weight, "down.bias": delta.down.bias, "up.weight": delta.up.weight,
                   "up.bias": delta.up.bias, "scale": delta.scale}
        for name in ("ln_before", "ln_after"):
            norm = getattr(delta, name)
            if norm is not None:
                sources.update({f"{name}.weight": norm.weight, f"{name}.bias": norm.bias})
        return sources

    @staticmethod
    def routed(first: "BottleneckDelta", table: dict[str, torch.Tensor], rows: RowSlots, x: torch.Tensor,
               y: torch.Tensor) -> torch.Tensor:
        """Per-row bottlenecks of one layout: fused down -> act -> up where the layout allows."""
        slots, down_w, scale = rows.slots, table["down.weight"], table["scale"]
        h = first.adapter_input(x, y)  # one site: every delta here shares its norm
        if first.ln_before is not None:
            h = h.to(down_w.dtype).reshape(h.shape[0], -1, h.shape[-1])
            h = _routed_layer_norm(h, table["ln_before.weight"], table["ln_before.bias"], slots, first.ln_before.eps)
        if first.ln_after is None and not (first.training and first.dropout.p > 0):
            return kernels.bottleneck(h, y, down_w, table["down.bias"], table["up.weight"], table["up.bias"], scale,
                                      rows, first.activation)
        h = first.dropout(first.act(reference.down(h, down_w, table["down.bias"], slots)))
        h = reference.up(h, table["up.weight"], table["up.bias"], slots)
        if first.ln_after is not None:
            h = _routed_layer_norm(h, table["ln_after.weight"], table["ln_after.bias"], slots, first.ln_after.eps)
        return y + (scale.index_select(0, reference.gather_index(slots, scale))[:, None, None] * h).reshape(
            y.shape).to(y.dtype)

    def change(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """What the adapter adds to ``y``: ``scale * up(act(down(h)))`` (in the adapter's dtype)."""
        h = self.adapter_input(x, y).to(self.down.weight.dtype)
        if self.ln_before is not None:
            h = self.ln_before(h)
        h = self.up(self.dropout(self.act(self.down(h))))
        if self.ln_after is not None:
            h = self.ln_after(h)
        return self.scale * h

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return y + self.change(x, y).to(y.dtype)


def _routed_layer_norm(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, slots: torch.Tensor,
                       eps: float) -> torch.Tensor:
    """LayerNorm with each row's own affine parameters (rows of other setups: weight 1, bias 0)."""
    take = reference.gather_index(slots, weight)
    return F.layer_norm(h, h.shape[-1:], eps=eps) * weight.index_select(0, take)[:, None, :] + bias.index_select(
        0, take)[:, None, :]
