"""``--method`` names: each one a method config with the defaults the peer libraries use, and a learning rate.

The defaults follow what `adapters` and `peft` users start from: bottlenecks with
reduction factor 16, LoRA r 8 / alpha 16 on q and v with dropout 0.1, IA³ on k, v
and the FFN's down projection. ``full`` (full fine-tuning) and ``probe`` (frozen
backbone, trained head) are the two yardsticks every adapter is compared with.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .. import presets
from ..errors import ConfigError
from ..methods import IA3, BitFit, Bottleneck, HeadOnly, LoRA, MethodConfig, PrefixTuning, PromptTuning


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


RECIPES: dict[str, Recipe] = {
    "pfeiffer": Recipe(Bottleneck, {"placement": "pfeiffer", "reduction_factor": 16}, 1e-3,
                       help="bottleneck after the FFN (Pfeiffer et al. 2021)"),
    "houlsby": Recipe(Bottleneck, {"placement": "houlsby", "reduction_factor": 16}, 1e-3,
                      help="bottlenecks after attention and FFN (Houlsby et al. 2019)"),
    "parallel": Recipe(Bottleneck, {"placement": "parallel", "reduction_factor": 16, "scale": 4.0}, 1e-3,
                       help="scaled bottleneck beside the FFN (He et al. 2022)"),
    "lora": Recipe(LoRA, {"r": 8, "alpha": 16.0, "targets": ("q", "v"), "dropout": 0.1}, 5e-4,
                   help="low-rank updates of q and v (Hu et al. 2021)"),
    "ia3": Recipe(IA3, {}, 3e-3, help="learned scaling of k, v and the FFN (Liu et al. 2022)"),
    "bitfit": Recipe(BitFit, {}, 1e-3, help="bias deltas on every projection (Ben Zaken et al. 2022)"),
    "prefix": Recipe(PrefixTuning, {"length": 30}, 5e-3, help="learned keys and values at every self-attention"),
    "prompt": Recipe(PromptTuning, {"length": 20}, 3e-2, help="learned soft tokens in front of the input"),
    "mam": Recipe(presets.mam, {}, 1e-3, help="prefix + scaled parallel adapter (He et al. 2022)"),
    "unipelt": Recipe(presets.unipelt, {}, 1e-3, help="gated LoRA + bottleneck + prefix (Mao et al. 2022)"),
    "probe": Recipe(HeadOnly, {}, 1e-3,
                    help="frozen backbone, only the head trains (linear probe with --head-layers 1)"),
    "full": Recipe(HeadOnly, {}, 3e-5, trains_base=True, help="full fine-tuning: every base weight trains (baseline)"),
}


def recipe(method: str) -> Recipe:
    """The recipe for ``--method method``, or an error listing them."""
    if method not in RECIPES:
        raise ConfigError(f"Unknown method {method!r}; choose one of {', '.join(RECIPES)}.")
    return RECIPES[method]
