"""Per-row routing: each row of a batch goes through its own setup, in one forward.

``model(**batch, adapter_names=["sentiment", "nli", "__base__", ...])`` compiles, per
site, a :class:`Routed` program over the setups of the batch and a
:class:`RowIndex` saying which row takes which. Rows whose setups are single
adapters of one layout (method, options, tensor shapes) run *vectorised*, with
no loop over rows: each row reads its adapter's slot of a table, and the
delta class computes every row at once in ``routed(first, table, rows, x, y)``
(through :mod:`splice.kernels`, which picks a Triton kernel or the PyTorch
reference). With gradients off the table is a bank (:mod:`splice.kernels.bank`):
adapters sit in preallocated slots and nothing is copied per forward; with
gradients on it is the adapters' own tensors stacked, so autograd reaches them.
Anything else (fusions, stacks) runs once per distinct setup on its rows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import AdapterError
from ..hooks.programs import Leaf, Program, Soft
from ..kernels.bank import Bank, Banks, layout, mark_static, stacked
from ..kernels.segments import RowSlots


class RowIndex:
    """Which setup each row takes: ``index[i]`` in ``0..S-1``, or ``-1`` for the base alone.

    Sites see ``N`` leading rows; ``N`` may be a multiple of the batch (OPT's FFN
    flattens tokens, beam search repeats rows), so the index is repeated to fit.
    ``capacity`` bounds the setup positions (``S``) the plans over this index use.

    Each batch size has one index tensor that later batches of that size are copied
    into, so a forward captured in a CUDA graph (or compiled) over it reads the routing
    of whatever batch was set last; ``static`` marks new ones so for ``torch.compile``.
    """

    def __init__(self, index: torch.Tensor, capacity: int):
        self.capacity = capacity
        self.static = False
        self._buffers: dict[tuple, torch.Tensor] = {}
        self.set(index)

    def set(self, index: torch.Tensor, device: torch.device | None = None) -> None:
        """Point at a new batch (on ``device``, default the index's own), reusing its size's index tensor."""
        device = index.device if device is None else torch.device(device)
        key = (index.shape[0], device)
        buffer = self._buffers.get(key)
        if buffer is None:
            with torch.inference_mode(False):  # an ordinary tensor: later batches copy into it in any mode
                buffer = self._buffers[key] = torch.empty(index.shape[0], dtype=torch.long, device=device)
            if self.static:
                mark_static(buffer)
        buffer.copy_(index)
        self.index = buffer
        self.plans: dict = {}  # this batch's segment plans, shared by its sites (see RowSlots)
        self._fitted: dict[tuple, torch.Tensor] = {}

    @classmethod
    def from_sizes(cls, sizes: tuple[int, ...]) -> "RowIndex":
        return cls(torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes)), len(sizes))

    @property
    def batch_size(self) -> int:
        return self.index.numel()

    def buffers(self) -> list[torch.Tensor]:
        """Every index tensor (one per batch size and device)."""
        return list(self._buffers.values())

    def fit(self, rows: int, device: torch.device) -> torch.Tensor:
        """The index for a site that sees ``rows`` leading rows on ``device``."""
        if rows == self.index.shape[0] and device == self.index.device:
            return self.index  # the common case: no per-batch state to build
        key = (rows, device)
        if key not in self._fitted:
            batch = self.batch_size
            if rows % batch:
                raise AdapterError(
                    f"Per-row routing was set up for {batch} rows but a site sees {rows}; pass one adapter "
                    "name per row of the batch."
                )
            index = self.index if rows == batch else self.index.repeat_interleave(rows // batch)
            self._fitted[key] = index.to(device)
        return self._fitted[key]


class Routed(Program):
    """Row ``i`` goes through ``children[index[i]]`` (``None``: the base alone).

    Single adapters of a bankable method run as leaf groups, from the row index alone: no host
    synchronisation, so the resident plan is what CUDA graphs capture. Other children (stacks,
    fusions) run on their own rows, found with ``(index == child).nonzero()``: one synchronisation
    per such child and site, paid only by batches that mix compositions.
    """

    def __init__(self, children: list[Program | None], rows: RowIndex, banks: Banks | None = None):
        self.children: list[Program | None] = []
        self.rows = rows
        self._banks = banks
        self._stages = {stage: _Stage(stage, banks) for stage in ("input", "output")}
        for position, child in enumerate(children):
            self.add(position, child)

    def add(self, position: int, child: Program | None) -> None:
        """Give setup ``position`` its program here (the resident plan grows one adapter at a time)."""
        self.children.extend([None] * (position + 1 - len(self.children)))
        self.children[position] = child
        if child is None:
            return
        self.has_pre = self.has_pre or child.has_pre
        self.has_post = self.has_post or child.has_post
        self.has_soft = self.has_soft or child.has_soft
        self.reads_input = self.reads_input or child.reads_input
        for stage in self._stages.values():
            stage.add(position, child)

    def remove(self, position: int) -> None:
        """Take setup ``position``'s program out (its adapter left the resident plan).

        While the banks are frozen, captured graphs run this site's groups: they stay, and so does
        what the site does (rows of a position without an adapter read the identity slot).
        """
        if position >= len(self.children) or self.children[position] is None:
            return
        self.children[position] = None
        for stage in self._stages.values():
            stage.remove(position)
        if not (self._banks is not None and self._banks.frozen):
            self.settle()

    def settle(self) -> bool:
        """Drop empty groups and recompute what the site does from the children left; False if none is."""
        present = [c for c in self.children if c is not None]
        for stage in self._stages.values():
            stage.settle()
        self.has_pre = any(c.has_pre for c in present)
        self.has_post = any(c.has_post for c in present)
        self.has_soft = any(c.has_soft for c in present)
        self.reads_input = any(c.reads_input for c in present)
        return bool(present)

    def place(self) -> None:
        """Put every vectorised group's adapters in their banks now, rather than at the first forward."""
        for group in self.groups():
            group.place()

    def groups(self) -> list["LeafGroup"]:
        """Every vectorised group of this site (both stages)."""
        return [group for stage in self._stages.values() for group in stage.groups.values()]

    def group_for(self, delta: nn.Module) -> "LeafGroup | None":
        """The group a leaf of ``delta`` joins here; None if it would start a new one."""
        stage = self._stages.get(delta.stage)
        return stage.groups.get(layout(delta)) if stage is not None else None

    def pre(self, x):
        index = self.rows.fit(x.shape[0], x.device)
        return self._run(x, None, index, self._stages["input"])

    def post(self, x, y):
        index = self.rows.fit(y.shape[0], y.device)
        return self._run(x, y, index, self._stages["output"])

    def soft(self, rows):
        """Each row's own soft positions, right-aligned in ``S = max`` slots; other rows' slots masked."""
        parts = [c.soft(1) if c is not None and c.has_soft else None for c in self.children]
        present = [p for p in parts if p is not None]
        if not present:
            return None
        length, device = max(p.length for p in present), present[0].visible.device
        tables = []
        for i, first in enumerate(present[0].values):
            empty = first.new_zeros(length, *first.shape[2:])
            slots = [_right_align(p.values[i][0], length) if p is not None else empty for p in parts]
            tables.append(torch.stack(slots + [empty]))  # last: rows of no setup
        visible = torch.zeros(len(parts) + 1, length, dtype=torch.bool, device=device)
        for child, p in enumerate(parts):
            if p is not None:
                visible[child, length - p.length:] = True
        index = self.rows.fit(rows, device)
        return Soft(tuple(t[index] for t in tables), visible[index])

    def _run(self, x, y, index, stage: "_Stage"):
        inputs = stage.name == "input"
        target = x if inputs else y
        for group in stage.groups.values():
            table, rows = group.rows(index, self.rows)
            target = (group.cls.routed(group.first, table, rows, target) if inputs
                      else group.cls.routed(group.first, table, rows, x, target))
        for child in stage.others:  # composite setups: once per setup, on its rows only
            program = self.children[child]
            rows = (index == child).nonzero().squeeze(1)
            if rows.numel() == 0:
                continue
            if inputs:
                part = program.pre(target.index_select(0, rows))
            else:
                xs = x.index_select(0, rows) if program.reads_input else x
                part = program.post(xs, target.index_select(0, rows))
            target = target.index_copy(0, rows, part)
        return target


def _right_align(values: torch.Tensor, length: int) -> torch.Tensor:
    """``[s, ...]`` zero-padded in front to ``[length, ...]``."""
    pad = [0, 0] * (values.dim() - 1) + [length - values.shape[0], 0]
    return F.pad(values, pad)


class _Stage:
    """One stage's (input or output) vectorised leaf groups, by delta layout, and its other children."""

    def __init__(self, name: str, banks: Banks | None):
        self.name, self.banks = name, banks
        self.groups: dict[tuple, LeafGroup] = {}
        self.others: list[int] = []

    def add(self, position: int, child: Program) -> None:
        if isinstance(child, Leaf):
            if child.delta.stage != self.name:
                return
            if child.delta.banked:
                key = layout(child.delta)
                if key not in self.groups:
                    self.groups[key] = LeafGroup(self.banks)
                self.groups[key].add(position, child.delta)
                return
        if child.has_pre if self.name == "input" else child.has_post:
            self.others.append(position)

    def remove(self, position: int) -> None:
        for group in self.groups.values():
            group.remove(position)
        if position in self.others:
            self.others.remove(position)

    def settle(self) -> None:
        """Drop the groups left empty; the others keep their first remaining member's options."""
        for key, group in list(self.groups.items()):
            if group.deltas:
                group.first = group.deltas[0]
            else:
                del self.groups[key]


class LeafGroup:
    """Leaves of one delta layout that run in one vectorised call.

    A setup's position maps to its slot in the group's table; setups outside the
    group map to -1, the identity slot. The lookup is built once per device and
    rewritten in place when members join or leave, so a forward captured in a CUDA
    graph (or compiled) reads the new membership; it is rebuilt only when the row
    index's capacity grows.
    """

    def __init__(self, banks: Banks | None):
        self.deltas: list[nn.Module] = []
        self.positions: list[int] = []
        self.first: nn.Module | None = None  # holds the options every member shares (activation, dropout, norm)
        self.cls: type | None = None
        self._banks = banks
        self.bank: Bank | None = None  # where the members sit with gradients off (None until placed)
        self._bank_slots: list[int] = []
        self._lookups: dict[tuple[str, torch.device], torch.Tensor] = {}

    def add(self, position: int, delta: nn.Module) -> None:
        if self.first is None:
            self.first, self.cls = delta, type(delta)
        self.deltas.append(delta)
        self.positions.append(position)
        if self.bank is not None:  # already in a bank: the newcomer takes one slot of it
            self._bank_slots += self._banks.place([delta])[1]
        self._refill()

    def remove(self, position: int) -> bool:
        """Drop the member at ``position`` (its bank slot is freed by :meth:`Banks.evict`); False if none."""
        if position not in self.positions:
            return False
        member = self.positions.index(position)
        for members in (self.deltas, self.positions, self._bank_slots):
            if len(members) > member:
                del members[member]
        self._refill()  # ``first`` stays (a captured forward was traced with it) until the stage settles
        return True

    def rows(self, index: torch.Tensor, row_index: RowIndex) -> tuple[dict[str, torch.Tensor], RowSlots]:
        """The group's table (one slot per adapter, then the identity) and which slot each row reads.

        ``index`` holds each row's setup position (-1: the base alone). With gradients off the
        table is the adapters' bank; with gradients on, their own tensors stacked. Member ids are
        the positions themselves, so every group of a batch shares its segment plans.
        """
        if self._banks is None or torch.is_grad_enabled():
            table, kind = stacked(self.cls, self.deltas), "stacked"
        else:
            self.place()
            table, kind = self.bank.tensors, "bank"
        capacity = row_index.capacity
        lookup = self.lookup(kind, index.device, capacity)
        return table, RowSlots(lookup[index], lookup[:capacity], lambda: index.remainder(capacity + 1),
                               row_index.plans)

    def place(self) -> None:
        """Put the group's deltas in their bank (once: a plan is rebuilt when its banks are cleared)."""
        if self.bank is None and self._banks is not None:
            self.bank, self._bank_slots = self._banks.place(self.deltas)
            self._refill()

    def lookup(self, kind: str, device: torch.device, capacity: int) -> torch.Tensor:
        """Position -> slot of the ``kind`` table (-1: none), ``capacity + 1`` entries (the last serves index -1)."""
        table = self._lookups.get((kind, device))
        if table is None or table.shape[0] != capacity + 1:
            with torch.inference_mode(False):  # written again in place, in any mode
                table = self._lookups[(kind, device)] = torch.empty(capacity + 1, dtype=torch.long, device=device)
            if self._banks is not None and self._banks.static:
                mark_static(table)
            self._fill(kind, table)
        return table

    def _refill(self) -> None:
        for (kind, _), table in self._lookups.items():
            self._fill(kind, table)

    def _fill(self, kind: str, table: torch.Tensor) -> None:
        values = torch.full(table.shape, -1, dtype=torch.long)
        slots = self._bank_slots if kind == "bank" else range(len(self.deltas))
        values[torch.tensor(self.positions, dtype=torch.long)] = torch.tensor(list(slots), dtype=torch.long)
        table.copy_(values)
