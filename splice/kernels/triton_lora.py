"""Triton kernels for per-row LoRA: shrink ``h = x a[s]^T``, then expand ``y + scale[s] * h b[s]^T``.

Two schedules. Decode-like batches (few tokens) use gather-GEMV: one program
per token reads its row's adapter straight from the table. Larger batches use
segment-GEMM: rows sorted by adapter, tiles of tokens that share one adapter,
so a tile's weights are loaded once for ``BLOCK_M`` tokens. Both accumulate in
fp32 and keep ``h`` in fp32 between the two steps.

Imported only where Triton is installed; :mod:`splice.kernels` falls back to
the PyTorch reference otherwise.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .segments import RowSlots

GEMV_MAX_TOKENS = 64  # up to this many tokens, one program per token beats tiles (launch-bound anyway)
BLOCK_M, BLOCK_N, BLOCK_K = 32, 64, 64


@triton.jit
def _shrink_gemv(x_ptr, a_ptr, slot_ptr, h_ptr, K, R, T, stride_as, stride_ar,
                 BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr):
    m = tl.program_id(0)
    s = tl.load(slot_ptr + m // T)
    if s >= 0:
        rr = tl.arange(0, BLOCK_R)
        acc = tl.zeros((BLOCK_R,), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            kk = k0 + tl.arange(0, BLOCK_K)
            xk = tl.load(x_ptr + m * K + kk, mask=kk < K, other=0.0).to(tl.float32)
            ak = tl.load(a_ptr + s * stride_as + rr[:, None] * stride_ar + kk[None, :],
                         mask=(rr[:, None] < R) & (kk[None, :] < K), other=0.0).to(tl.float32)
            acc += tl.sum(ak * xk[None, :], axis=1)
        tl.store(h_ptr + m * BLOCK_R + rr, acc)


@triton.jit
def _expand_gemv(h_ptr, b_ptr, scale_ptr, slot_ptr, out_ptr, N, R, T, stride_bs, stride_bn,
                 BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr):
    m = tl.program_id(0)
    s = tl.load(slot_ptr + m // T)
    if s >= 0:
        nn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        rr = tl.arange(0, BLOCK_R)
        h = tl.load(h_ptr + m * BLOCK_R + rr, mask=rr < R, other=0.0)
        b = tl.load(b_ptr + s * stride_bs + nn[:, None] * stride_bn + rr[None, :],
                    mask=(nn[:, None] < N) & (rr[None, :] < R), other=0.0).to(tl.float32)
        change = tl.sum(b * h[None, :], axis=1) * tl.load(scale_ptr + s).to(tl.float32)
        y = tl.load(out_ptr + m * N + nn, mask=nn < N)
        tl.store(out_ptr + m * N + nn, (y.to(tl.float32) + change).to(y.dtype), mask=nn < N)


@triton.jit
def _tile_rows(members_ptr, order_ptr, counts_ptr, row_start_ptr, tile_member_ptr, tile_first_ptr, T, G,
               BLOCK_M: tl.constexpr):
    """This program's tile: the table slot (-1: surplus program), its tokens, and which are real."""
    t = tl.program_id(0)
    g = tl.load(tile_member_ptr + t)
    live = g < G
    g = tl.where(live, g, 0)
    s = tl.where(live, tl.load(members_ptr + g), -1)
    off = tl.load(tile_first_ptr + t) * BLOCK_M + tl.arange(0, BLOCK_M)
    valid = off < tl.where(live, tl.load(counts_ptr + g), 0) * T
    row = tl.load(order_ptr + tl.load(row_start_ptr + g) + off // T, mask=valid, other=0)
    return s, row * T + off % T, valid


@triton.jit
def _shrink_segments(x_ptr, a_ptr, h_ptr, members_ptr, order_ptr, counts_ptr, row_start_ptr, tile_member_ptr,
                     tile_first_ptr, K, R, T, G, stride_as, stride_ar, BLOCK_M: tl.constexpr,
                     BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr, UPCAST: tl.constexpr):
    s, m, valid = _tile_rows(members_ptr, order_ptr, counts_ptr, row_start_ptr, tile_member_ptr, tile_first_ptr,
                             T, G, BLOCK_M)
    if s >= 0:
        rr = tl.arange(0, BLOCK_R)
        acc = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            kk = k0 + tl.arange(0, BLOCK_K)
            xt = tl.load(x_ptr + m[:, None] * K + kk[None, :], mask=valid[:, None] & (kk[None, :] < K), other=0.0)
            at = tl.load(a_ptr + s * stride_as + rr[None, :] * stride_ar + kk[:, None],
                         mask=(rr[None, :] < R) & (kk[:, None] < K), other=0.0)
            if UPCAST:
                acc += tl.dot(xt.to(tl.float32), at.to(tl.float32), input_precision="ieee")
            else:
                acc += tl.dot(xt.to(at.dtype), at)
        tl.store(h_ptr + m[:, None] * BLOCK_R + rr[None, :], acc, mask=valid[:, None])


@triton.jit
def _expand_segments(h_ptr, b_ptr, scale_ptr, out_ptr, members_ptr, order_ptr, counts_ptr, row_start_ptr,
                     tile_member_ptr, tile_first_ptr, N, R, T, G, stride_bs, stride_bn, BLOCK_M: tl.constexpr,
                     BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr, UPCAST: tl.constexpr):
    s, m, valid = _tile_rows(members_ptr, order_ptr, counts_ptr, row_start_ptr, tile_member_ptr, tile_first_ptr,
                             T, G, BLOCK_M)
    if s >= 0:
        rr = tl.arange(0, BLOCK_R)
        nn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        h = tl.load(h_ptr + m[:, None] * BLOCK_R + rr[None, :], mask=valid[:, None] & (rr[None, :] < R), other=0.0)
        bt = tl.load(b_ptr + s * stride_bs + nn[None, :] * stride_bn + rr[:, None],
                     mask=(nn[None, :] < N) & (rr[:, None] < R), other=0.0)
        if UPCAST:
            change = tl.dot(h, bt.to(tl.float32), input_precision="ieee")
        else:
            change = tl.dot(h.to(bt.dtype), bt)
        change = change * tl.load(scale_ptr + s).to(tl.float32)
        mask = valid[:, None] & (nn[None, :] < N)
        y = tl.load(out_ptr + m[:, None] * N + nn[None, :], mask=mask)
        tl.store(out_ptr + m[:, None] * N + nn[None, :], (y.to(tl.float32) + change).to(y.dtype), mask=mask)


def lora(x: torch.Tensor, y: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor,
         rows: RowSlots, schedule: str | None = None) -> torch.Tensor:
    """What :func:`splice.kernels.reference.lora` computes; ``schedule`` forces "gemv" or "segments"."""
    n, r, k = x.shape[0], a.shape[1], a.shape[2]
    out_features = b.shape[1]
    xs = x.reshape(-1, k).contiguous()
    out = y.reshape(-1, out_features).contiguous().clone()
    tokens = xs.shape[0]
    if tokens == 0:
        return out.reshape(y.shape)
    per_row = tokens // n
    block_r = max(16, triton.next_power_of_2(r))
    h = torch.empty(tokens, block_r, dtype=torch.float32, device=x.device)
    a, b = a.contiguous(), b.contiguous()
    if (schedule or ("gemv" if tokens <= GEMV_MAX_TOKENS else "segments")) == "gemv":
        slots = rows.slots.contiguous()
        _shrink_gemv[(tokens,)](xs, a, slots, h, k, r, per_row, a.stride(0), a.stride(1),
                                BLOCK_K=BLOCK_K, BLOCK_R=block_r)
        _expand_gemv[(tokens, triton.cdiv(out_features, BLOCK_N))](
            h, b, scale, slots, out, out_features, r, per_row, b.stride(0), b.stride(1),
            BLOCK_N=BLOCK_N, BLOCK_R=block_r)
        return out.reshape(y.shape)
    members = rows.members(a.shape[0] - 1)
    plan = rows.segments(a.shape[0] - 1, per_row, BLOCK_M)
    tiling = (members, plan.order, plan.counts, plan.row_start, plan.tile_member, plan.tile_first)
    upcast = a.dtype == torch.float32 or not x.is_cuda  # exact fp32; the interpreter's dot needs fp32 operands
    _shrink_segments[(plan.tiles,)](xs, a, h, *tiling, k, r, per_row, members.shape[0], a.stride(0), a.stride(1),
                                    BLOCK_M=BLOCK_M, BLOCK_K=BLOCK_K, BLOCK_R=block_r, UPCAST=upcast)
    _expand_segments[(plan.tiles, triton.cdiv(out_features, BLOCK_N))](
        h, b, scale, out, *tiling, out_features, r, per_row, members.shape[0], b.stride(0), b.stride(1),
        BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_R=block_r, UPCAST=upcast)
    return out.reshape(y.shape)
