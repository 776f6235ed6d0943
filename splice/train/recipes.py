"""``--method`` names: each one a method config with the defaults the peer libraries use, and a learning rate.

The defaults follow what `adapters` and `peft` users start from: bottlenecks with
reduction factor 16, LoRA r 8 / alpha 16 on q and v with dropout 0.1, IA³ on k, v
and the FFN's down projection. ``full`` (full fine-tuning) and ``probe`` (frozen
backbone, trained head) are the two yardsticks every adapter is compared with.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..methods import MethodConfig


@dataclass(frozen=True)
class Recipe:
    """How ``--method NAME`` is built: the config (from the user's options), its learning rate, what trains."""

    build: Callable[..., MethodConfig]
    defaults: Mapping[str, Any]
    learning_rate: float
    trains_base: bool = False
    help: str = ""

    def config(self, options: Mapping[str, Any]) -> MethodConfig:
        try:
            return self.build(**{**self.defaults, **options})
        except TypeError as error:  # an option the config does not take
            raise ConfigError(f"Bad method option: {error}. Options with defaults: {dict(self.defaults)}.") from error


def _lazy(name: str, module: str = "methods") -> Callable[..., MethodConfig]:
    """``splice.<module>.<name>``, imported when first called: the table itself (``splice train --help``
    lists it) must not import torch, which the method configs' modules do."""

    def build(**options: Any) -> MethodConfig:
        return getattr(importlib.import_module(f"splice.{module}"), name)(**options)

    build.__qualname__ = build.__name__ = name
    return build


RECIPES: dict[str, Recipe] = {
    "pfeiffer": Recipe(_lazy("Bottleneck"), {"placement": "pfeiffer", "reduction_factor": 16}, 1e-3,
                       help="bottleneck after the FFN (Pfeiffer et al. 2021)"),
    "houlsby": Recipe(_lazy("Bottleneck"), {"placement": "houlsby", "reduction_factor": 16}, 1e-3,
                      help="bottlenecks after attention and FFN (Houlsby et al. 2019)"),
    "parallel": Recipe(_lazy("Bottleneck"), {"placement": "parallel", "reduction_factor": 16, "scale": 4.0}, 1e-3,
                       help="scaled bottleneck beside the FFN (He et al. 2022)"),
    "lora": Recipe(_lazy("LoRA"), {"r": 8, "alpha": 16.0, "targets": ("q", "v"), "dropout": 0.1}, 5e-4,
                   help="low-rank updates of q and v (Hu et al. 2021)"),
    "ia3": Recipe(_lazy("IA3"), {}, 3e-3, help="learned scaling of k, v and the FFN (Liu et al. 2022)"),
    "bitfit": Recipe(_lazy("BitFit"), {}, 1e-3, help="bias deltas on every projection (Ben Zaken et al. 2022)"),
    "prefix": Recipe(_lazy("PrefixTuning"), {"length": 30}, 5e-3,
                     help="learned keys and values at every self-attention"),
    "prompt": Recipe(_lazy("PromptTuning"), {"length": 20}, 3e-2, help="learned soft tokens in front of the input"),
    "mam": Recipe(_lazy("mam", "presets"), {}, 1e-3, help="prefix + scaled parallel adapter (He et al. 2022)"),
    "unipelt": Recipe(_lazy("unipelt", "presets"), {}, 1e-3, help="gated LoRA + bottleneck + prefix (Mao et al. 2022)"),
    "probe": Recipe(_lazy("HeadOnly"), {}, 1e-3,
                    help="frozen backbone, only the head trains (linear probe with --head-layers 1)"),
    "full": Recipe(_lazy("HeadOnly"), {}, 3e-5, trains_base=True,
                   help="full fine-tuning: every base weight trains (baseline)"),
}


def recipe(method: str) -> Recipe:
    """The recipe for ``--method method``, or an error listing them."""
    if method not in RECIPES:
        raise ConfigError(f"Unknown method {method!r}; choose one of {', '.join(RECIPES)}.")
    return RECIPES[method]
