"""Plain PyTorch per-row adapter ops: the definition every Triton kernel is tested against.

Every op takes ``slots [N]``, one per leading row of the activations (``x`` /
``y`` are ``[N, ..., features]``), and tables with one slot per adapter along
dimension 0 whose *last* slot is the identity. A row whose slot is ``-1`` reads
that last slot, which leaves it unchanged; the kernels skip such rows instead.
Rows gather their slots with ``index_select`` (several times faster than
advanced indexing on CPU). The ops never synchronise with the host, so a
forward that runs them can be captured in a CUDA graph.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "silu": F.silu, "tanh": torch.tanh}


def lora(x: torch.Tensor, y: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor,
         slots: torch.Tensor) -> torch.Tensor:
    """``y + scale[s] * (x @ a[s].T) @ b[s].T`` for each row, ``s = slots[row]``.

    ``a [C, r, in]``, ``b [C, out, r]``, ``scale [C]``; computed in the tables' dtype.
    """
    take = gather_index(slots, a)
    h = x.to(a.dtype).reshape(x.shape[0], -1, a.shape[-1])
    h = torch.bmm(h, a.index_select(0, take).transpose(1, 2)) * scale.index_select(0, take)[:, None, None]
    b = b.index_select(0, take).transpose(1, 2)  # scaled at rank r (above): cheap
    if y.dtype != a.dtype:
        return y + torch.bmm(h, b).reshape(y.shape).to(y.dtype)
    return torch.baddbmm(y.reshape(h.shape[0], -1, y.shape[-1]), h, b).view(y.shape)


def kronecker(x: torch.Tensor, y: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, scale: torch.Tensor,
              slots: torch.Tensor) -> torch.Tensor:
    """``y + scale[s] * x @ (w1[s] ⊗ w2[s]).T`` for each row, without building the Kronecker product (LoKr).

    ``w1 [C, a, c]``, ``w2 [C, b, d]`` (outputs ``a·b``, inputs ``c·d``), ``scale [C]``: with ``x`` seen as a
    ``[c, d]`` matrix ``X`` per token, ``(w1 ⊗ w2) x`` is ``w1 X w2ᵀ`` flattened.
    """
    take = gather_index(slots, w1)
    (c, d), rows = (w1.shape[-1], w2.shape[-1]), x.shape[0]
    h = x.to(w1.dtype).reshape(rows, -1, c, d)
    h = torch.matmul(torch.matmul(w1.index_select(0, take)[:, None], h), w2.index_select(0, take)[:, None].transpose(
        -1, -2))
    h = h.reshape(rows, -1, w1.shape[1] * w2.shape[1]) * scale.index_select(0, take)[:, None, None]
    return y + h.reshape(y.shape).to(y.dtype)


def bottleneck(h: torch.Tensor, y: torch.Tensor, down_w: torch.Tensor, down_b: torch.Tensor, up_w: torch.Tensor,
               up_b: torch.Tensor, scale: torch.Tensor, slots: torch.Tensor, activation: str) -> torch.Tensor:
    """``y + scale[s] * (act(h @ down_w[s].T + down_b[s]) @ up_w[s].T + up_b[s])`` for each row.

    ``h`` is what the adapter reads (``y`` itself for a sequential adapter); ``down_w [C, r, d]``,
    ``up_w [C, d, r]``, biases ``[C, r]`` / ``[C, d]``, ``scale [C]``.
    """
    take = gather_index(slots, down_w)
    hidden = up(down(h, down_w, down_b, take), up_w, up_b, take, activation)
    return y + (scale.index_select(0, take)[:, None, None] * hidden).reshape(y.shape).to(y.dtype)


def down(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """``[N, T, r]``: each row's down-projection (before the activation), in the tables' dtype."""
    take = gather_index(slots, weight)
    h = h.to(weight.dtype).reshape(h.shape[0], -1, weight.shape[-1])
    return torch.baddbmm(bias.index_select(0, take)[:, None, :], h, weight.index_select(0, take).transpose(1, 2))


def up(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, slots: torch.Tensor,
       activation: str | None = None) -> torch.Tensor:
    """``[N, T, d]``: each row's up-projection of ``h [N, T, r]`` (after ``activation``, if named)."""
    if activation is not None:
        h = ACTIVATIONS[activation](h)
    take = gather_index(slots, weight)
    return torch.baddbmm(bias.index_select(0, take)[:, None, :], h, weight.index_select(0, take).transpose(1, 2))


def scale_rows(y: torch.Tensor, vectors: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """``y * vectors[s]`` for each row (IA³); ``vectors [C, features]``, identity slot all ones."""
    return y * _per_row(vectors.index_select(0, gather_index(slots, vectors)), y)


def shift_rows(y: torch.Tensor, vectors: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """``y + vectors[s]`` for each row (a bias delta); ``vectors [C, features]``, identity slot all zeros."""
    return y + _per_row(vectors.index_select(0, gather_index(slots, vectors)), y)


def gather_index(slots: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """The slots to gather: -1 (no adapter) becomes the table's last slot, the identity (no-op if none is -1)."""
    return slots.remainder(table.shape[0])


def _per_row(vectors: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``[N, F]`` per-row vectors shaped to broadcast over ``like`` (``[N, ..., F]``), in its dtype."""
    return vectors.reshape(vectors.shape[0], *([1] * (like.dim() - 2)), vectors.shape[-1]).to(like.dtype)
