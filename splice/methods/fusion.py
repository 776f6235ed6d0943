"""AdapterFusion (Pfeiffer et al. 2021): attention over the outputs of frozen adapters.

At each sublayer site the fused adapters act on, the query comes from the
sublayer's output ``y``, keys and values from each adapter's output ``o_i``:
``sum_i softmax_i(q(y) · k(o_i) / T) v(o_i)``. The value projection starts as the
identity, so a fresh fusion returns a (near-uniform) mix of the adapters' outputs.

A fusion is an adapter like any other (saved, loaded, summarised, trained with
``train_fusion``); its config lists the adapters it fuses, which stay frozen.

Two options give AdapterHub's AdapterFusion arithmetic (``adapters``' ``BertFusion``):
``query_from="adapter_input"`` takes the query from what the fused bottlenecks read
(``N(y + x)`` for residual-input ones, else ``y``) instead of ``y``, and
``attend="deltas"`` attends over what each adapter adds, ``u_i = o_i - y``, and adds
``y`` back after mixing: ``y + sum_i softmax_i(q · k(u_i) / T) v(u_i)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ..anatomy import SUBLAYER_ROLES, Anatomy, Site
from ..errors import ConfigError
from .base import Delta, MethodConfig, Recipe
from .registry import register

# Where the query comes from: the sublayer output ``y``, or what the fused bottlenecks read.
QUERY_SOURCES = ("output", "adapter_input")
# What keys and values are computed from: each adapter's output ``o_i``, or its change ``o_i - y`` (then ``+ y``).
CANDIDATES = ("outputs", "deltas")


@register
@dataclass(frozen=True, kw_only=True)
class Fusion(MethodConfig):
    """Fuse ``adapters`` (bottleneck adapters, at least two) at the sublayer ``roles`` they act on."""

    method: ClassVar[str] = "fusion"
    recipes: ClassVar[Mapping[str, Recipe]] = {}  # it fuses trained adapters: model.add_fusion, not splice train

    adapters: tuple[str, ...] = ()
    roles: tuple[str, ...] = ("ffn",)
    temperature: float = 1.0
    query_from: str = "output"
    attend: str = "outputs"

    def validate(self) -> None:
        if len(self.adapters) < 2 or not all(isinstance(a, str) for a in self.adapters):
            raise ConfigError(f"Fusion.adapters must name at least two adapters, got {self.adapters!r}.")
        if len(set(self.adapters)) != len(self.adapters):
            raise ConfigError(f"Fusion.adapters names an adapter twice: {self.adapters!r}.")
        if not self.roles or any(role not in SUBLAYER_ROLES for role in self.roles):
            raise ConfigError(f"Fusion.roles must be sublayer roles from {SUBLAYER_ROLES}, got {self.roles!r}.")
        self._require_positive("temperature", self.temperature)
        self._require_choice("query_from", self.query_from, QUERY_SOURCES)
        self._require_choice("attend", self.attend, CANDIDATES)

    def sites(self, anatomy: Anatomy) -> list[Site]:
        return self.sites_for(anatomy, self.roles)

    @property
    def fused_adapters(self) -> tuple[str, ...]:
        return self.adapters

    def build(self, site: Site, anatomy: Anatomy) -> Delta:
        return FusionLayer(site.out_features, self.temperature, self.query_from, self.attend)


class FusionLayer(Delta):
    """The learned attention over adapter outputs at one site, called as ``layer(y, outputs, query)``.

    ``attend`` and ``query_from`` (the config's options) say what the fusion reads of the fused deltas.
    """

    stage = "output"
    reads_input = False

    def __init__(self, features: int, temperature: float, query_from: str = "output", attend: str = "outputs"):
        super().__init__()
        self.temperature = temperature
        self.query_from, self.attend = query_from, attend
        self.query = nn.Linear(features, features)
        self.key = nn.Linear(features, features)
        self.value = nn.Linear(features, features)
        for projection in (self.query, self.key):
            nn.init.normal_(projection.weight, std=0.02)
            nn.init.zeros_(projection.bias)
        with torch.no_grad():  # identity value projection: fusion starts as a mix of the adapters' outputs
            self.value.weight.copy_(torch.eye(features))
            self.value.bias.zero_()

    def forward(self, y: torch.Tensor, outputs: list[torch.Tensor], query: torch.Tensor | None = None) -> torch.Tensor:
        """Mix ``outputs`` (each adapter's output, or its change with ``attend="deltas"``) by attention from
        ``query`` (default ``y``)."""
        dtype = self.query.weight.dtype
        candidates = torch.stack([o.to(dtype) for o in outputs], dim=-2)  # [..., adapters, features]
        query = self.query((y if query is None else query).to(dtype)).unsqueeze(-2)  # [..., 1, features]
        scores = (query * self.key(candidates)).sum(-1) / self.temperature
        weights = torch.softmax(scores, dim=-1).unsqueeze(-1)
        mixed = (weights * self.value(candidates)).sum(-2)
        if self.attend == "deltas":
            mixed = mixed + y.to(dtype)
        return mixed.to(y.dtype)
