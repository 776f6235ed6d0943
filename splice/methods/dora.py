"""DoRA (Liu et al. 2024): weight-decomposed LoRA, a trained magnitude per output times a LoRA-moved direction.

The adapted weight is ``m · (W + s·B·A) / ‖W + s·B·A‖``, the norm taken per output
(each row of the ``[out, in]`` weight) and detached from the gradient, as the paper's
section 4.3 and peft's ``use_dora=True`` do. ``m`` starts at ``‖W‖``, ``B`` at zero, so
a fresh adapter is the identity. Through the hooks, with ``f = m / ‖W + s·B·A‖``::

    y' = y + (f - 1) · (y - bias) + f · s · B·A·x

(peft's form: the base output is reused, so there is no second matmul with ``W``; only
while training with dropout is it recomputed from the dropped-out input, as peft does).
Mergeable: ``W ← f · (W + s·B·A)``, undone with the same ``f``; merges rescale rows, so
adapters merged after a DoRA must be unmerged first (``merges_commute = False``).
The norm reads the site's weight as it is, so with other adapters merged into the
base it sees them, as peft's does.

``convention="adapters"`` computes what AdapterHub's ``DoRAConfig`` does, which differs from
peft's in two ways: the norm leaves the scaling out (``‖W + B·A‖``; the same where
``alpha = r``), and the rescale takes in the bias (``y' = f · (y + s·B·A·x)``, so a merge
rescales the bias too). peft's format has no such option: such adapters save as splice.

Per-row routing banks each adapter's ``A``, ``B`` and ``f`` (a per-output scaling, computed when
its slot is written): ``y' = (y - base) + f · (base + s·B·A·x)`` with ``base`` the rescaled part
of ``y``, one LoRA call and one row scaling for every row at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from .. import kernels
from ..anatomy import Anatomy, Site, linear_weight
from ..errors import ConfigError
from ..kernels import RowSlots
from . import principal
from .base import Delta, Recipe, columns_of, float_weight, set_rows
from .lora import LoRA, LoRADelta
from .registry import register

CONVENTIONS = ("peft", "adapters")


@register
@dataclass(frozen=True, kw_only=True)
class DoRA(LoRA):
    """Weight-decomposed low-rank adaptation: LoRA's options, plus a trained magnitude per output.

    ``init`` is ``"kaiming"`` or ``"gaussian"`` (``B`` starts at zero either way; DoRA from a
    PiSSA / OLoRA start is not implemented). Not exactly averageable (the norm is not linear).
    ``convention``: ``"peft"`` (the paper's, peft's) or ``"adapters"`` (AdapterHub's; see the module).
    """

    method: ClassVar[str] = "dora"
    merges_commute: ClassVar[bool] = False
    averages_exactly: ClassVar[bool] = False
    recipes: ClassVar[Mapping[str, Recipe]] = {
        "dora": Recipe({"r": 8, "alpha": 16.0, "targets": ("q", "v"), "dropout": 0.1}, 5e-4,
                       help="weight-decomposed LoRA of q and v (Liu et al. 2024)"),
    }

    convention: str = "peft"

    def validate(self) -> None:
        super().validate()
        self._require_choice("convention", self.convention, CONVENTIONS)
        if self.init not in principal.PLAIN:
            raise ConfigError(f"DoRA.init must be 'kaiming' or 'gaussian', got {self.init!r} (DoRA from a PiSSA / "
                              "OLoRA start is not implemented).")

    def build(self, site: Site, anatomy: Anatomy) -> Delta:
        return DoRADelta(site, self.rank_at(site), self.scaling_at(site), self)

    def plain(self) -> LoRA:
        return self


class DoRADelta(LoRADelta):
    """A LoRA pair plus ``magnitude`` (``[out]``) at one projection; reads the site's base weight and bias."""

    bank_identity = {"factor": 1.0}  # rows of other setups: nothing rescaled

    def __init__(self, site: Site, r: int, scaling: float, config: DoRA):
        super().__init__(site.in_features, site.out_features, r, scaling, config)
        self._site = (site,)  # a tuple, so the base module stays out of this module's parameters and state
        self._merged_factor: torch.Tensor | None = None
        self.convention = config.convention
        self.magnitude = nn.Parameter(torch.empty(site.out_features))
        if not self.magnitude.is_meta:
            with torch.no_grad():
                self.magnitude.copy_(self.weight_norm())

    def base_weight(self) -> torch.Tensor:
        """The site's rows of the base weight, ``[out, in]``, as it is now."""
        site = self._site[0]
        return columns_of(float_weight(site, "DoRA"), site.columns, 0)

    def base_bias(self) -> torch.Tensor | None:
        site = self._site[0]
        bias = getattr(site.module, "bias", None)
        return None if bias is None else columns_of(bias, site.columns, 0)

    def weight_norm(self) -> torch.Tensor:
        """``‖W + s·B·A‖`` per output (``‖W + B·A‖`` in the adapters convention), detached (the paper treats it
        as a constant)."""
        scaling = self.scaling if self.convention == "peft" else 1.0
        with torch.no_grad():
            weight = self.base_weight().to(self.magnitude.dtype)
            return torch.linalg.norm(weight + scaling * (self.lora_B.weight @ self.lora_A.weight), dim=1)

    def factor(self) -> torch.Tensor:
        """``f = m / ‖W + s·B·A‖``, the rescale of each output."""
        return self.magnitude / self.weight_norm()

    def rescaled(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The part of the output ``f`` rescales besides the update: ``W·x`` (peft: recomputed from the
        dropped-out input while training with dropout, as peft does; else ``y`` less the bias), or ``y``
        itself, bias included (adapters). ``x`` is the input after this delta's dropout."""
        if self.convention == "adapters":
            return y
        if self.training and self.dropout.p > 0:
            return nn.functional.linear(x, self.base_weight().to(x.dtype))
        bias = self.base_bias()
        return y if bias is None else y - bias.to(y.dtype)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        factor = self.factor()
        x = self.dropout(x.to(self.lora_A.weight.dtype))
        update = self.lora_B(self.lora_A(x)) * self.scaling
        base = self.rescaled(x, y)
        return y + ((factor - 1) * base.to(factor.dtype) + factor * update).to(y.dtype)

    @staticmethod
    def route_key(delta: "DoRADelta") -> tuple:
        return (delta.dropout.p, delta.convention)

    @staticmethod
    def bank_sources(delta: "DoRADelta") -> dict[str, torch.Tensor | float]:
        return {**LoRADelta.bank_sources(delta), "factor": delta.factor()}

    @staticmethod
    def bank_inputs(delta: "DoRADelta") -> list[torch.Tensor]:
        site = delta._site[0]  # f reads the base weight: a merge of another adapter there changes it
        return [*Delta.bank_inputs(delta), linear_weight(site.module)]

    @staticmethod
    def routed(first: "DoRADelta", table: dict[str, torch.Tensor], rows: RowSlots, x: torch.Tensor,
               y: torch.Tensor) -> torch.Tensor:
        """Per-row DoRA: ``(y - base) + f · (base + s·B·A·x)`` with each row's own slot (slot -1: ``y``)."""
        x = first.dropout(x.to(table["a"].dtype))
        base = first.rescaled(x, y).to(table["a"].dtype)  # one site: every member reads the same base weight
        moved = kernels.scale_rows(kernels.lora(x, base, table["a"], table["b"], table["scale"], rows),
                                   table["factor"], rows)
        return (y - base.to(y.dtype)) + moved.to(y.dtype)

    # Both in float64: f can be small, and unmerging divides by it.
    def merge(self, site: Site) -> None:
        factor = (self.magnitude.detach() / self.weight_norm()).double()
        merged = factor[:, None] * (self.base_weight().double() + self.delta_weight().double())
        set_rows(site.module, site.columns, merged)
        self._rescale_bias(site, factor)
        self._merged_factor = factor

    def unmerge(self, site: Site) -> None:
        factor = self._merged_factor  # the merge's own f: the norm of the merged weight is another number
        base = self.base_weight().double() / factor[:, None] - self.delta_weight().double()
        set_rows(site.module, site.columns, base)
        self._rescale_bias(site, 1 / factor)
        self._merged_factor = None

    def _rescale_bias(self, site: Site, factor: torch.Tensor) -> None:
        """In the adapters convention the bias is rescaled with the weight (peft's is not)."""
        bias = getattr(site.module, "bias", None)
        if self.convention == "peft" or bias is None:
            return
        rows = columns_of(bias, site.columns, 0).double() * factor
        with torch.no_grad():
            if isinstance(site.columns, torch.Tensor):
                bias.index_copy_(0, site.columns.to(bias.device), rows.to(bias.dtype))
            else:
                columns_of(bias, site.columns, 0).copy_(rows.to(bias.dtype))
