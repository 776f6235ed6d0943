"""IA³ (Liu et al. 2022): learned vectors that rescale activations.

By default it scales the outputs of the key and value projections and the
FFN's inner activation (the input of ``down``). Vectors start at one, so a
fresh adapter is the identity. Mergeable: rows (output side) or columns
(input side) of the base weight are multiplied by the vector, and divided back.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from .. import kernels
from ..anatomy import PROJECTION_ROLES, Anatomy, Site, linear_weight
from ..errors import ConfigError
from ..kernels import RowSlots
from .base import Delta, MethodConfig, Recipe, columns_of, expand_targets, normalise_targets
from .registry import register

# Unmerging divides by the vector; entries this close to zero cannot be undone exactly.
_MIN_SCALE = 1e-6


@register
@dataclass(frozen=True, kw_only=True)
class IA3(MethodConfig):
    """Rescale the outputs of ``targets``; for roles also in ``scale_inputs``, rescale their input instead.

    ``scale_inputs`` plays the part of peft's ``feedforward_modules``. Merges rescale weights, so they
    undo exactly only in reverse order; the model is linear in each vector, so averages are exact.
    """

    method: ClassVar[str] = "ia3"
    mergeable: ClassVar[bool] = True
    merges_commute: ClassVar[bool] = False
    averages_exactly: ClassVar[bool] = True
    recipes: ClassVar[Mapping[str, Recipe]] = {
        "ia3": Recipe(learning_rate=3e-3, help="learned scaling of k, v and the FFN (Liu et al. 2022)"),
    }

    targets: tuple[str, ...] | str = ("k", "v", "down")
    scale_inputs: tuple[str, ...] | str = ("down",)

    def validate(self) -> None:
        normalise_targets(self, "targets", PROJECTION_ROLES)
        if self.scale_inputs != ():
            normalise_targets(self, "scale_inputs", PROJECTION_ROLES)
            if self.scale_inputs == ("all-linear",):
                raise ConfigError(
                    "IA3.scale_inputs names the roles whose input is scaled, e.g. ('down',); not 'all-linear'."
                )
        if self.targets != ("all-linear",):
            stray = [role for role in self.scale_inputs if role not in self.targets]
            if stray:
                raise ConfigError(f"IA3.scale_inputs {stray} must also be listed in targets {self.targets}.")

    def sites(self, anatomy: Anatomy) -> list[Site]:
        return self.sites_for(anatomy, expand_targets(self.targets, anatomy))

    def build(self, site: Site, anatomy: Anatomy) -> Delta:
        if site.role in self.scale_inputs:
            return IA3InputDelta(site.in_features)
        return IA3OutputDelta(site.out_features)


class IA3OutputDelta(Delta):
    """``y * l`` on a projection's output."""

    stage = "output"
    reads_input = False
    banked = True
    bank_identity = {"scale": 1.0}  # rows of other setups are scaled by one

    def __init__(self, features: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(features))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return y * self.scale.to(y.dtype)

    @staticmethod
    def bank_sources(delta: "IA3OutputDelta") -> dict[str, torch.Tensor]:
        return {"scale": delta.scale}

    @staticmethod
    def routed(first: "IA3OutputDelta", table: dict[str, torch.Tensor], rows: RowSlots, x: torch.Tensor,
               y: torch.Tensor) -> torch.Tensor:
        """Per-row output scaling (rows of other setups: scale 1)."""
        return kernels.scale_rows(y, table["scale"], rows)

    def _rescale_rows(self, site: Site, factor: torch.Tensor) -> None:
        with torch.no_grad():
            _scale_rows(linear_weight(site.module), site.columns, factor)
            bias = getattr(site.module, "bias", None)
            if bias is not None:
                _scale_rows(bias, site.columns, factor)

    def merge(self, site: Site) -> None:
        self._rescale_rows(site, self.scale.detach())

    def unmerge(self, site: Site) -> None:
        self._rescale_rows(site, 1 / _safe(self.scale.detach()))


class IA3InputDelta(Delta):
    """``x * l`` on a projection's input (the FFN's inner activation)."""

    stage = "input"
    reads_input = True
    banked = True
    bank_identity = {"scale": 1.0}

    def __init__(self, features: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale.to(x.dtype)

    @staticmethod
    def bank_sources(delta: "IA3InputDelta") -> dict[str, torch.Tensor]:
        return {"scale": delta.scale}

    @staticmethod
    def routed(first: "IA3InputDelta", table: dict[str, torch.Tensor], rows: RowSlots, x: torch.Tensor) -> torch.Tensor:
        """Per-row input scaling (rows of other setups: scale 1)."""
        return kernels.scale_rows(x, table["scale"], rows)

    def _rescale_columns(self, site: Site, factor: torch.Tensor) -> None:
        with torch.no_grad():
            weight = linear_weight(site.module)
            weight.mul_(factor[None, :].to(weight.dtype))

    def merge(self, site: Site) -> None:
        self._rescale_columns(site, self.scale.detach())

    def unmerge(self, site: Site) -> None:
        self._rescale_columns(site, 1 / _safe(self.scale.detach()))


def _scale_rows(tensor: torch.Tensor, columns, factor: torch.Tensor) -> None:
    """Multiply the rows of ``tensor`` owned by ``columns`` (all rows if None) by ``factor``, in place."""
    factor = factor.reshape((-1,) + (1,) * (tensor.dim() - 1)).to(tensor.dtype)
    if isinstance(columns, torch.Tensor):  # non-contiguous rows: scale a copy, write it back
        rows = columns.to(tensor.device)
        tensor.index_copy_(0, rows, tensor.index_select(0, rows) * factor)
    else:
        columns_of(tensor, columns, 0).mul_(factor)


def _safe(scale: torch.Tensor) -> torch.Tensor:
    return torch.where(scale.abs() < _MIN_SCALE, torch.full_like(scale, _MIN_SCALE), scale)
