"""Merging into a quantized base: dequantize, fold, requantize, and say what rounding cost.

A quantized layer's packed weight cannot take a float delta in place (int8 rows would round the
delta to whole steps, a 4-bit weight has no ``[out, in]`` view at all), so each touched layer is
dequantized into a float stand-in, every delta at that layer folds into the stand-in with its own
``merge``/``unmerge``, and the result is stored back in the layer's quantized form. The stand-in is
exact; storing it back rounds, and :class:`RoundingReport` says by how much.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from .anatomy import Site, dequantized_weight, is_quantized, quantization_of, requantize
from .errors import QuantizationError
from .methods.base import Delta


@dataclass(frozen=True)
class RoundingReport:
    """The error requantizing a merge introduced, over every weight entry it rewrote."""

    layers: int
    max_error: float
    mean_error: float

    def __str__(self) -> str:
        return (f"requantized {self.layers} layer(s): rounding error max {self.max_error:.3g}, "
                f"mean {self.mean_error:.3g} per weight")


def check_quantized_merge(name: str, pairs: list[tuple[Site, Delta]], dequantize: bool) -> None:
    """Refuse a merge into quantized layers unless the caller asked for the rounding ``dequantize`` brings."""
    kinds = sorted({quantization_of(site.module) for site, _ in pairs if is_quantized(site.module)})
    if kinds and not dequantize:
        raise QuantizationError(
            f"{name!r} acts on {'/'.join(kinds)} quantized layers, whose packed weights cannot take a float "
            "delta exactly; use merge(name, dequantize=True) (rounds; reports the error), keep it unmerged, "
            "or load the base unquantized (splice merge --model writes a float model)."
        )


def fold_quantized(pairs: list[tuple[Site, Delta]], fold: str) -> RoundingReport | None:
    """Apply ``delta.<fold>(site)`` (``"merge"`` or ``"unmerge"``) for every pair where some pair's layer is
    quantized: quantized layers go through a float stand-in and are requantized once each, float layers fold
    directly. Returns the rounding report; None (and nothing done) if no layer is quantized."""
    standins: dict[int, tuple[nn.Module, nn.Linear]] = {}
    for site, _ in pairs:
        if is_quantized(site.module) and id(site.module) not in standins:  # dequantize all before writing any
            standins[id(site.module)] = (site.module, _float_standin(site.module))
    if not standins:
        return None
    for site, delta in pairs:
        standin = standins.get(id(site.module))
        if standin is None:
            getattr(delta, fold)(site)
        else:
            getattr(delta, fold)(dataclasses.replace(site, module=standin[1], input_module=standin[1]))
    worst, total, count = 0.0, 0.0, 0
    for module, standin in standins.values():
        requantize(module, standin.weight.data)
        if standin.bias is not None:
            with torch.no_grad():
                module.bias.copy_(standin.bias.to(module.bias.dtype))
        error = (dequantized_weight(module) - standin.weight.data).abs()
        worst, total, count = max(worst, error.max().item()), total + error.sum().item(), count + error.numel()
    return RoundingReport(len(standins), worst, total / count)


def _float_standin(module: nn.Module) -> nn.Linear:
    """An ``nn.Linear`` holding ``module``'s dequantized weight and a float copy of its bias."""
    weight = dequantized_weight(module)
    bias = getattr(module, "bias", None)
    if bias is not None and not torch.is_floating_point(bias):
        raise QuantizationError(f"{type(module).__name__} stores its bias quantized; splice cannot merge into it.")
    standin = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    standin.weight = nn.Parameter(weight, requires_grad=False)
    if bias is not None:
        standin.bias = nn.Parameter(bias.detach().float().clone(), requires_grad=False)
    return standin
