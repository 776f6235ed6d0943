"""Per-row adapter ops for mixed batches, and the dispatcher that picks how to run them.

Each op has a plain PyTorch reference (:mod:`splice.kernels.reference`) and a
Triton kernel. The dispatcher runs the Triton kernel when the tensors are on a
CUDA device, Triton is importable and no gradient is needed (the kernels have
no backward); otherwise the reference. If a kernel fails (an old GPU, a Triton
build that cannot compile it), a warning says so once and the reference takes
over for the rest of the process. ``set_backend("reference")`` forces the
reference everywhere (benchmarks compare the two).

Rows name table slots: ``slots[i] = -1`` leaves row ``i`` unchanged; the
tables' last slot is the identity (see :mod:`splice.kernels.bank`).
"""

from __future__ import annotations

import importlib
import warnings
from types import ModuleType

import torch

from . import reference
from .bank import Bank, Banks
from .segments import RowSlots

__all__ = ["Bank", "Banks", "RowSlots", "backend_for", "bottleneck", "kronecker", "lora", "scale_rows",
           "set_backend", "shift_rows"]

BACKENDS = ("auto", "reference")
_state = {"backend": "auto", "broken": False}
_modules: dict[str, ModuleType | None] = {}


def set_backend(name: str) -> str:
    """``"auto"`` (Triton on CUDA where it can run, else the reference) or ``"reference"``; returns the old one."""
    if name not in BACKENDS:
        from ..errors import ConfigError

        raise ConfigError(f"Unknown kernel backend {name!r}; choose one of {', '.join(BACKENDS)}.")
    old, _state["backend"] = _state["backend"], name
    return old


def backend_for(*tensors: torch.Tensor) -> str:
    """Which implementation an op on these tensors runs: ``"triton"`` or ``"reference"``."""
    first = tensors[0]
    if _state["backend"] == "reference" or _state["broken"] or not first.is_cuda:
        return "reference"
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return "reference"
    return "triton" if _triton("triton_rows") is not None else "reference"


def lora(x: torch.Tensor, y: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor,
         rows: RowSlots | torch.Tensor) -> torch.Tensor:
    """``y + scale[s] * (x @ a[s].T) @ b[s].T`` per row; see :func:`splice.kernels.reference.lora`."""
    rows = _rows(rows)
    if backend_for(x, y, a, b) == "triton":
        return _run("triton_lora", "lora", reference.lora, (x, y, a, b, scale, rows))
    return reference.lora(x, y, a, b, scale, rows.slots)


def kronecker(x: torch.Tensor, y: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, scale: torch.Tensor,
              rows: RowSlots | torch.Tensor) -> torch.Tensor:
    """``y + scale[s] * x @ (w1[s] ⊗ w2[s]).T`` per row (LoKr); the PyTorch reference on every device (no Triton
    kernel yet: it is two batched matmuls with small factors)."""
    return reference.kronecker(x, y, w1, w2, scale, _rows(rows).slots)


def bottleneck(h: torch.Tensor, y: torch.Tensor, down_w: torch.Tensor, down_b: torch.Tensor, up_w: torch.Tensor,
               up_b: torch.Tensor, scale: torch.Tensor, rows: RowSlots | torch.Tensor, activation: str) -> torch.Tensor:
    """``y + scale[s] * up(act(down(h)))`` per row, fused; see :func:`splice.kernels.reference.bottleneck`."""
    rows = _rows(rows)
    args = (h, y, down_w, down_b, up_w, up_b, scale)
    if backend_for(*args[:6]) == "triton":
        return _run("triton_bottleneck", "bottleneck", reference.bottleneck, (*args, rows, activation))
    return reference.bottleneck(*args, rows.slots, activation)


def scale_rows(y: torch.Tensor, vectors: torch.Tensor, rows: RowSlots | torch.Tensor) -> torch.Tensor:
    """``y * vectors[s]`` per row (IA³)."""
    rows = _rows(rows)
    if backend_for(y, vectors) == "triton":
        return _run("triton_rows", "scale_rows", reference.scale_rows, (y, vectors, rows.slots))
    return reference.scale_rows(y, vectors, rows.slots)


def shift_rows(y: torch.Tensor, vectors: torch.Tensor, rows: RowSlots | torch.Tensor) -> torch.Tensor:
    """``y + vectors[s]`` per row (a bias delta)."""
    rows = _rows(rows)
    if backend_for(y, vectors) == "triton":
        return _run("triton_rows", "shift_rows", reference.shift_rows, (y, vectors, rows.slots))
    return reference.shift_rows(y, vectors, rows.slots)


def _rows(rows: RowSlots | torch.Tensor) -> RowSlots:
    return rows if isinstance(rows, RowSlots) else RowSlots(rows)


def _triton(module: str) -> ModuleType | None:
    """The Triton kernels module (imported on first use), or None where Triton is not installed."""
    if module not in _modules:
        try:
            _modules[module] = importlib.import_module(f"{__name__}.{module}")
        except ImportError:
            _modules[module] = None
    return _modules[module]


def _run(module: str, op: str, fallback, args: tuple) -> torch.Tensor:
    """The Triton op, or — if it cannot run here — a warning, the reference, and the reference from now on."""
    kernels = _triton(module)
    try:
        return getattr(kernels, op)(*args)
    except torch.OutOfMemoryError:
        raise
    except Exception as error:  # a compiler or driver refusal: any type, from inside Triton
        _state["broken"] = True
        warnings.warn(f"splice: the Triton kernel for {op} failed ({type(error).__name__}: {error}); using the "
                      "PyTorch reference from now on.", RuntimeWarning, stacklevel=3)
        plain = [a.slots if isinstance(a, RowSlots) else a for a in args]
        return fallback(*plain)
