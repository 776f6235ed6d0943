"""LoKr (Yeh et al. 2023; LyCORIS): a Kronecker product of a small and a larger factor.

Each dimension is split in two, ``out = a·b`` and ``in = c·d``
(:func:`factorization`, peft's rule), and ``ΔW = (alpha / r) · w1 ⊗ w2`` with
``w1`` ``[a, c]`` and ``w2`` ``[b, d]``. A factor that is large compared with ``r``
is itself a rank-``r`` product (``w2 = w2_a @ w2_b`` when ``r < max(b, d) / 2``;
``w1 = w1_a @ w1_b`` only with ``decompose_both``), exactly where peft makes it
one, so peft's ``LOKR`` tensors (``lokr_w1``, ``lokr_w2_a`` ...) map one to one.

``init="peft"`` starts ``w1`` (or ``w1_a``) at zero; ``init="lycoris"`` starts
``w2`` (or ``w2_b``) at zero, as peft's ``init_weights="lycoris"``; either way a
fresh adapter is the identity. ``decompose_factor`` (peft's option): ``-1`` splits
each dimension near its square root; ``f > 0`` splits off ``f`` where it divides.

Per-row routing banks ``w1`` and ``w2`` (built from their products where decomposed) and never
builds ``w1 ⊗ w2``: a row's update is ``w1 X w2ᵀ`` with its input seen as a ``[c, d]`` matrix ``X``
(:func:`splice.kernels.kronecker`).
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
from ..errors import ConfigError
from ..kernels import RowSlots
from .base import Delta, Recipe
from .factored import FactoredConfig, FactoredDelta
from .registry import register


@register
@dataclass(frozen=True, kw_only=True)
class LoKr(FactoredConfig):
    """Kronecker-product updates of the projections named by ``targets`` (peft ``LoKrConfig``).

    ``rank_dropout_scale``: rescale the rows ``rank_dropout`` keeps by one over their mean (peft's default: no).
    """

    method: ClassVar[str] = "lokr"
    recipes: ClassVar[Mapping[str, Recipe]] = {
        "lokr": Recipe({"r": 8, "alpha": 16.0, "targets": ("q", "v")}, 1e-3,
                       help="Kronecker-product updates of q and v (LyCORIS LoKr)"),
    }

    decompose_both: bool = False
    decompose_factor: int = -1
    rank_dropout_scale: bool = False
    init: str = "peft"

    def validate(self) -> None:
        super().validate()
        for field in ("decompose_both", "rank_dropout_scale"):
            if not isinstance(getattr(self, field), bool):
                raise ConfigError(f"LoKr.{field} must be True or False, got {getattr(self, field)!r}.")
        if self.decompose_factor != -1:
            self._require_count("decompose_factor", self.decompose_factor)
        self._require_choice("init", self.init, {"peft", "lycoris"})

    def build(self, site: Site, anatomy: Anatomy) -> Delta:
        return LoKrDelta(site.in_features, site.out_features, self)


def factorization(dimension: int, factor: int = -1) -> tuple[int, int]:
    """``(m, n)`` with ``m · n = dimension`` and ``m <= n``, as peft (and LyCORIS) split a dimension.

    ``factor > 0`` dividing ``dimension``: ``(factor, dimension // factor)`` as given. Otherwise the
    divisors are tried in increasing order, each kept while it is at most ``factor`` (``-1``: no bound)
    and below its cofactor; the pair is then sorted.
    """
    if factor > 0 and dimension % factor == 0:
        return factor, dimension // factor
    bound = dimension if factor == -1 else factor
    m, n = 1, dimension
    while m < n:
        divisor = next(d for d in range(m + 1, dimension + 1) if dimension % d == 0)
        if divisor > bound:
            break
        m, n = divisor, dimension // divisor
    return min(m, n), max(m, n)


class LoKrDelta(FactoredDelta):
    """``w1`` (or ``w1_a``, ``w1_b``) and ``w2`` (or ``w2_a``, ``w2_b``) at one projection."""

    banked = True

    def __init__(self, in_features: int, out_features: int, config: LoKr):
        super().__init__(config)
        self.rescale_rank_dropout = config.rank_dropout_scale
        r = config.r
        (a, b), (c, d) = factorization(out_features, config.decompose_factor), factorization(
            in_features, config.decompose_factor)
        zero_first = config.init == "peft"
        if config.decompose_both and r < max(a, c) / 2:
            self.lokr_w1_a = _factor(a, r, zero=zero_first)
            self.lokr_w1_b = _factor(r, c)
        else:
            self.lokr_w1 = _factor(a, c, zero=zero_first)
        if r < max(b, d) / 2:
            self.lokr_w2_a = _factor(b, r)
            self.lokr_w2_b = _factor(r, d, zero=not zero_first)
        else:
            self.lokr_w2 = _factor(b, d, zero=not zero_first)

    def _part(self, name: str) -> torch.Tensor:
        whole = getattr(self, f"lokr_{name}", None)
        return whole if whole is not None else getattr(self, f"lokr_{name}_a") @ getattr(self, f"lokr_{name}_b")

    def update(self) -> torch.Tensor:
        return torch.kron(self._part("w1"), self._part("w2")) * self.scaling

    @staticmethod
    def bank_sources(delta: "LoKrDelta") -> dict[str, torch.Tensor | float]:
        return {"w1": delta._part("w1"), "w2": delta._part("w2"), "scale": delta.scaling}

    @staticmethod
    def routed(first: "LoKrDelta", table: dict[str, torch.Tensor], rows: RowSlots, x: torch.Tensor,
               y: torch.Tensor) -> torch.Tensor:
        """Per-row LoKr: each row adds ``scale · (w1 ⊗ w2) x`` of its slot (slot -1: none)."""
        return kernels.kronecker(x, y, table["w1"], table["w2"], table["scale"], rows)


def _factor(rows: int, columns: int, zero: bool = False) -> nn.Parameter:
    tensor = torch.zeros(rows, columns)
    if not zero:
        nn.init.kaiming_uniform_(tensor, a=math.sqrt(5))
    return nn.Parameter(tensor)
