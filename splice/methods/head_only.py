"""A head with no deltas: the adapter is only its prediction head.

Two uses: a *linear probe* (frozen backbone, a trained head on its features; the
usual floor an adapter must beat), and the head that full fine-tuning trains
alongside the unfrozen base (`splice train --method full`). AdapterHub calls
the same thing a static head; peft's nearest is ``modules_to_save``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from ..anatomy import Anatomy, Site
from ..errors import ConfigError
from .base import Delta, MethodConfig, Recipe
from .registry import register


@register
@dataclass(frozen=True, kw_only=True)
class HeadOnly(MethodConfig):
    """No site is touched; add it with a head: ``model.add("probe", HeadOnly(), head=Classification(3))``."""

    method: ClassVar[str] = "head_only"
    # The two yardsticks every adapter is compared with.
    recipes: ClassVar[Mapping[str, Recipe]] = {
        "probe": Recipe(learning_rate=1e-3,
                        help="frozen backbone, only the head trains (linear probe with --head-layers 1)"),
        "full": Recipe(learning_rate=3e-5, trains_base=True,
                       help="full fine-tuning: every base weight trains (baseline)"),
    }

    def validate(self) -> None:
        if self.layers is not None:
            raise ConfigError("HeadOnly has no per-block parts, so layers= means nothing for it; leave it out.")

    def sites(self, anatomy: Anatomy) -> list[Site]:
        return []

    def build(self, site: Site, anatomy: Anatomy) -> Delta:
        raise AssertionError("HeadOnly has no sites, so nothing is ever built")
