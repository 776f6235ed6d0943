"""Published combinations of methods, as :class:`splice.Union` configs.

    model.add("task", splice.presets.mam())        # prefix + scaled parallel adapter
    model.add("task", splice.presets.unipelt())    # LoRA + adapter + prefix, gated
"""

from __future__ import annotations

from .methods import LoRA, PrefixTuning, Union
from .methods.bottleneck import Bottleneck


def mam(prefix_length: int = 30, reduction_factor: float = 2.0, scale: float = 4.0) -> Union:
    """Mix-and-match adapter (He et al. 2022, "Towards a Unified View of Parameter-Efficient Transfer Learning").

    Prefix tuning at every self-attention plus a scaled parallel bottleneck beside
    every FFN, the combination the paper found best: prefix length 30 and a
    parallel adapter of width hidden/2 (r=512 on BART-large) with scale 4.
    """
    return Union(PrefixTuning(length=prefix_length),
                 Bottleneck(placement="parallel", reduction_factor=reduction_factor, scale=scale))


def unipelt(prefix_length: int = 10, lora_r: int = 8, lora_alpha: float = 16.0,
            reduction_factor: float = 16.0) -> Union:
    """UniPELT (Mao et al. 2022): LoRA on q and v, a sequential bottleneck after the FFN, and prefix tuning,
    each scaled by a learned gate per layer (see :mod:`splice.methods.union` for how splice's gates work).
    """
    return Union(LoRA(r=lora_r, alpha=lora_alpha, targets=("q", "v")),
                 Bottleneck(placement="pfeiffer", reduction_factor=reduction_factor),
                 PrefixTuning(length=prefix_length), gates=True)
