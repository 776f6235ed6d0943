"""LoHa (Hyeon-Woo et al. 2022, FedPara; LyCORIS): a Hadamard product of two low-rank products.

``ΔW = (alpha / r) · (w1_a @ w1_b) ⊙ (w2_a @ w2_b)`` with ``w*_a`` ``[out, r]`` and
``w*_b`` ``[r, in]``: rank up to ``r²`` for the parameters of two rank-``r`` LoRAs.
As peft initialises it, ``w2_b`` starts at zero (the others Kaiming-uniform), so a
fresh adapter is the identity. Tensor names are peft's (``hada_w1_a`` ...), so
peft's ``LOHA`` folders map one to one (:mod:`splice.convert.peft_products`).

The Hadamard product of two rank-``r`` products is one product of rank ``r²``
(``(w1_a w1_b) ⊙ (w2_a w2_b) = U V`` with ``U[:, i·r+j] = w1_a[:, i] ⊙ w2_a[:, j]`` and
``V[i·r+j] = w1_b[i] ⊙ w2_b[j]``), so per-row routing runs LoHa as a LoRA bank of rank ``r²``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from .. import kernels
from ..anatomy import Anatomy, Site
from ..kernels import RowSlots
from .base import Delta, Recipe
from .factored import FactoredConfig, FactoredDelta
from .registry import register


@register
@dataclass(frozen=True, kw_only=True)
class LoHa(FactoredConfig):
    """Low-rank Hadamard-product updates of the projections named by ``targets`` (peft ``LoHaConfig``)."""

    method: ClassVar[str] = "loha"
    recipes: ClassVar[Mapping[str, Recipe]] = {
        "loha": Recipe({"r": 8, "alpha": 16.0, "targets": ("q", "v")}, 1e-3,
                       help="low-rank Hadamard-product updates of q and v (LyCORIS LoHa)"),
    }

    def build(self, site: Site, anatomy: Anatomy) -> Delta:
        return LoHaDelta(site.in_features, site.out_features, self)


class LoHaDelta(FactoredDelta):
    """The four LoHa factors at one projection."""

    banked = True

    def __init__(self, in_features: int, out_features: int, config: LoHa):
        super().__init__(config)
        r = config.r
        self.hada_w1_a = nn.Parameter(torch.empty(out_features, r))
        self.hada_w1_b = nn.Parameter(torch.empty(r, in_features))
        self.hada_w2_a = nn.Parameter(torch.empty(out_features, r))
        self.hada_w2_b = nn.Parameter(torch.zeros(r, in_features))  # zero: the product starts at zero
        for factor in (self.hada_w1_a, self.hada_w1_b, self.hada_w2_a):
            nn.init.kaiming_uniform_(factor, a=math.sqrt(5))

    def update(self) -> torch.Tensor:
        return (self.hada_w1_a @ self.hada_w1_b) * (self.hada_w2_a @ self.hada_w2_b) * self.scaling

    def lora_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(V, U)`` of rank ``r²`` with ``U @ V`` = the unscaled update: a LoRA pair ``[r², in]``, ``[out, r²]``."""
        r = self.hada_w1_a.shape[1]
        a = (self.hada_w1_b[:, None, :] * self.hada_w2_b[None, :, :]).reshape(r * r, -1)
        b = (self.hada_w1_a[:, :, None] * self.hada_w2_a[:, None, :]).reshape(-1, r * r)
        return a, b

    @staticmethod
    def bank_sources(delta: "LoHaDelta") -> dict[str, torch.Tensor | float]:
        a, b = delta.lora_factors()
        return {"a": a, "b": b, "scale": delta.scaling}

    @staticmethod
    def routed(first: "LoHaDelta", table: dict[str, torch.Tensor], rows: RowSlots, x: torch.Tensor,
               y: torch.Tensor) -> torch.Tensor:
        """Per-row LoHa, as a LoRA bank of the rank-``r²`` pairs :meth:`lora_factors` gives (slot -1: none)."""
        return kernels.lora(x, y, table["a"], table["b"], table["scale"], rows)
