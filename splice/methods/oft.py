"""OFT (Qiu et al. 2023; peft 0.22's formulation): a block-diagonal rotation of a projection's weight.

peft computes ``base(x @ R)`` with ``R = diag(R_1, …, R_k)``: ``W' = W Rᵀ``, a rotation of
the weight's input side. On splice's hooks that is an *input-stage* delta: it rotates the
projection's input before the base layer runs (the same numbers as peft, and no copy of
``W``). A fused projection (GPT-2's ``c_attn``) feeds one input to several roles, so there
the delta is an output-stage ``y + (x R - x) W_roleᵀ``, which rotates this role's rows only.

Each block ``R_i`` (``block_size`` square; ``r`` blocks, or ``block_size`` given and
``r = in / block_size``) comes from a skew-symmetric ``Q`` held as its upper triangle
(``oft_R`` ``[r, block_size·(block_size-1)/2]``, zero at the start: ``R = I``), through
peft's Cayley map: with ``use_cayley_neumann`` its truncated series ``I + 2Q + 2Q² + … +
Q^m`` (``num_cayley_neumann_terms``), else ``(I - Q)(I + Q)⁻¹``. Note that the two are
each other's transpose, as in peft. ``block_share``: one block for all; ``coft``
(constrained OFT): ``Q`` is projected into a ball of radius ``eps`` (scaled by the
number of blocks) before use, and while training the projection is written back, as
peft does. ``module_dropout``: while training, that share of the blocks is replaced by
the identity (peft 0.22 builds this layer for linear layers but never calls it).

Mergeable: ``W ← W Rᵀ``; unmerge multiplies by the inverse (the Neumann series is only
nearly orthogonal). A rotation does not commute with additive merges.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..anatomy import PROJECTION_ROLES, Anatomy, Site, linear_weight
from ..errors import ConfigError
from .base import Delta, MethodConfig, Recipe, columns_of, expand_targets, normalise_targets
from .registry import register


@register
@dataclass(frozen=True, kw_only=True)
class OFT(MethodConfig):
    """Orthogonal block rotations of the inputs of the projections named by ``targets`` (peft ``OFTConfig``).

    Give ``block_size`` (default 32) or ``r``, the number of blocks, not both. Where a size does not
    divide a projection's input, the nearest one that does is used there, as peft does.
    """

    method: ClassVar[str] = "oft"
    mergeable: ClassVar[bool] = True
    merges_commute: ClassVar[bool] = False  # W Rᵀ: merges after it must be undone first
    recipes: ClassVar[Mapping[str, Recipe]] = {
        "oft": Recipe({"block_size": 8, "targets": ("q", "v")}, 1e-3,
                      help="orthogonal block rotations of q and v's inputs (Qiu et al. 2023)"),
    }

    block_size: int = 0  # neither given: 32
    r: int = 0
    targets: tuple[str, ...] | str = ("q", "v")
    module_dropout: float = 0.0
    coft: bool = False
    eps: float = 6e-5
    block_share: bool = False
    use_cayley_neumann: bool = True
    num_cayley_neumann_terms: int = 5

    def validate(self) -> None:
        if self.block_size == 0 and self.r == 0:
            object.__setattr__(self, "block_size", 32)  # peft's default
        if self.block_size and self.r:
            raise ConfigError(f"OFT takes a block_size or a number of blocks r, not both; got "
                              f"block_size={self.block_size!r}, r={self.r!r}.")
        if self.block_size:
            self._require_count("block_size", self.block_size)
        if self.r:
            self._require_count("r", self.r)
        normalise_targets(self, "targets", PROJECTION_ROLES)
        self._require_fraction("module_dropout", self.module_dropout)
        self._require_positive("eps", self.eps)
        self._require_count("num_cayley_neumann_terms", self.num_cayley_neumann_terms)
        for field in ("coft", "block_share", "use_cayley_neumann"):
            if not isinstance(getattr(self, field), bool):
                raise ConfigError(f"OFT.{field} must be True or False, got {getattr(self, field)!r}.")

    def sites(self, anatomy: Anatomy) -> list[Site]:
        return self.sites_for(anatomy, expand_targets(self.targets, anatomy))

    def block_size_at(self, in_features: int) -> int:
        """The block size at a projection with ``in_features`` inputs (adjusted to a divisor, as peft does)."""
        if self.block_size:
            return _divisor_near(in_features, self.block_size)
        return in_features // _divisor_near(in_features, self.r)

    def build(self, site: Site, anatomy: Anatomy) -> Delta:
        return OFTDelta(site, self.block_size_at(site.in_features), self)


def _divisor_near(features: int, wanted: int) -> int:
    """peft's ``adjust_oft_parameters``: ``wanted`` if it divides ``features``, else the nearest divisor
    (the lower one on a tie); ``features`` itself for anything larger."""
    if wanted >= features:
        return features
    if features % wanted == 0:
        return wanted
    higher = next(d for d in range(wanted, features + 1) if features % d == 0)
    lower = next(d for d in range(wanted, 0, -1) if features % d == 0)
    return lower if wanted - lower <= higher - wanted else higher


def skew(vectors: torch.Tensor, size: int) -> torch.Tensor:
    """``[k, size, size]`` skew-symmetric matrices from their strict upper triangles ``[k, size·(size-1)/2]``."""
    rows, cols = torch.triu_indices(size, size, 1, device=vectors.device)
    upper = vectors.new_zeros(vectors.shape[0], size, size)
    upper[:, rows, cols] = vectors
    return upper - upper.transpose(-2, -1)


def cayley_neumann(q: torch.Tensor, terms: int) -> torch.Tensor:
    """peft's truncated Cayley series: ``I + 2Q + 2Q² + … + 2Q^(m-1) + Q^m``, ``m = max(3, terms - 1)``
    (just ``I`` for one term, ``I + 2Q`` for two)."""
    rotation = torch.eye(q.shape[-1], dtype=q.dtype, device=q.device).expand_as(q).clone()
    if terms < 2:
        return rotation
    rotation = rotation + 2 * q
    if terms == 2:
        return rotation
    power = q
    for _ in range(2, max(3, terms - 1)):
        power = power @ q
        rotation = rotation + 2 * power
    return rotation + power @ q


def cayley(q: torch.Tensor) -> torch.Tensor:
    """The exact Cayley map as peft solves it: ``(I - Q)(I + Q)⁻¹``."""
    eye = torch.eye(q.shape[-1], dtype=q.dtype, device=q.device).expand_as(q)
    return torch.linalg.solve(eye + q, eye - q, left=False)


def rotate_blocks(x: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
    """``x @ diag(blocks)``: the last dimension of ``x`` cut into ``len(blocks)`` pieces, each times its block."""
    count, size, _ = blocks.shape
    pieces = x.reshape(*x.shape[:-1], count, size)
    return torch.einsum("...rk,rkc->...rc", pieces, blocks).reshape(x.shape)


def drop_blocks(blocks: torch.Tensor, p: float) -> torch.Tensor:
    """``int(p · k)`` of the ``k`` blocks, chosen at random, replaced by the identity (multiplicative dropout)."""
    count = blocks.shape[0]
    dropped = int(p * count)
    if count == 1 or dropped == 0:
        return blocks
    mask = (torch.randperm(count, device=blocks.device) < dropped).to(blocks.dtype)[:, None, None]
    eye = torch.eye(blocks.shape[-1], dtype=blocks.dtype, device=blocks.device)
    return blocks * (1 - mask) + eye * mask


class OFTDelta(Delta):
    """``oft_R.weight`` (``[blocks, block_size·(block_size-1)/2]``, one row with ``block_share``) at one projection."""

    def __init__(self, site: Site, block_size: int, config: OFT):
        super().__init__()
        self.block_size = block_size
        self.count = site.in_features // block_size
        self.coft, self.eps = config.coft, config.eps
        self.neumann, self.terms = config.use_cayley_neumann, config.num_cayley_neumann_terms
        self.module_dropout = config.module_dropout
        self.oft_R = nn.Module()  # peft's name: checkpoints hold layers.3.q.oft_R.weight
        self.oft_R.weight = nn.Parameter(torch.zeros(1 if config.block_share else self.count,
                                                     block_size * (block_size - 1) // 2))
        self.fused = site.columns is not None
        self.stage = "output" if self.fused else "input"
        self.reads_input = self.fused
        if self.fused:  # read through the module each time: a merge or a device move changes the weight
            module, columns = site.module, site.columns
            self._role_weight = lambda: columns_of(linear_weight(module), columns, 0)

    def _vectors(self) -> torch.Tensor:
        """``Q``'s upper triangles; with ``coft``, projected into the ``eps`` ball (and stored, while training)."""
        vectors = self.oft_R.weight
        if not self.coft:
            return vectors
        with torch.no_grad():
            q = skew(vectors, self.block_size)
            radius = self.eps / vectors.shape[0] ** 0.5
            norm = torch.linalg.matrix_norm(q, keepdim=True)
            projected = torch.where(norm <= radius, q, radius * q / norm)
            rows, cols = torch.triu_indices(self.block_size, self.block_size, 1, device=q.device)
            projected = projected[:, rows, cols]
            if self.training:
                vectors.copy_(projected)
                return vectors
        return projected

    def blocks(self) -> torch.Tensor:
        """The rotation's ``[blocks, block_size, block_size]`` diagonal blocks."""
        q = skew(self._vectors(), self.block_size)
        blocks = cayley_neumann(q, self.terms) if self.neumann else cayley(q)
        if blocks.shape[0] != self.count:  # block_share: one block everywhere
            blocks = blocks.expand(self.count, -1, -1)
        if self.training and self.module_dropout > 0:
            blocks = drop_blocks(blocks, self.module_dropout)
        return blocks

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        blocks = self.blocks()
        rotated = rotate_blocks(x.to(blocks.dtype), blocks)
        if not self.fused:
            return rotated.to(x.dtype)
        weight = self._role_weight()
        return y + F.linear((rotated - x.to(blocks.dtype)).to(weight.dtype), weight).to(y.dtype)

    def rotation(self) -> torch.Tensor:
        """The dense ``[in, in]`` rotation ``R`` (the input is multiplied by it from the right)."""
        blocks = self.blocks().detach().float()
        return torch.block_diag(*blocks)

    def _rewrite(self, site: Site, right: torch.Tensor) -> None:
        """``W_role ← W_role @ right`` in place."""
        weight = linear_weight(site.module)
        with torch.no_grad():
            rows = columns_of(weight, site.columns, 0)
            new = (rows.float() @ right).to(weight.dtype)
            if isinstance(site.columns, torch.Tensor):
                weight.index_copy_(0, site.columns.to(weight.device), new)
            else:
                rows.copy_(new)

    def merge(self, site: Site) -> None:
        self._rewrite(site, self.rotation().t())

    def unmerge(self, site: Site) -> None:
        self._rewrite(site, torch.linalg.inv(self.rotation().t().double()).float())
