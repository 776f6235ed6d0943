"""The head contract: what every prediction head provides, and the registry that rebuilds heads from JSON."""

from __future__ import annotations

from typing import Any, ClassVar, Mapping

import torch
from torch import nn

from ..errors import ConfigError


class Head(nn.Module):
    """Base class of splice's prediction heads."""

    kind: ClassVar[str] = ""
    label_names: ClassVar[tuple[str, ...]] = ("labels",)

    def prepare_inputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        return inputs

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None,
                inputs: Mapping[str, Any]) -> torch.Tensor:
        raise NotImplementedError

    def loss(self, logits: torch.Tensor, targets: Mapping[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def build(self, hidden_size: int) -> None:
        """Create the parameters for a backbone whose hidden states are ``hidden_size`` wide."""


HEADS: dict[str, type[Head]] = {}


def head_from_dict(data: Mapping[str, Any]) -> Head:
    """Rebuild a head from its ``to_dict()`` form."""
    kind = data.get("kind") if isinstance(data, Mapping) else None
    if kind not in HEADS:
        raise ConfigError(f"Unknown head kind {kind!r}; splice knows {', '.join(sorted(HEADS)) or 'none'}.")
    options = {k: v for k, v in data.items() if k != "kind"}
    return HEADS[kind](**options)


def register(cls: type[Head]) -> type[Head]:
    """Class decorator: make a head kind known to :func:`head_from_dict` under its ``kind``."""
    HEADS[cls.kind] = cls
    return cls
