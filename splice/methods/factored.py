"""What LoHa and LoKr share: a weight update ``ΔW`` built from small factors, added beside a frozen projection.

Both are LyCORIS methods (peft ``tuners/lycoris_utils``): the delta computes the
``[out, in]`` update from its factors and adds ``x @ ΔWᵀ`` to the projection's
output, so merging is ``W += ΔW`` and unmerging ``W -= ΔW``, and merges commute.
Only how ``ΔW`` is built differs (a Hadamard product of two low-rank products, or
a Kronecker product); each method's file says that in :meth:`FactoredDelta.update`.

Two training-time options come with them, as peft defines them:

- ``rank_dropout``: each output row of ``ΔW`` is dropped with this probability
  (LoHa rescales the kept rows by one over their mean; LoKr only with ``rank_dropout_scale``);
- ``module_dropout``: the whole update is skipped for a forward with this probability.

Both draw their randomness as tensors and multiply, so they never synchronise with the host.

Per-row routing runs them banked (each method says how in its ``bank_sources`` / ``routed``) — in
eval, and in training without either dropout: a routed call cannot draw each row's adapter its own
masks, so with a dropout set a delta takes the generic per-row path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from ..anatomy import PROJECTION_ROLES, Anatomy, Site
from .base import Delta, MethodConfig, add_to_rows, expand_targets, normalise_targets


@dataclass(frozen=True, kw_only=True)
class FactoredConfig(MethodConfig):
    """Options every factored-update method has: rank, alpha (scaling ``alpha / r``), targets, dropouts."""

    mergeable: ClassVar[bool] = True

    r: int = 8
    alpha: float = 8.0
    targets: tuple[str, ...] | str = ("q", "v")
    rank_dropout: float = 0.0
    module_dropout: float = 0.0

    def validate(self) -> None:
        self._require_count("r", self.r)
        self._require_positive("alpha", self.alpha)
        self._require_fraction("rank_dropout", self.rank_dropout)
        self._require_fraction("module_dropout", self.module_dropout)
        normalise_targets(self, "targets", PROJECTION_ROLES)

    @property
    def scaling(self) -> float:
        return self.alpha / self.r

    def sites(self, anatomy: Anatomy) -> list[Site]:
        return self.sites_for(anatomy, expand_targets(self.targets, anatomy))


class FactoredDelta(Delta):
    """``y + x @ ΔWᵀ`` at one projection, where a subclass builds ``ΔW`` (already scaled) in :meth:`update`."""

    stage = "output"
    reads_input = True
    rescale_rank_dropout = True  # divide the kept rows by their mean (LoHa; LoKr only when asked)

    def __init__(self, config: FactoredConfig):
        super().__init__()
        self.scaling = config.scaling
        self.rank_dropout = config.rank_dropout
        self.module_dropout = config.module_dropout
        if config.rank_dropout or config.module_dropout:
            self.banked = False

    def update(self) -> torch.Tensor:
        """The ``[out, in]`` update this delta adds to the base weight, scaled."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        weight = self.update()
        if self.training and self.rank_dropout > 0:
            keep = (torch.rand(weight.shape[0], device=weight.device) > self.rank_dropout).to(weight.dtype)
            if self.rescale_rank_dropout:
                keep = keep / keep.mean()
            weight = weight * keep[:, None]
        change = F.linear(x.to(weight.dtype), weight)
        if self.training and self.module_dropout > 0:
            change = change * (torch.rand((), device=change.device) > self.module_dropout).to(change.dtype)
        return y + change.to(y.dtype)

    def merge(self, site: Site) -> None:
        add_to_rows(site.module, site.columns, self.update().detach().float())

    def unmerge(self, site: Site) -> None:
        add_to_rows(site.module, site.columns, -self.update().detach().float())
