"""A head with no deltas: the adapter is only its prediction head.

Two uses: a *linear probe* (frozen backbone, a trained head on its features; the
usual floor an adapter must beat), and the head that full fine-tuning trains
alongside the unfrozen base (`splice train --method full`). AdapterHub calls
the same thing a static head; peft's nearest is ``modules_to_save``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from ..anatomy import Anatomy, Site
from ..errors import ConfigError
from .base import MethodConfig


@dataclass(frozen=True, kw_only=True)
class HeadOnly(MethodConfig):
    """No site is touched; add it with a head: ``model.add("probe", HeadOnly(), head=Classification(3))``."""

    method: ClassVar[str] = "head_only"
    mergeable: ClassVar[bool] = False

    def validate(self) -> None:
        if self.layers is not None:
            raise ConfigError("HeadOnly has no per-block parts, so layers= means nothing for it; leave it out.")

    def sites(self, anatomy: Anatomy) -> list[Site]:
        return []

    def build(self, site: Site, anatomy: Anatomy) -> nn.Module:
        raise AssertionError("HeadOnly has no sites, so nothing is ever built")
