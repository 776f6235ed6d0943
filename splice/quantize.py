"""Quantized bases: loading a Hugging Face model in 4-bit or 8-bit, and preparing it for k-bit training.

The adapters stay float; only the frozen base is stored quantized (QLoRA). Two backends:
bitsandbytes (``nf4``, ``fp4``, ``int8``; runs on the CPU too) and torchao (``torchao-int8``, int8
weight-only). Which layer types exist and how to read them is :mod:`splice.anatomy.quantized`'s job;
this module only loads and prepares. Neither library is imported until a quantized load asks for it.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING

from .errors import QuantizationError

if TYPE_CHECKING:
    from torch import nn

# Plain names, so that the CLI and TrainConfig can offer and check them without importing torch.
BITSANDBYTES = ("nf4", "fp4", "int8")
TORCHAO = ("torchao-int8",)
QUANTIZATIONS = BITSANDBYTES + TORCHAO
# Asked for, checked, and not offered: why, and what to use instead. torchao 0.18 packs int4 weights only for
# CUDA (Int4WeightOnlyConfig: the mslk kernels or tinygemm's bfloat16 tile packing); on the CPU its int4
# (IntxWeightOnlyConfig) keeps every 4-bit value in a whole byte, so it would save nothing over torchao-int8.
NOT_OFFERED = {
    "torchao-int4": "torchao packs int4 weights only on CUDA, and its CPU int4 keeps each value in a whole byte "
                    "(no smaller than torchao-int8); for a 4-bit base use --quantize nf4 or fp4 (bitsandbytes, CPU "
                    "and GPU), for torchao use torchao-int8",
}
COMPUTE_DTYPES = ("float32", "bfloat16", "float16")


def _require(library: str, kind: str) -> None:
    if importlib.util.find_spec(library) is None:
        raise QuantizationError(
            f"--quantize {kind} needs {library}, which is not installed; pip install 'splice[quantize]'."
        )


def load_options(kind: str | None, compute_dtype: str = "float32") -> dict:
    """Keyword arguments for ``from_pretrained`` that load the base as ``kind`` (none for ``None`` or torchao,
    which quantizes after loading: :func:`quantize_loaded`).

    ``compute_dtype`` is the dtype bitsandbytes' 4-bit layers compute in (their inputs are cast to it)."""
    if kind is None or kind in TORCHAO:
        return {}
    check_choice(kind, compute_dtype)
    _require("bitsandbytes", kind)
    import torch
    from transformers import BitsAndBytesConfig

    if kind == "int8":
        config = BitsAndBytesConfig(load_in_8bit=True)
    else:
        config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=kind,
                                    bnb_4bit_compute_dtype=getattr(torch, compute_dtype))
    return {"quantization_config": config, "low_cpu_mem_usage": True}


def quantize_loaded(model: nn.Module, kind: str | None) -> nn.Module:
    """Quantize an already loaded model in place where the backend works that way (torchao); else unchanged.

    Every ``nn.Linear`` except the output embeddings (often tied to the input embeddings) becomes
    int8 weight-only."""
    if kind not in TORCHAO:
        return model
    _require("torchao", kind)
    from torch import nn
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    quantize_(model, Int8WeightOnlyConfig(), filter_fn=lambda m, _: isinstance(m, nn.Linear) and m is not output)
    return model


def load_pretrained(auto, folder: str, kind: str | None = None, compute_dtype: str = "float32", **kwargs) -> nn.Module:
    """``auto.from_pretrained(folder, **kwargs)``, the base stored as ``kind`` (``None``: as saved)."""
    if kind is not None:
        check_choice(kind, compute_dtype)
    return quantize_loaded(auto.from_pretrained(folder, **load_options(kind, compute_dtype), **kwargs), kind)


def dequantize_model(model: nn.Module) -> nn.Module:
    """``model`` with every quantized layer back in float32 (the weights it computed with), e.g. to merge an
    adapter trained on a quantized base exactly and save the result as an ordinary float model. Call it before
    ``attach``: bitsandbytes layers are replaced by ``nn.Linear``s."""
    from torch import nn

    from .anatomy import dequantized_weight, quantization_of

    if getattr(model, "hf_quantizer", None) is not None:  # bitsandbytes through transformers: it also drops the config
        model = model.dequantize()
    for module in model.modules():
        if quantization_of(module) == "torchao":
            module.weight = nn.Parameter(dequantized_weight(module), requires_grad=False)
    return model


def check_choice(kind: str, compute_dtype: str = "float32") -> None:
    """A clear error for an unknown or not offered ``--quantize``, or an unknown compute dtype."""
    if kind in NOT_OFFERED:
        raise QuantizationError(f"--quantize {kind} is not offered: {NOT_OFFERED[kind]}.")
    if kind not in QUANTIZATIONS:
        raise QuantizationError(f"Unknown quantization {kind!r}; choose one of {', '.join(QUANTIZATIONS)}.")
    if compute_dtype not in COMPUTE_DTYPES:
        raise QuantizationError(f"Unknown compute dtype {compute_dtype!r}; choose one of {', '.join(COMPUTE_DTYPES)}.")


def prepare_for_kbit_training(base: nn.Module) -> bool:
    """What peft's ``prepare_model_for_kbit_training`` does that matters, for a quantized base; True if it is one.

    Every float16/bfloat16 parameter outside the quantized layers (embeddings, norms, biases, the output
    head) is upcast to float32, as peft does: values stay the same, only their storage widens, so the
    activations between quantized layers run in float32 and small gradients do not underflow (the
    quantized layers cast their input to their compute dtype and their output back). Input gradients for
    reentrant gradient checkpointing are the model's job (``train_adapter`` installs them on every base).
    The quantized weights and their quant state are never touched."""
    import torch

    from .anatomy import is_quantized

    quantized = [m for m in base.modules() if is_quantized(m)]
    if not quantized:
        return False
    packed = {id(p) for m in quantized for p in m.parameters(recurse=False)}
    for parameter in base.parameters():
        if id(parameter) not in packed and parameter.dtype in (torch.float16, torch.bfloat16):
            parameter.data = parameter.data.float()
    return True
