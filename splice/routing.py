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

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .kernels.bank import Bank, Banks, layout, stacked
from .kernels.segments import RowSlots


class Soft(NamedTuple):
    """Soft positions a setup adds to a call (prompt embeddings, prefix keys and values), for a batch.

    ``values`` are ``[B, S, ...]`` each; ``visible [B, S]`` says which slots a row
    uses. Rows with fewer slots than ``S`` have theirs right-aligned (next to the
    real tokens) and the rest masked out, so padding never moves a row's positions.
    """

    values: tuple[torch.Tensor, ...]
    visible: torch.Tensor

    @property
    def length(self) -> int:
        return self.visible.shape[1]


def join_soft(parts: list[Soft]) -> Soft | None:
    """Several setups' soft positions one after another (a Stack of prefixes: both prefixes)."""
    if len(parts) <= 1:
        return parts[0] if parts else None
    values = tuple(torch.cat(group, 1) for group in zip(*(p.values for p in parts)))
    return Soft(values, torch.cat([p.visible for p in parts], 1))


class Program:
    """What a setup does at one site: ``pre`` changes the input, ``post`` the output (identity here),
    ``soft`` gives the soft positions it adds to the call (prompt and prefix tuning; none here)."""

    reads_input = False
    has_pre = False
    has_post = False
    has_soft = False

    def pre(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def post(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return y

    def soft(self, rows: int) -> Soft | None:
        return None


class Leaf(Program):
    """One adapter's delta at this site."""

    def __init__(self, delta: nn.Module):
        self.delta = delta
        self.has_pre = delta.stage == "input"
        self.has_post = delta.stage == "output"
        self.has_soft = delta.stage == "soft"
        self.reads_input = self.has_post and delta.reads_input

    def pre(self, x):
        return self.delta(x) if self.has_pre else x

    def post(self, x, y):
        return self.delta(x, y) if self.has_post else y

    def soft(self, rows):
        if not self.has_soft:
            return None
        values = self.delta.soft()  # each [S, ...]: the same for every row
        visible = torch.ones(rows, values[0].shape[0], dtype=torch.bool, device=values[0].device)
        return Soft(tuple(v.unsqueeze(0).expand(rows, *v.shape) for v in values), visible)


def first_input(args: tuple, kwargs: dict) -> torch.Tensor:
    """The hidden states a module was called with, positionally or as ``hidden_states=``."""
    if args:
        return args[0]
    if "hidden_states" in kwargs:
        return kwargs["hidden_states"]
    return next(v for v in kwargs.values() if isinstance(v, torch.Tensor))


def as_program(delta) -> Program:
    """The program of one adapter's delta at a site: a Leaf, or what a composite delta compiles to (Union)."""
    return delta.program() if hasattr(delta, "program") else Leaf(delta)


class RowIndex:
    """Which setup each row takes: ``index[i]`` in ``0..S-1``, or ``-1`` for the base alone.

    Sites see ``N`` leading rows; ``N`` may be a multiple of the batch (OPT's FFN
    flattens tokens, beam search repeats rows), so the index is repeated to fit.
    ``capacity`` bounds the setup positions (``S``) the plans over this index use.
    """

    def __init__(self, index: torch.Tensor, capacity: int):
        self.capacity = capacity
        self.set(index)

    def set(self, index: torch.Tensor) -> None:
        """Point at a new batch (a cached per-row plan is reused with a fresh index).

        A batch of the same size is copied into the same tensor, so a forward captured
        in a CUDA graph reads the new routing when replayed.
        """
        index = index.long()
        current = getattr(self, "index", None)
        if current is not None and current.shape == index.shape and current.device == index.device:
            current.copy_(index)
        else:
            with torch.inference_mode(False):  # an ordinary tensor: later batches copy into it in any mode
                self.index = index.clone()
        self._fitted: dict[tuple, torch.Tensor] = {}
        self._memos: dict[tuple, dict] = {}

    def memo(self, key: tuple) -> dict:
        """A store for this batch only (kernels keep the rows they grouped by adapter there), one per ``key``."""
        store = self._memos.get(key)
        if store is None:
            store = self._memos[key] = {}
        return store

    @classmethod
    def from_sizes(cls, sizes: tuple[int, ...]) -> "RowIndex":
        return cls(torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes)), len(sizes))

    @property
    def batch_size(self) -> int:
        return self.index.numel()

    def fit(self, rows: int, device: torch.device) -> torch.Tensor:
        key = (rows, device)
        if key not in self._fitted:
            batch = self.batch_size
            if rows % batch:
                from .errors import AdapterError

                raise AdapterError(
                    f"Per-row routing was set up for {batch} rows but a site sees {rows}; pass one adapter "
                    "name per row of the batch."
                )
            index = self.index if rows == batch else self.index.repeat_interleave(rows // batch)
            self._fitted[key] = index.to(device)
        return self._fitted[key]


class Routed(Program):
    """Row ``i`` goes through ``children[index[i]]`` (``None``: the base alone)."""

    def __init__(self, children: list[Program | None], rows: RowIndex, banks: Banks | None = None):
        self.children: list[Program | None] = []
        self.rows = rows
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
        """Take setup ``position``'s program out (its adapter left the resident plan)."""
        if position >= len(self.children) or self.children[position] is None:
            return
        self.children[position] = None
        for stage in self._stages.values():
            stage.remove(position)
        present = [c for c in self.children if c is not None]
        self.has_pre = any(c.has_pre for c in present)
        self.has_post = any(c.has_post for c in present)
        self.has_soft = any(c.has_soft for c in present)
        self.reads_input = any(c.reads_input for c in present)

    def place(self) -> None:
        """Put every vectorised group's adapters in their banks now, rather than at the first forward."""
        for stage in self._stages.values():
            for group in stage.groups.values():
                group.place()

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
            if hasattr(type(child.delta), "bank_sources"):
                key = layout(child.delta)
                if key not in self.groups:
                    self.groups[key] = LeafGroup(self.banks)
                self.groups[key].add(position, child.delta)
                return
        if child.has_pre if self.name == "input" else child.has_post:
            self.others.append(position)

    def remove(self, position: int) -> None:
        for key, group in list(self.groups.items()):
            if group.remove(position) and not group.deltas:
                del self.groups[key]
        if position in self.others:
            self.others.remove(position)


class LeafGroup:
    """Leaves of one delta layout that run in one vectorised call.

    A setup's position maps to its slot in the group's table; setups outside the
    group map to -1, the identity slot. The lookups are built once (per device, and
    again when members join), not on every forward.
    """

    def __init__(self, banks: Banks | None):
        self.deltas: list[nn.Module] = []
        self.positions: list[int] = []
        self.first: nn.Module | None = None  # holds the options every member shares (activation, dropout, norm)
        self.cls: type | None = None
        self._key: tuple | None = None
        self._banks = banks
        self._bank: Bank | None = None
        self._bank_slots: list[int] = []
        self._lookups: dict[tuple[str, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}

    def add(self, position: int, delta: nn.Module) -> None:
        if self.first is None:
            self.first, self.cls = delta, type(delta)
        self.deltas.append(delta)
        self.positions.append(position)
        if self._bank is not None:  # already in a bank: the newcomer takes one slot of it
            self._bank_slots += self._banks.place([delta])[1]
        self._key = None
        self._lookups.clear()

    def remove(self, position: int) -> bool:
        """Drop the member at ``position`` (its bank slot is freed by :meth:`Banks.evict`); False if none."""
        if position not in self.positions:
            return False
        member = self.positions.index(position)
        for members in (self.deltas, self.positions, self._bank_slots):
            if len(members) > member:
                del members[member]
        self.first = self.deltas[0] if self.deltas else None
        self._key = None
        self._lookups.clear()
        return True

    @property
    def key(self) -> tuple:
        """The members' positions: sites whose groups share them share per-batch work (segment plans)."""
        if self._key is None:
            self._key = tuple(self.positions)
        return self._key

    def rows(self, index: torch.Tensor, row_index: RowIndex) -> tuple[dict[str, torch.Tensor], RowSlots]:
        """The group's table (one slot per adapter, then the identity) and which slot each row reads.

        ``index`` holds each row's setup position (-1: the base alone). With gradients off the
        table is the adapters' bank; with gradients on, their own tensors stacked.
        """
        if self._banks is None or torch.is_grad_enabled():
            table, kind = stacked(self.cls, self.deltas), "stacked"
        else:
            self.place()
            table, kind = self._bank.tensors, "bank"
        size = row_index.capacity + 1  # the extra last entry serves index -1
        lookup, members = self._lookup(kind, index.device, size)
        local = self._lookup("local", index.device, size)[0]
        memo = row_index.memo((self.key, index.shape[0]))
        return table, RowSlots(lookup[index], members, lambda: local[index], memo)

    def place(self) -> None:
        """Put the group's deltas in their bank (once: a plan is rebuilt when its banks are cleared)."""
        if self._bank is None and self._banks is not None:
            self._bank, self._bank_slots = self._banks.place(self.deltas)

    def _lookup(self, kind: str, device: torch.device, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Position -> slot (``local``: -> member, ``len(deltas)`` for none), and the members' slots."""
        cached = self._lookups.get((kind, device))
        if cached is None or cached[0].shape[0] < size:
            count = len(self.deltas)
            slots = self._bank_slots if kind == "bank" else list(range(count))
            lookup = torch.full((max(size, max(self.positions) + 2),), count if kind == "local" else -1)
            lookup[self.positions] = torch.arange(count) if kind == "local" else torch.tensor(slots)
            cached = self._lookups[(kind, device)] = (lookup.to(device), torch.tensor(slots, device=device))
        return cached
