"""Methods: one file each, and this registry. Adding a method = one file + one line here."""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from .base import MethodConfig
from .bitfit import BitFit
from .bottleneck import Bottleneck
from .fusion import Fusion
from .head_only import HeadOnly
from .ia3 import IA3
from .lora import LoRA
from .prefix import PrefixTuning
from .prompt import PromptTuning
from .union import Union

METHODS: dict[str, type[MethodConfig]] = {
    cls.method: cls for cls in (Bottleneck, LoRA, IA3, BitFit, Fusion, PromptTuning, PrefixTuning, Union, HeadOnly)
}


def config_from_dict(data: dict[str, Any]) -> MethodConfig:
    """Rebuild a method config from its ``to_dict()`` form, with a clear error for unknown methods."""
    if not isinstance(data, dict) or "method" not in data:
        raise ConfigError(f"A method config must be a JSON object with a 'method' key, got {data!r}.")
    cls = METHODS.get(data["method"])
    if cls is None:
        raise ConfigError(f"Unknown method {data['method']!r}; splice knows {', '.join(sorted(METHODS))}.")
    return cls.from_dict(data)


__all__ = ["METHODS", "MethodConfig", "Bottleneck", "LoRA", "IA3", "BitFit", "Fusion", "PromptTuning",
           "PrefixTuning", "Union", "HeadOnly", "config_from_dict"]
