"""BOFT (Liu et al. 2024): an orthogonal rotation made of butterfly factors, and a scale of the outputs.

peft computes ``s ⊙ (base(x @ M) - b) + b``: ``M = F_(m-1) ⋯ F_0`` rotates the weight's
input side and ``s`` (``boft_s``, ``[out, 1]``, starting at one) scales each output row,
so ``W' = s ⊙ (W Mᵀ)`` with the bias untouched. Each factor is ``F_i = P_i D_i P_iᵀ``:
``D_i`` block diagonal (``block_num`` blocks of ``block_size``, each the Cayley map
``(I - S)(I + S)⁻¹`` of ``S = (A - Aᵀ) / 2`` for a free ``A``, ``boft_R``
``[m, block_num, block_size, block_size]``, zero at the start) and ``P_i`` peft's
butterfly permutation, which interleaves blocks ever further apart as ``i`` grows. With
``n_butterfly_factor = 1`` it is OFT with a different parametrisation and the scale.

On splice's hooks the rotation is an input stage (the projection's input is rotated
before the base layer runs) and the scale an output stage, both in one composite
program. A fused projection (GPT-2's ``c_attn``) shares its input between roles, so
there the rotation is applied to this role's rows on the output side:
``y + (x M - x) W_roleᵀ``. ``dropout`` (peft's ``boft_dropout``): while training,
that share of each factor's blocks is replaced by the identity.

peft 0.22 builds ``m > 1`` factors only where its CUDA extension compiles; elsewhere it
silently uses one factor. splice computes any ``m`` on any device; peft folders with
``m > 1`` load on CUDA machines only in peft, and everywhere here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..anatomy import PROJECTION_ROLES, Anatomy, Site, linear_weight
from ..errors import AnatomyError, ConfigError
from ..hooks.programs import Program
from .base import Delta, MethodConfig, Recipe, columns_of, expand_targets, normalise_targets
from .oft import cayley, drop_blocks, rotate_blocks
from .registry import register


@register
@dataclass(frozen=True, kw_only=True)
class BOFT(MethodConfig):
    """Butterfly orthogonal rotations (and output scales) of the projections named by ``targets`` (peft
    ``BOFTConfig``). Give ``block_size`` (default 4) or ``block_num``, not both."""

    method: ClassVar[str] = "boft"
    mergeable: ClassVar[bool] = True
    merges_commute: ClassVar[bool] = False  # W ← s ⊙ W Mᵀ: merges after it must be undone first
    recipes: ClassVar[Mapping[str, Recipe]] = {
        "boft": Recipe({"block_size": 4, "n_butterfly_factor": 2, "targets": ("q", "v")}, 1e-3,
                       help="butterfly orthogonal rotations of q and v (Liu et al. 2024)"),
    }

    block_size: int = 0  # neither given: 4
    block_num: int = 0
    n_butterfly_factor: int = 1
    targets: tuple[str, ...] | str = ("q", "v")
    dropout: float = 0.0

    def validate(self) -> None:
        if self.block_size == 0 and self.block_num == 0:
            object.__setattr__(self, "block_size", 4)  # peft's default
        if self.block_size and self.block_num:
            raise ConfigError(f"BOFT takes a block_size or a block_num, not both; got "
                              f"block_size={self.block_size!r}, block_num={self.block_num!r}.")
        for field in ("block_size", "block_num"):
            if getattr(self, field):
                self._require_count(field, getattr(self, field))
        self._require_count("n_butterfly_factor", self.n_butterfly_factor)
        normalise_targets(self, "targets", PROJECTION_ROLES)
        self._require_fraction("dropout", self.dropout)

    def sites(self, anatomy: Anatomy) -> list[Site]:
        return self.sites_for(anatomy, expand_targets(self.targets, anatomy))

    def shape_at(self, site: Site) -> tuple[int, int]:
        """``(block_num, block_size)`` at ``site``, or a clear error where its input does not fit them."""
        features, extra = site.in_features, self.n_butterfly_factor - 1
        given = self.block_size or self.block_num
        what = "block_size" if self.block_size else "block_num"
        if features % given:
            raise AnatomyError(f"BOFT.{what}={given} must divide the input size of {site.key} ({features}); "
                               f"choose a divisor of {features}.")
        block_num, block_size = (features // given, given) if self.block_size else (given, features // given)
        if extra and (block_num % 2**extra or block_size % 2):
            raise AnatomyError(
                f"BOFT with n_butterfly_factor={self.n_butterfly_factor} needs, at {site.key} (input size "
                f"{features}), a block_num divisible by {2**extra} and an even block_size; this gives "
                f"{block_num} blocks of {block_size}. Use fewer butterfly factors or another block size.")
        return block_num, block_size

    def build(self, site: Site, anatomy: Anatomy) -> Delta:
        return BOFTDelta(site, *self.shape_at(site), self)


def butterfly_order(features: int, groups: int, half: int, factors: int) -> torch.Tensor:
    """peft's ``block_butterfly_perm``: the permutation of ``features`` that one butterfly factor applies.

    The features are cut into ``groups`` groups; inside each, its runs of ``half`` features are
    reordered even-numbered runs first, then odd ones. One factor (``factors = 1``) is the identity.
    """
    if factors == 1:
        return torch.arange(features)
    size = features // groups
    runs = size // half
    order = torch.cat([torch.arange(0, runs, 2), torch.arange(1, runs, 2)])
    within = (order[:, None] * half + torch.arange(half)).reshape(-1)
    return (torch.arange(0, features, size)[:, None] + within).reshape(-1)


class BOFTDelta(Delta):
    """``boft_R`` ``[factors, blocks, size, size]`` and ``boft_s`` ``[out, 1]`` at one projection."""

    stage = "composite"

    def __init__(self, site: Site, block_num: int, block_size: int, config: BOFT):
        super().__init__()
        factors = config.n_butterfly_factor
        self.dropout = config.dropout
        self.boft_R = nn.Parameter(torch.zeros(factors, block_num, block_size, block_size))
        self.boft_s = nn.Parameter(torch.ones(site.out_features, 1))
        # peft's permutations: factor i interleaves block_num / 2^i groups by runs of half a block.
        orders = [butterfly_order(site.in_features, block_num // 2**i, block_size // 2, factors)
                  for i in range(factors)]
        self.register_buffer("orders", torch.stack(orders), persistent=False)
        self.register_buffer("inverses", torch.stack([torch.argsort(o) for o in orders]), persistent=False)
        self.fused = site.columns is not None
        module, columns = site.module, site.columns
        self._role_weight = lambda: columns_of(linear_weight(module), columns, 0)
        self._role_bias = lambda: None if getattr(module, "bias", None) is None else columns_of(module.bias, columns, 0)

    def rotate(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ M``: the factors from the last to the first, each ``x ← ((x Pᵢ) Dᵢ) Pᵢᵀ``."""
        count, blocks, size, _ = self.boft_R.shape
        a = self.boft_R.reshape(count * blocks, size, size)
        diagonals = cayley(0.5 * (a - a.transpose(1, 2))).reshape(count, blocks, size, size)
        x = x.to(diagonals.dtype)
        for i in reversed(range(count)):
            factor = drop_blocks(diagonals[i], self.dropout) if self.training and self.dropout > 0 else diagonals[i]
            x = rotate_blocks(x[..., self.inverses[i]], factor)[..., self.orders[i]]
        return x

    def scale(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``s ⊙ (y - b) + b``; at a fused site, with the rotation first added to this role's rows."""
        if self.fused:
            weight = self._role_weight()
            y = y + F.linear((self.rotate(x) - x.to(self.boft_R.dtype)).to(weight.dtype), weight).to(y.dtype)
        bias = self._role_bias()
        s = self.boft_s.reshape(-1).to(y.dtype)
        return y * s if bias is None else (y - bias) * s + bias

    def program(self) -> Program:
        return _Rotated(self)

    def rotation(self) -> torch.Tensor:
        """The dense ``[in, in]`` rotation ``M`` (the input is multiplied by it from the right)."""
        with torch.no_grad():
            return self.rotate(torch.eye(self.inverses.shape[1], device=self.boft_R.device)).float()

    def _rewrite(self, site: Site, change) -> None:
        weight = linear_weight(site.module)
        with torch.no_grad():
            rows = columns_of(weight, site.columns, 0)
            new = change(rows.float()).to(weight.dtype)
            if isinstance(site.columns, torch.Tensor):
                weight.index_copy_(0, site.columns.to(weight.device), new)
            else:
                rows.copy_(new)

    def merge(self, site: Site) -> None:
        rotation, s = self.rotation(), self.boft_s.detach().float()
        self._rewrite(site, lambda w: s * (w @ rotation.t()))

    def unmerge(self, site: Site) -> None:
        inverse, s = torch.linalg.inv(self.rotation().t().double()).float(), self.boft_s.detach().float()
        self._rewrite(site, lambda w: (w / s) @ inverse)

    def check_merge(self, site: Site) -> None:
        if bool((self.boft_s.detach().abs() < 1e-6).any()):
            raise AnatomyError(f"Cannot merge BOFT at {site.key}: some output scales are zero, so the merge could "
                               "not be undone. Keep this adapter unmerged.")


class _Rotated(Program):
    """BOFT's program at one site: rotate the input before the layer (plain sites), scale the output after."""

    def __init__(self, delta: BOFTDelta):
        self.delta = delta
        self.has_pre, self.has_post, self.has_soft = not delta.fused, True, False
        self.reads_input = delta.fused

    def pre(self, x):
        return self.delta.rotate(x).to(x.dtype)

    def post(self, x, y):
        return self.delta.scale(x, y)

