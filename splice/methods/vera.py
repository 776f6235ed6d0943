"""VeRA (Kopiczko et al. 2024): one pair of frozen random projections shared by every site, and two trained
scaling vectors per site.

``y + λ_b ⊙ B·(λ_d ⊙ A·dropout(x))``: ``A`` (``[r, largest in]``) and ``B``
(``[largest out, r]``) are drawn once per adapter (Kaiming-uniform from
``projection_prng_key``, as peft draws them, so the same key gives the same
projections) and each site reads its corner of them; only ``λ_d`` (``[r]``, starting
at ``d_initial``) and ``λ_b`` (``[out]``, starting at zero: the identity) train. The
projections live in the adapter's shared state (:meth:`MethodConfig.shared`), saved once
with ``save_projection`` (peft's default) or drawn again from the key on load without it.
Mergeable (additive): ``W += (λ_b ⊙ B)(λ_d ⊙ A)``. Per-row routing runs VeRA as a
rank-``r`` LoRA bank with ``a = λ_d ⊙ A``, ``b = λ_b ⊙ B``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from .. import kernels
from ..anatomy import PROJECTION_ROLES, Anatomy, Site
from ..anatomy.linear import linear_shape
from ..errors import ConfigError
from ..kernels import RowSlots
from .base import Delta, MethodConfig, Recipe, add_to_rows, expand_targets, normalise_targets
from .registry import register


@register
@dataclass(frozen=True, kw_only=True)
class VeRA(MethodConfig):
    """Vector-based random matrix adaptation of the projections named by ``targets``: shared frozen random
    ``A``, ``B`` of rank ``r``, and trained vectors ``λ_d``, ``λ_b`` per site (peft's ``VeraConfig``)."""

    method: ClassVar[str] = "vera"
    mergeable: ClassVar[bool] = True
    recipes: ClassVar[Mapping[str, Recipe]] = {
        "vera": Recipe({"r": 256, "targets": ("q", "v")}, 1e-2,
                       help="shared random projections, trained scaling vectors (Kopiczko et al. 2024)"),
    }

    r: int = 256
    targets: tuple[str, ...] | str = ("q", "v")
    d_initial: float = 0.1
    projection_prng_key: int = 0
    save_projection: bool = True
    dropout: float = 0.0

    def validate(self) -> None:
        self._require_count("r", self.r)
        self._require_positive("d_initial", self.d_initial)
        if isinstance(self.projection_prng_key, bool) or not isinstance(self.projection_prng_key, int) \
                or self.projection_prng_key < 0:
            raise ConfigError(f"VeRA.projection_prng_key must be a non-negative integer, got "
                              f"{self.projection_prng_key!r}.")
        if not isinstance(self.save_projection, bool):
            raise ConfigError(f"VeRA.save_projection must be True or False, got {self.save_projection!r}.")
        self._require_fraction("dropout", self.dropout)
        normalise_targets(self, "targets", PROJECTION_ROLES)

    def sites(self, anatomy: Anatomy) -> list[Site]:
        return self.sites_for(anatomy, expand_targets(self.targets, anatomy))

    def shared(self, anatomy: Anatomy) -> nn.Module:
        """The projections, sized by the largest module adapted (a fused module counts whole, as in peft)."""
        shapes = [linear_shape(site.module) for site in self.sites(anatomy)]
        return Projections(self.r, max(i for i, _ in shapes), max(o for _, o in shapes), self.projection_prng_key,
                           self.save_projection)

    def build(self, site: Site, anatomy: Anatomy) -> Delta:
        return VeRADelta(site, self)


class Projections(nn.Module):
    """VeRA's frozen ``vera_A`` ``[r, in]`` and ``vera_B`` ``[out, r]``, drawn as peft draws them: one CPU
    generator seeded with the key, A then B, each uniform in ``±sqrt(6 / fan_in)``.

    Buffers (they never train), persistent only with ``save_projection``.
    """

    def __init__(self, r: int, in_features: int, out_features: int, key: int, persistent: bool):
        super().__init__()
        self.register_buffer("vera_A", torch.empty(r, in_features), persistent=persistent)
        self.register_buffer("vera_B", torch.empty(out_features, r), persistent=persistent)
        if not self.vera_A.is_meta:  # a loader's shape check builds on the meta device: nothing to draw
            generator = torch.Generator(device="cpu").manual_seed(key)
            with torch.no_grad():
                for tensor in (self.vera_A, self.vera_B):
                    bound = math.sqrt(6 / tensor.shape[1])
                    tensor.copy_(torch.empty(tensor.shape).uniform_(-bound, bound, generator=generator))


class VeRADelta(Delta):
    """``lambda_d`` (``[r]``) and ``lambda_b`` (``[out]``) at one projection, reading the adapter's projections."""

    stage = "output"
    reads_input = True
    banked = True

    def __init__(self, site: Site, config: VeRA):
        super().__init__()
        self.dropout = nn.Dropout(config.dropout)
        self.in_features = site.in_features
        # The site's rows of B: its columns of a fused module's output (all rows of a plain module).
        rows = torch.arange(linear_shape(site.module)[1], device="cpu")
        self.register_buffer("rows", rows if site.columns is None else rows[site.columns], persistent=False)
        self.lambda_d = nn.Parameter(torch.full((config.r,), float(config.d_initial)))
        self.lambda_b = nn.Parameter(torch.zeros(site.out_features))
        self._projections: tuple[Projections, ...] = ()

    def use_shared(self, shared: nn.Module) -> None:
        self._projections = (shared,)  # a tuple: saved, moved and counted once, with the adapter

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(λ_d ⊙ A, λ_b ⊙ B)``: this site's update as a LoRA pair, ``[r, in]`` and ``[out, r]``."""
        shared = self._projections[0]
        A = shared.vera_A[:, : self.in_features]
        B = shared.vera_B.index_select(0, self.rows.to(shared.vera_B.device))
        return self.lambda_d[:, None] * A, self.lambda_b[:, None] * B

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        shared = self._projections[0]
        A = shared.vera_A[:, : self.in_features]
        B = shared.vera_B.index_select(0, self.rows.to(shared.vera_B.device))
        h = nn.functional.linear(self.dropout(x.to(self.lambda_d.dtype)), A) * self.lambda_d
        return y + (self.lambda_b * nn.functional.linear(h, B)).to(y.dtype)

    @staticmethod
    def route_key(delta: "VeRADelta") -> tuple:
        return (delta.dropout.p,)

    @staticmethod
    def bank_sources(delta: "VeRADelta") -> dict[str, torch.Tensor | float]:
        a, b = delta.factors()
        return {"a": a, "b": b, "scale": 1.0}

    @staticmethod
    def bank_inputs(delta: "VeRADelta") -> list[torch.Tensor]:
        return [*Delta.bank_inputs(delta), *delta._projections[0].buffers()]  # a loaded adapter rewrites them

    @staticmethod
    def routed(first: "VeRADelta", table: dict[str, torch.Tensor], rows: RowSlots, x: torch.Tensor,
               y: torch.Tensor) -> torch.Tensor:
        """Per-row VeRA, as a LoRA bank of the pairs :meth:`factors` gives (slot -1: none)."""
        return kernels.lora(first.dropout(x), y, table["a"], table["b"], table["scale"], rows)

    def delta_weight(self) -> torch.Tensor:
        a, b = self.factors()
        return b.float() @ a.float()

    def merge(self, site: Site) -> None:
        add_to_rows(site.module, site.columns, self.delta_weight())

    def unmerge(self, site: Site) -> None:
        add_to_rows(site.module, site.columns, -self.delta_weight())
