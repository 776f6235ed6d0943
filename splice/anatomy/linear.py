"""Linear-like modules: ``nn.Linear``, Hugging Face's transposed ``Conv1D`` (GPT-2), and quantized linears."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import QuantizationError
from .quantized import features, is_quantized, is_quantized_linear, quantization_of


def is_linear(module: nn.Module) -> bool:
    """True for ``nn.Linear`` (bitsandbytes layers included), Hugging Face's transposed ``Conv1D`` (GPT-2),
    and the linear layers of quantization libraries that do not subclass ``nn.Linear`` (HQQ, GPTQ, AWQ)."""
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D" or is_quantized_linear(module)


def linear_weight(module: nn.Module) -> torch.Tensor:
    """The float weight of a linear-like module as an ``[out, in]`` view (writes go through).

    A quantized layer has no such view (its weight is packed): that is a :class:`QuantizationError`
    saying how to merge anyway, so nothing ever adds a float delta to packed bytes."""
    if is_quantized(module):
        raise QuantizationError(
            f"The {quantization_of(module)} layer {type(module).__name__} has a packed weight that cannot be "
            "written in place; merge with dequantize=True (rounds the result), or load the base unquantized."
        )
    if type(module).__name__ == "Conv1D":
        return module.weight.t()
    return module.weight


def linear_shape(module: nn.Module) -> tuple[int, int]:
    """``(in_features, out_features)`` of a linear-like module; quantized layers report their own."""
    if is_quantized(module):
        return features(module)
    out_features, in_features = linear_weight(module).shape
    return in_features, out_features
