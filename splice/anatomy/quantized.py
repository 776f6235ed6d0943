"""Quantized layer types: the one place that knows them.

A quantized projection stores a packed weight (bitsandbytes 4-bit keeps an ``[n, 1]`` uint8
tensor, int8 keeps int8 rows and a scale per row, torchao a tensor subclass, HQQ/GPTQ their own
buffers), so its shape must come from the module, never from ``weight.shape``. Hooks read only a
layer's input and output, so every method runs on these layers unchanged; only shapes and merges
need to know more, and they ask here.

No quantization library is imported by this module: a layer of a library can only exist once
that library is imported, so the checks look at ``sys.modules`` and class names.
"""

from __future__ import annotations

import sys

import torch
from torch import nn

from ..errors import QuantizationError

# Linear layers of libraries that do not subclass nn.Linear, by class name: HQQ, GPTQ (auto-gptq,
# gptqmodel, optimum's exllama variants), AWQ. They expose in/out features under one of these names.
_FOREIGN_LINEARS = {"HQQLinear": "hqq", "QuantLinear": "gptq", "WQLinear_GEMM": "awq", "WQLinear_GEMV": "awq"}
_FEATURE_NAMES = (("in_features", "out_features"), ("infeatures", "outfeatures"))


def _bnb_modules():
    bnb = sys.modules.get("bitsandbytes")
    return None if bnb is None else bnb.nn


def quantization_of(module: nn.Module) -> str | None:
    """How ``module``'s weight is stored: ``"nf4"``, ``"fp4"``, ``"int8"`` (bitsandbytes), ``"torchao"``,
    ``"hqq"``, ``"gptq"``, ``"awq"`` — or ``None`` for a plain float layer."""
    bnb = _bnb_modules()
    if bnb is not None:
        if isinstance(module, bnb.Linear4bit):
            return str(getattr(module.weight, "quant_type", "fp4"))
        if isinstance(module, bnb.Linear8bitLt):
            return "int8"
    kind = _FOREIGN_LINEARS.get(type(module).__name__)
    if kind is not None:
        return kind
    weight = getattr(module, "weight", None)
    if isinstance(weight, torch.Tensor) and type(weight).__module__.startswith("torchao"):
        return "torchao"
    return None


def is_quantized(module: nn.Module) -> bool:
    """True when ``module``'s weight is stored quantized (any library above)."""
    return quantization_of(module) is not None


def is_quantized_linear(module: nn.Module) -> bool:
    """True for the linear layers of quantization libraries that are not ``nn.Linear`` subclasses."""
    return type(module).__name__ in _FOREIGN_LINEARS


def features(module: nn.Module) -> tuple[int, int]:
    """``(in_features, out_features)`` of a quantized linear, read from the module's own attributes."""
    for in_name, out_name in _FEATURE_NAMES:
        if isinstance(getattr(module, in_name, None), int) and isinstance(getattr(module, out_name, None), int):
            return getattr(module, in_name), getattr(module, out_name)
    weight = getattr(module, "weight", None)
    if quantization_of(module) == "torchao" and weight is not None:
        out_features, in_features = weight.shape  # torchao subclasses report the logical shape
        return in_features, out_features
    raise QuantizationError(
        f"Cannot read the shape of quantized layer {type(module).__name__}: it has no in_features/out_features. "
        "Map its role to another module with attach(model, roles=...), or load the base unquantized."
    )


def dequantized_weight(module: nn.Module) -> torch.Tensor:
    """The ``[out, in]`` float32 weight a quantized layer computes with (a new tensor, not a view)."""
    kind = quantization_of(module)
    weight = module.weight
    if kind in ("nf4", "fp4"):
        import bitsandbytes.functional as F

        return F.dequantize_4bit(weight.data, weight.quant_state).float().reshape(module.out_features, -1)
    if kind == "int8":
        import bitsandbytes.functional as F

        scales = weight.SCB if getattr(weight, "SCB", None) is not None else module.state.SCB
        return F.int8_vectorwise_dequant(weight.data, scales).float()
    if kind == "torchao":
        return weight.dequantize().float()
    raise QuantizationError(
        f"splice cannot dequantize {kind or 'float'} layer {type(module).__name__}; "
        "load the base unquantized to merge into it."
    )


def requantize(module: nn.Module, weight: torch.Tensor) -> None:
    """Store the float ``[out, in]`` ``weight`` into ``module`` in the module's own quantized form
    (same library, type, block size and storage), replacing its weight and quant state."""
    kind = quantization_of(module)
    old = module.weight
    if kind in ("nf4", "fp4"):
        import bitsandbytes as bnb

        fresh = bnb.nn.Params4bit(weight.to(old.quant_state.dtype), requires_grad=False, blocksize=old.blocksize,
                                  compress_statistics=old.compress_statistics, quant_type=old.quant_type,
                                  quant_storage=old.quant_storage, module=module)
        module.weight = fresh._quantize(old.device)
    elif kind == "int8":
        import bitsandbytes as bnb

        fresh = bnb.nn.Int8Params(weight.to(torch.float16), requires_grad=False, has_fp16_weights=False)
        module.weight = fresh._quantize(old.device)
        module.state.SCB = None  # the layer caches the old scales; let it read the new ones
        module.state.CB = None
    elif kind == "torchao" and _torchao_per_row_int8(old):
        from torchao.quantization import PerRow

        module.weight = nn.Parameter(type(old).from_hp(weight.to(old.dtype), PerRow()), requires_grad=False)
    else:
        raise QuantizationError(
            f"splice cannot requantize {kind or 'float'} layer {type(module).__name__}; "
            "load the base unquantized to merge into it."
        )


def _torchao_per_row_int8(weight: torch.Tensor) -> bool:
    """torchao's int8 weight-only layout with one scale per output row (``Int8WeightOnlyConfig``'s default)."""
    block = getattr(weight, "block_size", None)
    return type(weight).__name__ == "Int8Tensor" and block is not None and list(block) == [1, weight.shape[1]]


def quantization_summary(model: nn.Module) -> dict | None:
    """How ``model``'s layers are stored, for an adapter to record (informational): ``{"layers": {"nf4": 14},
    "compute_dtype": "float32"}``, or None for a float model."""
    counts: dict[str, int] = {}
    for module in model.modules():
        kind = quantization_of(module)
        if kind is not None:
            counts[kind] = counts.get(kind, 0) + 1
    if not counts:
        return None
    summary: dict = {"layers": dict(sorted(counts.items()))}
    dtype = getattr(getattr(model, "config", None), "quantization_config", None)
    dtype = dtype.to_dict().get("bnb_4bit_compute_dtype") if hasattr(dtype, "to_dict") else None
    if dtype is not None and any(kind in ("nf4", "fp4") for kind in counts):
        summary["compute_dtype"] = str(dtype).replace("torch.", "")
    return summary


def parameter_count(model: nn.Module) -> int:
    """``model``'s parameters, as ``model.parameters()`` counts them (a tied weight once), except that a
    quantized layer's weight counts at its logical size (in × out): a packed 4-bit weight holds two values
    per byte, so its ``numel()`` would halve the count."""
    seen: set[int] = set()
    total = 0
    for module in model.modules():
        for name, parameter in module.named_parameters(recurse=False):
            if id(parameter) in seen:
                continue
            seen.add(id(parameter))
            if name == "weight" and is_quantized(module):
                in_features, out_features = features(module)
                total += in_features * out_features
            else:
                total += parameter.numel()
    return total
