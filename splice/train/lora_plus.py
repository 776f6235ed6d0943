"""LoRA+ (Hayou et al. 2024): train ``B`` of a LoRA-family adapter with a learning rate ``ratio`` times ``A``'s.

``splice train --method lora --option lora_plus_ratio=16``. The option belongs to the
optimiser, not to the method config, so it is taken out of the method's options here.
Parameters are grouped as peft's ``create_loraplus_optimizer`` groups them: those named
``lora_B``, and every vector (1-D: DoRA's magnitudes, VeRA's scales, biases), take
``ratio × lr``; the rest take ``lr``. Weight decay follows the Trainer's own rule (none
on biases and norms), where peft's helper defaults to no decay at all.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from torch import nn

from ..errors import ConfigError

OPTION = "lora_plus_ratio"


def split_options(options: Mapping[str, Any]) -> tuple[dict[str, Any], float | None]:
    """``options`` without ``lora_plus_ratio``, and that ratio (None when not given)."""
    rest = dict(options)
    ratio = rest.pop(OPTION, None)
    if ratio is not None and (isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not ratio > 0):
        raise ConfigError(f"{OPTION} must be a positive number (LoRA+ suggests 16), got {ratio!r}.")
    return rest, None if ratio is None else float(ratio)


def parameter_groups(model: nn.Module, decay: Collection[str], lr: float, weight_decay: float,
                     ratio: float) -> list[dict[str, Any]]:
    """Optimiser parameter groups of ``model``'s trainable parameters: ``B`` (and vectors) at ``ratio × lr``.

    ``decay`` names the parameters that take ``weight_decay``. Refuses a model with nothing named ``lora_B``
    to train: the ratio would silently mean something else (a faster head, say).
    """
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            groups.setdefault(("lora_B" in name or param.ndim == 1, name in decay), []).append(param)
    if not any("lora_B" in name and p.requires_grad for name, p in model.named_parameters()):
        raise ConfigError(f"{OPTION} sets the learning rate of LoRA's B matrices, and this adapter has none to "
                          "train; use it with --method lora or dora.")
    return [{"params": params, "lr": lr * ratio if is_b else lr, "weight_decay": weight_decay if decays else 0.0}
            for (is_b, decays), params in groups.items()]
