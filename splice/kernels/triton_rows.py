"""A Triton kernel for per-row vectors: ``y * v[s]`` (IA³) or ``y + v[s]`` (a bias delta).

One pass over ``y`` that reads each row's vector from the table, instead of
gathering an ``[N, features]`` copy first. Imported only where Triton is installed.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 256


@triton.jit
def _per_row(y_ptr, v_ptr, slot_ptr, out_ptr, F, T, stride_vs, MULTIPLY: tl.constexpr, BLOCK: tl.constexpr):
    m = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < F
    s = tl.load(slot_ptr + m // T)
    y = tl.load(y_ptr + m * F + cols, mask=mask)
    if s >= 0:  # in fp32, rounded once to y's dtype (as PyTorch computes a bf16 product)
        v = tl.load(v_ptr + s * stride_vs + cols, mask=mask).to(y.dtype).to(tl.float32)
        y = (y.to(tl.float32) * v if MULTIPLY else y.to(tl.float32) + v).to(y.dtype)
    tl.store(out_ptr + m * F + cols, y, mask=mask)


def _launch(y: torch.Tensor, vectors: torch.Tensor, slots: torch.Tensor, multiply: bool) -> torch.Tensor:
    features = y.shape[-1]
    ys = y.reshape(-1, features).contiguous()
    out = torch.empty_like(ys)
    tokens = ys.shape[0]
    if tokens:
        vectors = vectors.contiguous()
        _per_row[(tokens, triton.cdiv(features, BLOCK))](ys, vectors, slots.contiguous(), out, features,
                                                        tokens // y.shape[0], vectors.stride(0),
                                                        MULTIPLY=multiply, BLOCK=BLOCK)
    return out.reshape(y.shape)


def scale_rows(y: torch.Tensor, vectors: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """What :func:`splice.kernels.reference.scale_rows` computes."""
    return _launch(y, vectors, slots, multiply=True)


def shift_rows(y: torch.Tensor, vectors: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """What :func:`splice.kernels.reference.shift_rows` computes."""
    return _launch(y, vectors, slots, multiply=False)
