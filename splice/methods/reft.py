"""ReFT (Wu et al. 2024): low-rank interventions on the hidden states after each block, at chosen positions.

At the first ``prefix_positions`` and the last ``suffix_positions`` real tokens of each row
(padding on either side is skipped, read from the call's ``attention_mask``), a block's
output ``h`` becomes ``dropout(h + (act(W h + b) - P h) Pᵀ)`` with ``P`` of rank ``r``:

- ``kind="loreft"``: ``P`` with orthonormal rows (torch's orthogonal parametrisation);
- ``kind="noreft"``: the same without the orthogonality constraint;
- ``kind="direft"``: no orthogonality and no ``- P h`` term: ``dropout(h + act(W h + b) Pᵀ)``.

As AdapterHub's ``LoReftConfig`` / ``NoReftConfig`` / ``DiReftConfig``: prefix and suffix positions
have one unit each (``tied_weights``: one shared unit); where they overlap the suffix's wins.
AdapterHub starts ``W``, ``b`` and ``P`` random, so its fresh adapters change the output
(``init="random"`` here); splice's default ``init="identity"`` starts ``W = P``, ``b = 0`` (``W = 0`` for
DiReFT), where the intervention adds nothing, and trains from there.
The positions are the real tokens of this call; in a cached decoding step (``generate``) only
prefix positions that fall in the new tokens are changed (the prompt's were changed at prefill).
Rows with fewer real tokens than ``prefix_positions`` change only those (AdapterHub would also
change the padding next to them, or fail). Encoder-decoder models get interventions in the encoder.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..anatomy import Anatomy, Site
from ..errors import AnatomyError, ConfigError
from .base import ACTIVATIONS, Delta, MethodConfig, Recipe
from .registry import register

KINDS = {"loreft": (True, True), "noreft": (False, True), "direft": (False, False)}  # orthogonal, subtract


@register
@dataclass(frozen=True, kw_only=True)
class ReFT(MethodConfig):
    """Low-rank representation interventions after each block at prefix/suffix positions (LoReFT, NoReFT, DiReFT).

    ``orthogonality`` / ``subtract_projection`` default to the ``kind``'s; ``non_linearity`` (None: identity)
    acts on ``W h + b``; ``dropout`` is applied to the changed hidden states, as in AdapterHub.
    """

    method: ClassVar[str] = "reft"
    recipes: ClassVar[dict[str, Recipe]] = {
        "loreft": Recipe({"kind": "loreft", "r": 4, "prefix_positions": 3, "suffix_positions": 3}, 1e-3,
                         help="orthogonal low-rank interventions at the first and last tokens (Wu et al. 2024)"),
    }

    kind: str = "loreft"
    r: int = 1
    prefix_positions: int = 3
    suffix_positions: int = 0
    orthogonality: bool | None = None
    subtract_projection: bool | None = None
    tied_weights: bool = False
    dropout: float = 0.05
    non_linearity: str | None = None
    init: str = "identity"
    # How torch parametrises the orthonormal P. AdapterHub's (torch's default for a non-square P) is
    # "householder", which weight decay breaks (it reads the sign of P's diagonal with int(): a decayed -0.99
    # becomes 0 and P all zeros); splice's own adapters use "matrix_exp", its readers "householder".
    orthogonal_map: str = "matrix_exp"

    def validate(self) -> None:
        self._require_choice("kind", self.kind, KINDS)
        self._require_count("r", self.r)
        for name in ("prefix_positions", "suffix_positions"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"ReFT.{name} must be a whole number >= 0, got {value!r}.")
        if self.prefix_positions + self.suffix_positions == 0:
            raise ConfigError("ReFT needs prefix_positions or suffix_positions > 0: it intervenes nowhere otherwise.")
        self._require_fraction("dropout", self.dropout)
        if self.non_linearity is not None:
            self._require_choice("non_linearity", self.non_linearity, ACTIVATIONS)
        orthogonal, subtract = KINDS[self.kind]
        if self.orthogonality is None:
            object.__setattr__(self, "orthogonality", orthogonal)
        if self.subtract_projection is None:
            object.__setattr__(self, "subtract_projection", subtract)
        self._require_choice("init", self.init, {"identity", "random"})
        self._require_choice("orthogonal_map", self.orthogonal_map, {"matrix_exp", "cayley", "householder"})
        if self.init == "identity" and self.subtract_projection and self.non_linearity is not None:
            raise ConfigError(
                f"ReFT(init='identity') cannot start a {self.kind} intervention with non_linearity="
                f"{self.non_linearity!r} at the identity (act(P h) != P h); use init='random' or no non_linearity."
            )

    def sites(self, anatomy: Anatomy) -> list[Site]:
        stack = next(iter(anatomy.blocks))  # the encoder of an encoder-decoder model, else the only stack
        count = len(anatomy.blocks[stack])
        layers = range(count) if self.layers is None else self.layers
        bad = [i for i in layers if not 0 <= i < count]
        if bad:
            raise AnatomyError(f"ReFT.layers {bad} do not exist: this model has layers 0..{count - 1}.")
        width = anatomy.hidden_size
        return [Site(f"{stack}.{i}.reft", stack, i, "reft", anatomy.blocks[stack][i][1], anatomy.model, width, width,
                     reads=call_mask) for i in layers]

    def build(self, site: Site, anatomy: Anatomy) -> Delta:
        return ReFTDelta(site.out_features, self)


def call_mask(args: tuple, kwargs: dict) -> torch.Tensor:
    """The ``attention_mask`` a model was called with (keyword or second argument), or ``[B, 0]`` if none:
    every position is a real token."""
    mask = kwargs.get("attention_mask")
    if mask is None and len(args) > 1 and isinstance(args[1], torch.Tensor):
        mask = args[1]
    if mask is not None:
        return mask
    first = next((v for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor)), None)
    rows = first.shape[0] if first is not None else 1
    return torch.ones(rows, 0, dtype=torch.long, device=first.device if first is not None else None)


class ReFTUnit(nn.Module):
    """``h + (act(W h + b) - P h) Pᵀ`` (AdapterHub's ``ReftUnit`` names: learned_source = W, b; projection = P)."""

    def __init__(self, width: int, config: ReFT):
        super().__init__()
        self.learned_source = nn.Linear(width, config.r)
        projection = nn.Linear(width, config.r, bias=False)
        self.projection = (nn.utils.parametrizations.orthogonal(projection, orthogonal_map=config.orthogonal_map)
                           if config.orthogonality else projection)
        if config.orthogonality and self.learned_source.weight.is_meta:
            # On the meta device (a loader's shape check) torch leaves the trivialization's base unset, which
            # a real build saves: give it its shape so the layouts compare.
            mapping = self.projection.parametrizations.weight[0]
            if getattr(mapping, "base", None) is None:
                mapping.base = torch.empty(max(width, config.r), max(width, config.r), device="meta")
        self.subtract = config.subtract_projection
        self.act = ACTIVATIONS[config.non_linearity]() if config.non_linearity else nn.Identity()
        # act(W h + b) - P h = 0 (subtracting kinds), or act(0) = 0 (DiReFT). Values only: a build on the meta
        # device (a loader's shape check) has none, and torch's orthogonal map cannot be read there.
        if config.init == "identity" and not self.learned_source.weight.is_meta:
            with torch.no_grad():
                self.learned_source.bias.zero_()
                self.learned_source.weight.copy_(self.projection.weight if self.subtract else 0.0)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        p, source = self.projection.weight.contiguous(), self.learned_source
        # the same kernel for W h and P h, so that a fresh (W = P) intervention adds exactly zero
        source = self.act(F.linear(h, source.weight) + source.bias)
        if self.subtract:
            source = source - F.linear(h, p)
        return h + source @ p


class ReFTDelta(Delta):
    """The interventions of one block: prefix and suffix units (one if tied), chosen per position."""

    stage = "output"
    reads_input = True  # the call's attention mask (see ReFT.sites)

    def __init__(self, width: int, config: ReFT):
        super().__init__()
        self.prefix, self.suffix = config.prefix_positions, config.suffix_positions
        self.units = nn.ModuleList([ReFTUnit(width, config) for _ in range(1 if config.tied_weights else 2)])
        self.dropout = nn.Dropout(config.dropout)

    def positions(self, mask: torch.Tensor, length: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, length, 1]`` booleans: which of this call's positions are prefix / suffix positions."""
        total = mask.shape[1] if mask.shape[1] else length
        real = mask.to(device) == 1 if mask.shape[1] else torch.ones(mask.shape[0], total, dtype=torch.bool,
                                                                    device=device)
        before = real.long().cumsum(1) - real.long()  # real tokens before each position
        count = real.sum(1, keepdim=True)
        prefix = real & (before < self.prefix)
        suffix = real & (before >= count - self.suffix) & (self.suffix > 0)
        if total > length:  # a cached decoding step: this call holds the last ``length`` positions only
            prefix, suffix = prefix[:, total - length:], torch.zeros_like(suffix[:, total - length:])
        return prefix.unsqueeze(-1), suffix.unsqueeze(-1)

    def forward(self, mask: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        prefix, suffix = self.positions(mask, y.shape[1], y.device)
        h = y.to(self.units[0].learned_source.weight.dtype)
        first = self.dropout(self.units[0](h)).to(y.dtype)
        last = first if len(self.units) == 1 else self.dropout(self.units[1](h)).to(y.dtype)
        return torch.where(suffix, last, torch.where(prefix, first, y))
