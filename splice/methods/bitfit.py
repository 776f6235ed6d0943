"""BitFit (Ben Zaken et al. 2022) as a swappable delta: a trainable bias per projection.

The base biases are never touched: each adapter keeps its own bias delta,
added to the projection's output (also where the base layer has no bias), so
adapters can be switched like any other. Mergeable into layers that have a bias.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from .. import kernels
from ..anatomy import PROJECTION_ROLES, Anatomy, Site
from ..kernels import RowSlots
from .base import Delta, MethodConfig, Recipe, base_bias, columns_of, expand_targets, normalise_targets
from .registry import register


@register
@dataclass(frozen=True, kw_only=True)
class BitFit(MethodConfig):
    """A trainable bias delta on each projection named by ``targets`` (default: every projection)."""

    method: ClassVar[str] = "bitfit"
    mergeable: ClassVar[bool] = True
    averages_exactly: ClassVar[bool] = True
    recipes: ClassVar[Mapping[str, Recipe]] = {
        "bitfit": Recipe(learning_rate=1e-3, help="bias deltas on every projection (Ben Zaken et al. 2022)"),
    }

    targets: tuple[str, ...] | str = ("all-linear",)

    def validate(self) -> None:
        normalise_targets(self, "targets", PROJECTION_ROLES)

    def sites(self, anatomy: Anatomy) -> list[Site]:
        return self.sites_for(anatomy, expand_targets(self.targets, anatomy))

    def build(self, site: Site, anatomy: Anatomy) -> Delta:
        return BiasDelta(site.out_features)


class BiasDelta(Delta):
    """``y + b``, with ``b`` starting at zero."""

    stage = "output"
    reads_input = False
    banked = True

    def __init__(self, features: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(features))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return y + self.bias.to(y.dtype)

    @staticmethod
    def bank_sources(delta: "BiasDelta") -> dict[str, torch.Tensor]:
        return {"bias": delta.bias}

    @staticmethod
    def routed(first: "BiasDelta", table: dict[str, torch.Tensor], rows: RowSlots, x: torch.Tensor,
               y: torch.Tensor) -> torch.Tensor:
        """Per-row bias deltas (rows of other setups: zero)."""
        return kernels.shift_rows(y, table["bias"], rows)

    def _add(self, site: Site, delta: torch.Tensor) -> None:
        bias = base_bias(site, "merge a bias delta")
        with torch.no_grad():
            if isinstance(site.columns, torch.Tensor):
                bias.index_add_(0, site.columns.to(bias.device), delta.to(bias.dtype))
            else:
                columns_of(bias, site.columns, 0).add_(delta.to(bias.dtype))

    def check_merge(self, site: Site) -> None:
        base_bias(site, "merge a bias delta")

    def merge(self, site: Site) -> None:
        self._add(site, self.bias.detach())

    def unmerge(self, site: Site) -> None:
        self._add(site, -self.bias.detach())
