"""Which table slot each row reads, and the rows grouped by adapter for segment kernels.

Segment kernels sort the rows of a batch by adapter and cut the sorted tokens
into tiles that each belong to one adapter, so a tile's adapter weights are
loaded once for up to ``block`` tokens. The plan is computed with tensor ops
on the device and a grid size known on the host (an upper bound; surplus
programs exit at once), so nothing waits for the device and a CUDA graph can
capture it. Every site of a routed batch shares one plan per forward.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch


class Segments(NamedTuple):
    """Rows sorted by adapter (``member``: a group-local adapter id, ``G`` = none) and cut into tiles."""

    order: torch.Tensor  # [N] row ids, sorted by member (rows of no member last)
    counts: torch.Tensor  # [G] rows per member
    row_start: torch.Tensor  # [G] where each member's rows start in ``order``
    tile_member: torch.Tensor  # [tiles] the member of each tile (G: surplus program, no work)
    tile_first: torch.Tensor  # [tiles] the tile's index within its member's tokens
    tiles: int  # the grid size


def plan_segments(local: torch.Tensor, members: int, tokens_per_row: int, block: int) -> Segments:
    """Tiles of ``block`` tokens over rows sorted by ``local`` (each row's member in ``0..members-1``,
    or ``members``: none). Rows have ``tokens_per_row`` contiguous tokens each."""
    rows = local.shape[0]
    order = torch.argsort(local, stable=True)
    counts = torch.zeros(members + 1, dtype=torch.long, device=local.device)
    counts = counts.index_add_(0, local, torch.ones_like(local))[:members]
    row_start = torch.cumsum(counts, 0) - counts
    per_member = (counts * tokens_per_row + block - 1) // block
    ends = torch.cumsum(per_member, 0)
    # Each member's last tile may be partial: at most one extra tile per member present.
    tiles = -(-rows * tokens_per_row // block) + min(rows, members)
    ids = torch.arange(tiles, device=local.device)
    tile_member = torch.searchsorted(ends, ids, right=True)
    starts = torch.cat([ends - per_member, ends.new_zeros(1)])  # the extra entry serves surplus programs
    return Segments(order, counts, row_start, tile_member, ids - starts[tile_member], tiles)


class RowSlots:
    """Per-row routing for one group at one site.

    ``slots [N]``: the table slot each row reads (-1: none) — all the reference and
    gather kernels need. ``members [G]``: the table slot of each member id (-1: that
    member has no adapter here); ``local()`` gives each row's member id (``G``: none).
    Routing uses the batch's setup positions as member ids, so every group of a batch
    sorts its rows the same way: segment plans are computed on first use and kept in
    ``memo``, which the caller shares between the sites of one batch (only with ``local``:
    without it, rows are sorted by this group's own slots).
    """

    def __init__(self, slots: torch.Tensor, members: torch.Tensor | None = None,
                 local: Callable[[], torch.Tensor] | None = None, memo: dict | None = None):
        self.slots = slots
        self._members = members
        self._local = local
        self._memo = {} if memo is None else memo

    def members(self, capacity: int) -> torch.Tensor:
        """The table slots rows can name (every slot of a ``capacity``-slot table, unless the group said)."""
        if self._members is None:
            self._members = torch.arange(capacity, device=self.slots.device)
        return self._members

    def segments(self, capacity: int, tokens_per_row: int, block: int) -> Segments:
        members = self.members(capacity)
        key = (self.slots.shape[0], members.shape[0], tokens_per_row, block)
        plan = self._memo.get(key)
        if plan is None:
            local = self._local() if self._local is not None else torch.where(self.slots < 0, capacity, self.slots)
            plan = self._memo[key] = plan_segments(local, members.shape[0], tokens_per_row, block)
        return plan
