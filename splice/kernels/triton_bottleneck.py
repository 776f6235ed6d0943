"""A Triton kernel for per-row bottleneck adapters: down -> activation -> up, fused.

One program takes a tile of tokens that share an adapter (rows sorted by
adapter, as for LoRA's segment schedule), computes the down-projection and its
activation in registers, and streams the up-projection out in column blocks,
adding ``scale * (...)`` to ``y``: the bottleneck activation never goes to memory.

Imported only where Triton is installed.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .segments import RowSlots
from .triton_lora import _tile_rows

ACTIVATION_CODES = {"relu": 0, "gelu": 1, "silu": 2, "tanh": 3}
BLOCK_M, BLOCK_N, BLOCK_K = 16, 64, 64


@triton.jit
def _activate(h, ACT: tl.constexpr):
    if ACT == 0:
        h = tl.maximum(h, 0.0)
    elif ACT == 1:  # exact (erf) GELU, as torch.nn.GELU()
        h = 0.5 * h * (1.0 + tl.erf(h * 0.7071067811865476))
    elif ACT == 2:
        h = h * tl.sigmoid(h)
    else:
        h = 2.0 * tl.sigmoid(2.0 * h) - 1.0
    return h


@triton.jit
def _bottleneck_segments(h_ptr, out_ptr, dw_ptr, db_ptr, uw_ptr, ub_ptr, scale_ptr, members_ptr, order_ptr,
                         counts_ptr, row_start_ptr, tile_member_ptr, tile_first_ptr, D, R, T, G, stride_dws,
                         stride_dwr, stride_dbs, stride_uws, stride_uwd, stride_ubs, ACT: tl.constexpr,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr,
                         UPCAST: tl.constexpr):
    s, m, valid = _tile_rows(members_ptr, order_ptr, counts_ptr, row_start_ptr, tile_member_ptr, tile_first_ptr,
                             T, G, BLOCK_M)
    if s >= 0:
        rr = tl.arange(0, BLOCK_R)
        hidden = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)
        for k0 in range(0, D, BLOCK_K):
            kk = k0 + tl.arange(0, BLOCK_K)
            xt = tl.load(h_ptr + m[:, None] * D + kk[None, :], mask=valid[:, None] & (kk[None, :] < D), other=0.0)
            wt = tl.load(dw_ptr + s * stride_dws + rr[None, :] * stride_dwr + kk[:, None],
                         mask=(rr[None, :] < R) & (kk[:, None] < D), other=0.0)
            if UPCAST:
                hidden += tl.dot(xt.to(tl.float32), wt.to(tl.float32), input_precision="ieee")
            else:
                hidden += tl.dot(xt.to(wt.dtype), wt)
        hidden += tl.load(db_ptr + s * stride_dbs + rr, mask=rr < R, other=0.0).to(tl.float32)[None, :]
        hidden = _activate(hidden, ACT)  # padded columns stay 0: act(0) = 0 for every activation offered
        scale = tl.load(scale_ptr + s).to(tl.float32)
        for n0 in range(0, D, BLOCK_N):
            nn = n0 + tl.arange(0, BLOCK_N)
            ut = tl.load(uw_ptr + s * stride_uws + nn[None, :] * stride_uwd + rr[:, None],
                         mask=(nn[None, :] < D) & (rr[:, None] < R), other=0.0)
            if UPCAST:
                change = tl.dot(hidden, ut.to(tl.float32), input_precision="ieee")
            else:
                change = tl.dot(hidden.to(ut.dtype), ut)
            change += tl.load(ub_ptr + s * stride_ubs + nn, mask=nn < D, other=0.0).to(tl.float32)[None, :]
            mask = valid[:, None] & (nn[None, :] < D)
            y = tl.load(out_ptr + m[:, None] * D + nn[None, :], mask=mask)
            tl.store(out_ptr + m[:, None] * D + nn[None, :], (y.to(tl.float32) + scale * change).to(y.dtype),
                     mask=mask)


def bottleneck(h: torch.Tensor, y: torch.Tensor, down_w: torch.Tensor, down_b: torch.Tensor, up_w: torch.Tensor,
               up_b: torch.Tensor, scale: torch.Tensor, rows: RowSlots, activation: str) -> torch.Tensor:
    """What :func:`splice.kernels.reference.bottleneck` computes."""
    n, r, d = h.shape[0], down_w.shape[1], down_w.shape[2]
    hs = h.reshape(-1, d).contiguous()
    out = y.reshape(-1, d).contiguous().clone()
    tokens = hs.shape[0]
    if tokens == 0:
        return out.reshape(y.shape)
    down_w, down_b, up_w, up_b = down_w.contiguous(), down_b.contiguous(), up_w.contiguous(), up_b.contiguous()
    members = rows.members(down_w.shape[0] - 1)
    plan = rows.segments(down_w.shape[0] - 1, tokens // n, BLOCK_M)
    _bottleneck_segments[(plan.tiles,)](
        hs, out, down_w, down_b, up_w, up_b, scale, members, plan.order, plan.counts, plan.row_start,
        plan.tile_member, plan.tile_first, d, r, tokens // n, members.shape[0], down_w.stride(0), down_w.stride(1),
        down_b.stride(0), up_w.stride(0), up_w.stride(1), up_b.stride(0), ACT=ACTIVATION_CODES[activation],
        BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K, BLOCK_R=max(16, triton.next_power_of_2(r)),
        UPCAST=down_w.dtype == torch.float32 or not h.is_cuda)
    return out.reshape(y.shape)
