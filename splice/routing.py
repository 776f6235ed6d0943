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

from collections import defaultdict
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
    """

    def __init__(self, index: torch.Tensor):
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
        return cls(torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes)))

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
            self._fitted[key] = self.index.repeat_interleave(rows // batch).to(device)
        return self._fitted[key]


class Routed(Program):
    """Row ``i`` goes through ``children[index[i]]`` (``None``: the base alone)."""

    def __init__(self, children: list[Program | None], rows: RowIndex, banks: Banks | None = None):
        self.children, self.rows = children, rows
        present = [c for c in children if c is not None]
        self.has_pre = any(c.has_pre for c in present)
        self.has_post = any(c.has_post for c in present)
        self.has_soft = any(c.has_soft for c in present)
        self.reads_input = any(c.reads_input for c in present)
        self._pre_groups = _group_leaves(children, "input", banks)
        self._post_groups = _group_leaves(children, "output", banks)

    def place(self) -> None:
        """Put every vectorised group's adapters in their banks now, rather than at the first forward."""
        for group in self._pre_groups[0] + self._post_groups[0]:
            group.place()

    def pre(self, x):
        index = self.rows.fit(x.shape[0], x.device)
        return self._run(x, None, index, self._pre_groups, stage="input")

    def post(self, x, y):
        index = self.rows.fit(y.shape[0], y.device)
        return self._run(x, y, index, self._post_groups, stage="output")

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

    def _run(self, x, y, index, groups, stage):
        vectorised, others = groups
        target = x if stage == "input" else y
        for group in vectorised:
            table, rows = group.rows(index, self.rows.memo((group.positions, index.shape[0])))
            target = (group.cls.routed(group.first, table, rows, target) if stage == "input"
                      else group.cls.routed(group.first, table, rows, x, target))
        for child in others:  # composite setups: once per setup, on its rows only
            program = self.children[child]
            rows = (index == child).nonzero().squeeze(1)
            if rows.numel() == 0:
                continue
            if stage == "input":
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


class LeafGroup:
    """Leaves of one delta layout that run in one vectorised call.

    A setup's position in the batch's setups maps to its slot in the group's
    table; setups outside the group map to -1, the identity slot. The lookups
    are built once per plan (and copied once per device), not on every forward.
    """

    def __init__(self, members: list[tuple[int, nn.Module]], setups: int, banks: Banks | None):
        self.deltas = [delta for _, delta in members]
        self.first = self.deltas[0]  # holds the options every member shares (activation, dropout, norm)
        self.cls = type(self.first)
        self.positions = tuple(position for position, _ in members)
        self._setups = setups
        self._banks = banks
        self._bank: Bank | None = None
        self._bank_slots: list[int] = []
        self._lookups: dict[tuple[str, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}

    def rows(self, index: torch.Tensor, memo: dict) -> tuple[dict[str, torch.Tensor], RowSlots]:
        """The group's table (one slot per adapter, then the identity) and which slot each row reads.

        ``index`` holds each row's setup position (-1: the base alone). With gradients off the
        table is the adapters' bank; with gradients on, their own tensors stacked.
        """
        if self._banks is None or torch.is_grad_enabled():
            table, kind = stacked(self.cls, self.deltas), "stacked"
        else:
            self.place()
            table, kind = self._bank.tensors, "bank"
        lookup, members = self._lookup(kind, index.device)
        local = self._lookup("local", index.device)[0]
        return table, RowSlots(lookup[index], members, lambda: local[index], memo)

    def place(self) -> None:
        """Put the group's deltas in their bank (once per plan: plans are rebuilt when adapters or banks change)."""
        if self._bank is None and self._banks is not None:
            self._bank, self._bank_slots = self._banks.place(self.deltas)

    def _lookup(self, kind: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Position -> slot (the extra last entry serves index -1), and the members' slots."""
        cached = self._lookups.get((kind, device))
        if cached is None:
            count = len(self.deltas)
            slots = self._bank_slots if kind == "bank" else list(range(count))
            lookup = torch.full((self._setups + 1,), count if kind == "local" else -1, dtype=torch.long)
            lookup[list(self.positions)] = torch.arange(count) if kind == "local" else torch.tensor(slots)
            cached = self._lookups[(kind, device)] = (lookup.to(device), torch.tensor(slots, device=device))
        return cached


def _group_leaves(children: list[Program | None], stage: str, banks: Banks | None):
    """Split children into vectorisable leaf groups (by delta layout) and the rest, for one stage."""
    vectorised: dict[tuple, list[tuple[int, nn.Module]]] = defaultdict(list)
    others = []
    for position, child in enumerate(children):
        if child is None:
            continue
        if isinstance(child, Leaf):
            if child.delta.stage != stage:
                continue
            if hasattr(type(child.delta), "bank_sources"):
                vectorised[layout(child.delta)].append((position, child.delta))
                continue
        if (child.has_pre if stage == "input" else child.has_post):
            others.append(position)
    groups = [LeafGroup(members, len(children), banks) for members in vectorised.values()]
    return groups, others
