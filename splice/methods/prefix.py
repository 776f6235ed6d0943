"""Prefix tuning (Li & Liang 2021): ``length`` trainable keys and values in front of every self-attention.

Each block's self-attention attends to its own learned prefix as well as the
tokens. On decoders (and T5's decoder) the prefix goes in through a key/value
cache scoped to each call; on encoders through placeholder rows whose keys and
values are replaced. Both use only public call arguments, which is what kept
them exact on every supported architecture and release (see :mod:`splice.hooks.soft`
for the mechanisms and why).

``projection_dim`` trains the prefix through a small MLP (a per-layer
reparameterisation, as Li & Liang found training directly unstable); saving
folds it away, so the saved adapter holds plain prefixes and reloads to the
same outputs. Not mergeable: extra keys have no equivalent change of the weights.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ..anatomy import Anatomy, Site
from ..errors import ConfigError
from .base import Delta, MethodConfig, Recipe
from .registry import register


@register
@dataclass(frozen=True, kw_only=True)
class PrefixTuning(MethodConfig):
    """``length`` learned key/value pairs per self-attention block (every block: one mask serves them all).

    ``projection_dim``: train through an MLP ``embedding -> Linear -> tanh -> Linear`` of
    that hidden width (folded into plain prefixes at save). ``init_std`` spreads the
    random initial prefix (or the MLP's input embedding).
    """

    method: ClassVar[str] = "prefix"
    recipes: ClassVar[Mapping[str, Recipe]] = {
        "prefix": Recipe({"length": 30}, 5e-3, help="learned keys and values at every self-attention"),
    }

    length: int = 10
    projection_dim: int | None = None
    init_std: float = 0.02

    def validate(self) -> None:
        self._require_count("length", self.length)
        self._require_count("projection_dim", self.projection_dim, allow_none=True)
        self._require_positive("init_std", self.init_std)
        if self.layers is not None:
            raise ConfigError(
                "PrefixTuning acts on every self-attention block (the mask that hides unused prefix slots is "
                "shared by all blocks): drop layers=."
            )

    def sites(self, anatomy: Anatomy) -> list[Site]:
        return anatomy.prefix_sites()

    def build(self, site: Site, anatomy: Anatomy) -> Delta:
        return PrefixDelta(self.length, site.in_features, site.out_features, self, anatomy.hidden_size)

    def folded(self) -> PrefixTuning:
        """The config a save writes: plain prefixes (the MLP is folded into them)."""
        return dataclasses.replace(self, projection_dim=None)


class PrefixDelta(Delta):
    """One block's prefix: ``key [length, k_width]`` and ``value [length, v_width]``, or an MLP making them."""

    stage = "soft"

    def __init__(self, length: int, key_width: int, value_width: int, config: PrefixTuning, hidden: int):
        super().__init__()
        self.widths = (key_width, value_width)
        if config.projection_dim is None:
            self.key = nn.Parameter(torch.randn(length, key_width) * config.init_std)
            self.value = nn.Parameter(torch.randn(length, value_width) * config.init_std)
            self.mlp = None
        else:
            self.embedding = nn.Parameter(torch.randn(length, hidden) * config.init_std)
            self.mlp = nn.Sequential(nn.Linear(hidden, config.projection_dim), nn.Tanh(),
                                     nn.Linear(config.projection_dim, key_width + value_width))

    def soft(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.mlp is None:
            return self.key, self.value
        return tuple(self.mlp(self.embedding).split(self.widths, dim=-1))

    def folded_state(self) -> dict[str, torch.Tensor]:
        """The plain prefix this delta computes: what a save writes."""
        key, value = self.soft()
        return {"key": key.detach(), "value": value.detach()}
