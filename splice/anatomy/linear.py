"""Linear-like modules: ``nn.Linear`` and Hugging Face's transposed ``Conv1D`` (GPT-2)."""

from __future__ import annotations

import torch
from torch import nn


def is_linear(module: nn.Module) -> bool:
    """True for ``nn.Linear`` and Hugging Face's transposed ``Conv1D`` (GPT-2)."""
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def linear_weight(module: nn.Module) -> torch.Tensor:
    """The weight of a linear-like module as an ``[out, in]`` view (writes go through)."""
    if type(module).__name__ == "Conv1D":
        return module.weight.t()
    return module.weight


def linear_shape(module: nn.Module) -> tuple[int, int]:
    out_features, in_features = linear_weight(module).shape
    return in_features, out_features
