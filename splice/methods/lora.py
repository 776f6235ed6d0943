"""LoRA (Hu et al. 2021): a low-rank update ``B @ A`` beside a frozen projection.

``y + (alpha / r) * B(A(dropout(x)))``; ``B`` starts at zero so a fresh adapter
is the identity. Mergeable: ``W += (alpha / r) * B @ A`` and back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ..anatomy import PROJECTION_ROLES, Anatomy, Site
from ..errors import ConfigError
from .base import MethodConfig, add_to_rows, expand_targets, normalise_targets


@dataclass(frozen=True, kw_only=True)
class LoRA(MethodConfig):
    """Low-rank adaptation of the projections named by ``targets`` (roles, or ``"all-linear"``).

    ``use_rslora`` scales by ``alpha / sqrt(r)`` (Kalajdzievski 2023) instead of ``alpha / r``.
    """

    method: ClassVar[str] = "lora"
    mergeable: ClassVar[bool] = True

    r: int = 8
    alpha: float = 8.0
    dropout: float = 0.0
    targets: tuple[str, ...] | str = ("q", "v")
    use_rslora: bool = False
    init: str = "kaiming"

    def validate(self) -> None:
        if not isinstance(self.r, int) or isinstance(self.r, bool) or self.r <= 0:
            raise ConfigError(f"LoRA.r must be a positive integer, got {self.r!r}.")
        self._require_positive("alpha", self.alpha)
        self._require_fraction("dropout", self.dropout)
        self._require_choice("init", self.init, {"kaiming", "gaussian"})
        normalise_targets(self, "targets", PROJECTION_ROLES)

    @property
    def scaling(self) -> float:
        return self.alpha / (math.sqrt(self.r) if self.use_rslora else self.r)

    def sites(self, anatomy: Anatomy) -> list[Site]:
        return self._sites_for_roles(anatomy, expand_targets(self.targets, anatomy))

    def build(self, site: Site, anatomy: Anatomy) -> nn.Module:
        return LoRADelta(site.in_features, site.out_features, self)


class LoRADelta(nn.Module):
    """The pair ``lora_A`` (``[r, in]``) and ``lora_B`` (``[out, r]``) at one projection."""

    stage = "output"
    reads_input = True

    def __init__(self, in_features: int, out_features: int, config: LoRA):
        super().__init__()
        self.scaling = config.scaling
        self.dropout = nn.Dropout(config.dropout)
        self.lora_A = nn.Linear(in_features, config.r, bias=False)
        self.lora_B = nn.Linear(config.r, out_features, bias=False)
        if config.init == "gaussian":
            nn.init.normal_(self.lora_A.weight, std=1 / config.r)
        else:
            nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.lora_B(self.lora_A(self.dropout(x.to(self.lora_A.weight.dtype))))
        return y + (h * self.scaling).to(y.dtype)

    def delta_weight(self) -> torch.Tensor:
        """The ``[out, in]`` update this pair adds to the base weight."""
        return (self.lora_B.weight.float() @ self.lora_A.weight.float()) * self.scaling

    def merge(self, site: Site) -> None:
        add_to_rows(site.module, site.columns, self.delta_weight())

    def unmerge(self, site: Site) -> None:
        add_to_rows(site.module, site.columns, -self.delta_weight())
