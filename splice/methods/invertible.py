"""Invertible adapters (MAD-X, Pfeiffer et al. 2020): an invertible coupling block on the embeddings' output.

The embedding output ``e`` is split in halves ``e1 | e2`` (AdapterHub's ``NICECouplingBlock`` /
``GLOWCouplingBlock`` names and layout), with ``F``, ``G``, ``s1``, ``s2`` small
down -> act -> up networks (down width ``in // reduction_factor``):

- ``kind="nice"``: ``y1 = e1 + F(e2)``, ``y2 = e2 + G(y1)``;
- ``kind="glow"``: ``(s, t) = s2(e2)``, ``y1 = exp_c(s) · e1 + t``; ``(s, t) = s1(y1)``, ``y2 = exp_c(s) · e2 + t``
  with ``exp_c(s) = exp(c · 0.636 · atan(s / c))``, ``c = 5`` (the GLOW coupling AdapterHub inverts;
  its forward pass splits the sequence axis and returns a list, so it never ran on a text model).

The site is the block that embeds the tokens (BERT-style ``embeddings``, else the token embedding),
where AdapterHub hooks it. The networks' last layers start at zero: a fresh adapter is the identity
(AdapterHub starts them at BERT's random init). MAD-X applies the inverse before a masked-LM head
that shares the embeddings; AdapterHub does so in its own flex heads only, and splice does not yet
(``inverse_at_head=True`` is refused). Combine with a bottleneck as AdapterHub's ``seq_bn_inv`` does:
``splice.Union(splice.Bottleneck(residual_input=True), splice.Invertible())``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ..anatomy import Anatomy, Site
from ..anatomy.calls import token_embedding
from ..anatomy.detect import get_module
from ..errors import AnatomyError, ConfigError
from .base import ACTIVATIONS, Delta, MethodConfig, Recipe
from .registry import register

CLAMP = 5.0  # GLOW's soft clamp: a scale stays within exp(±CLAMP)


@register
@dataclass(frozen=True, kw_only=True)
class Invertible(MethodConfig):
    """An invertible (NICE or GLOW) coupling block on the embeddings' output: MAD-X's language adapter part."""

    method: ClassVar[str] = "invertible"
    recipes: ClassVar[dict[str, Recipe]] = {
        "invertible": Recipe({"kind": "nice", "reduction_factor": 2}, 1e-3,
                             help="NICE coupling block on the embeddings (MAD-X invertible adapter)"),
    }

    kind: str = "nice"
    reduction_factor: float = 2
    non_linearity: str = "relu"
    inverse_at_head: bool = False

    def validate(self) -> None:
        self._require_choice("kind", self.kind, {"nice", "glow"})
        self._require_positive("reduction_factor", self.reduction_factor)
        self._require_choice("non_linearity", self.non_linearity, ACTIVATIONS)
        if self.inverse_at_head:
            raise ConfigError(
                "Invertible.inverse_at_head=True (the inverse before a tied LM head, as in MAD-X masked-LM "
                "training) is not implemented; use False (AdapterHub also skips it outside its own flex heads)."
            )

    def sites(self, anatomy: Anatomy) -> list[Site]:
        module = get_module(anatomy.model, anatomy.layout.embeddings or "embeddings", suffix=True)
        if module is None:  # the token embedding of the module that takes input_ids (T5: the encoder's)
            module = token_embedding(anatomy.prompt_module())
        if module is None:
            raise AnatomyError(
                f"Invertible adapters act on the embeddings' output; this {type(anatomy.model).__name__} has no "
                "'embeddings' block and no token embedding splice can find."
            )
        width = anatomy.hidden_size
        return [Site("invertible", "model", -1, "invertible", module, module, width, width)]

    def build(self, site: Site, anatomy: Anatomy) -> Delta:
        return InvertibleDelta(site.out_features, self)


def subnet(inputs: int, outputs: int, reduction_factor: float, non_linearity: str) -> nn.Sequential:
    """AdapterHub's coupling network: Linear(in, in // rf) -> act -> Linear(., out), the last at zero."""
    hidden = int(inputs // reduction_factor)
    if hidden < 1:
        raise ConfigError(f"Invertible.reduction_factor={reduction_factor} leaves no hidden units for a "
                          f"{inputs}-wide half of the embeddings; use a smaller reduction_factor.")
    net = nn.Sequential(nn.Linear(inputs, hidden), ACTIVATIONS[non_linearity](), nn.Linear(hidden, outputs))
    nn.init.normal_(net[0].weight, std=0.02)
    nn.init.zeros_(net[0].bias)
    nn.init.zeros_(net[2].weight)
    nn.init.zeros_(net[2].bias)
    return net


class InvertibleDelta(Delta):
    """The coupling block: ``forward`` on the embeddings' output, :meth:`inverse` undoes it exactly."""

    stage = "output"

    def __init__(self, width: int, config: Invertible):
        super().__init__()
        self.kind = config.kind
        self.half = width // 2  # the first part; the second holds the rest
        rest = width - self.half
        make = lambda i, o: subnet(i, o, config.reduction_factor, config.non_linearity)  # noqa: E731
        if config.kind == "nice":
            self.F, self.G = make(rest, self.half), make(self.half, rest)
        else:
            self.s1, self.s2 = make(self.half, 2 * rest), make(rest, 2 * self.half)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        e1, e2 = y[..., : self.half], y[..., self.half:]
        if self.kind == "nice":
            y1 = e1 + self.F(e2)
            return torch.cat([y1, e2 + self.G(y1)], -1)
        s, t = self.s2(e2).split([self.half, self.half], -1)
        y1 = _scale(s) * e1 + t
        s, t = self.s1(y1).chunk(2, -1)
        return torch.cat([y1, _scale(s) * e2 + t], -1)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        """The embeddings' output this block turned into ``y``."""
        y1, y2 = y[..., : self.half], y[..., self.half:]
        if self.kind == "nice":
            e2 = y2 - self.G(y1)
            return torch.cat([y1 - self.F(e2), e2], -1)
        s, t = self.s1(y1).chunk(2, -1)
        e2 = (y2 - t) / _scale(s)
        s, t = self.s2(e2).split([self.half, self.half], -1)
        return torch.cat([(y1 - t) / _scale(s), e2], -1)


def _scale(s: torch.Tensor) -> torch.Tensor:
    return torch.exp(CLAMP * 0.636 * torch.atan(s / CLAMP))


__all__ = ["Invertible", "InvertibleDelta"]
