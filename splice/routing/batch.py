"""The batch a forward gets: its row count, and Parallel's copies of it (one per child, stacked along the rows)."""

from __future__ import annotations

import torch


def batch_size(args: tuple, kwargs: dict) -> int | None:
    """Rows in the batch: the leading size of the first tensor argument."""
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            return value.shape[0]
    return None


def replicate(args: tuple, kwargs: dict, batch: int | None, copies: int) -> tuple[tuple, dict]:
    """Every batch-sized tensor repeated ``copies`` times along the rows (for Parallel)."""
    def grow(value):
        if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == batch:
            return torch.cat([value] * copies)
        return value

    return tuple(grow(a) for a in args), {k: grow(v) for k, v in kwargs.items()}
