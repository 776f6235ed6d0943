"""Adapter banks: the tensors of every adapter of one delta layout, in preallocated slots.

Per-row routing gathers each row's adapter from a bank by slot number, so a
batch that mixes adapters copies no adapter tensors per forward: an adapter's
tensors are written into its slot once, when a plan first routes to it, and
its slot is freed when it goes away. Adapters of different ranks or widths
have different layouts, so they live in different banks (no padding to the
largest rank).

A bank holds copies, which autograd does not see: routing reads banks only
with gradients off (inference) and stacks the adapters' own tensors otherwise.
Before each routed forward the slots of the adapters in the batch are checked
against their sources — an in-place change bumps ``Tensor._version``, a moved
or replaced tensor changes its data pointer — and rewritten when stale.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable, Mapping

import torch
from torch import nn

from ..errors import AdapterError

Sources = Mapping[str, "torch.Tensor | float"]  # a delta's bank tensors: parameters, or per-adapter constants


def bank_sources(delta: nn.Module) -> dict[str, torch.Tensor | float]:
    """What one delta puts in a bank slot (its class says: ``bank_sources``)."""
    return type(delta).bank_sources(delta)


def bank_inputs(delta: nn.Module) -> list[torch.Tensor]:
    """The tensors one delta's slot is computed from (its class says: ``bank_inputs``); a slot is stale when one
    of them changed since it was written."""
    return type(delta).bank_inputs(delta)


def layout(delta: nn.Module) -> tuple:
    """Deltas with equal layouts share a bank: same class, routing options and tensor shapes and dtypes."""
    cls = type(delta)
    options = cls.route_key(delta)
    shapes = tuple((name, tuple(v.shape), v.dtype) if isinstance(v, torch.Tensor) else (name,)
                   for name, v in bank_sources(delta).items())
    return cls, options, shapes


def stacked(cls: type, deltas: list[nn.Module]) -> dict[str, torch.Tensor]:
    """``{name: [S + 1, ...]}``: the deltas' own tensors stacked (differentiable), then the identity slot."""
    sources = [cls.bank_sources(d) for d in deltas]
    reference = _first_tensor(sources[0])
    identity = cls.bank_identity
    table = {}
    for name in sources[0]:
        values = [s[name] if isinstance(s[name], torch.Tensor) else reference.new_tensor(s[name]) for s in sources]
        table[name] = torch.stack(values + [values[0].new_full(values[0].shape, identity.get(name, 0.0))])
    return table


class Bank:
    """Preallocated slots for one layout: ``tensors[name]`` is ``[capacity + 1, ...]``; the last slot is the identity.

    Slot numbers never change while a delta holds one. When the bank is full it
    doubles (a rare copy) — unless its :class:`Banks` is frozen for captured graphs,
    which read the tensors where they are: :meth:`reserve` room before capturing.
    """

    def __init__(self, like: Sources, identity: Mapping[str, float], capacity: int):
        self.identity = dict(identity)
        reference = _first_tensor(like)
        self.tensors: dict[str, torch.Tensor] = {}
        with _writable():
            for name, value in like.items():
                shape = tuple(value.shape) if isinstance(value, torch.Tensor) else ()
                dtype = value.dtype if isinstance(value, torch.Tensor) else reference.dtype
                self.tensors[name] = torch.zeros(capacity + 1, *shape, dtype=dtype, device=reference.device)
                self.tensors[name][capacity].fill_(self.identity.get(name, 0.0))
        self._free = list(range(capacity - 1, -1, -1))

    @property
    def capacity(self) -> int:
        return next(iter(self.tensors.values())).shape[0] - 1

    @property
    def free(self) -> int:
        """Slots a newcomer can take without the bank growing."""
        return len(self._free)

    def take(self) -> int:
        """A free slot (the lowest), growing the bank when none is left."""
        if not self._free:
            self.reserve(max(1, 2 * self.capacity))
        return self._free.pop()

    def write(self, slot: int, sources: Sources) -> None:
        """Copy one delta's tensors into ``slot`` (casting to the bank's device and dtype)."""
        with _writable():
            for name, value in sources.items():
                target = self.tensors[name][slot]
                target.copy_(value) if isinstance(value, torch.Tensor) else target.fill_(value)

    def release(self, slot: int) -> None:
        self._free.append(slot)
        self._free.sort(reverse=True)

    def reserve(self, capacity: int) -> None:
        """At least ``capacity`` slots (one copy into new tensors if the bank has fewer; slots keep their numbers)."""
        old = self.capacity
        if capacity <= old:
            return
        with _writable():
            for name, table in self.tensors.items():
                grown = table.new_zeros(capacity + 1, *table.shape[1:])
                grown[:old] = table[:old]
                grown[capacity].fill_(self.identity.get(name, 0.0))
                self.tensors[name] = grown
        self._free = list(range(capacity - 1, old - 1, -1)) + self._free


class _Record:
    """Where one delta sits, and the version stamps of the tensors its slot was computed from (its
    ``bank_inputs``: the sources themselves, or what a computed source is made of, e.g. VeRA's vectors)."""

    __slots__ = ("delta", "bank", "slot", "sources", "stamps")

    def __init__(self, delta: nn.Module, bank: Bank, slot: int):
        self.delta, self.bank, self.slot = delta, bank, slot
        self.sources: list[torch.Tensor] = []
        self.stamps: list[tuple[int, int]] = []

    def write(self) -> None:
        sources = bank_sources(self.delta)
        self.bank.write(self.slot, sources)
        self.sources = bank_inputs(self.delta)  # not computed sources: fresh tensors, whose versions never move
        self.stamps = [(t._version, t.data_ptr()) for t in self.sources]

    def stale(self) -> bool:
        return any((t._version, t.data_ptr()) != stamp for t, stamp in zip(self.sources, self.stamps))


class Banks:
    """Every bank of one adapted model, one per delta layout, and which delta sits in which slot.

    ``verify``: before each routed batch, check the adapters of the batch for in-place
    changes (one ``Tensor._version`` read per adapter tensor, about 40 ns each). A server
    whose adapters never change after loading may turn it off.

    ``static``: forwards captured in CUDA graphs (or compiled) read the banks' tensors in
    place; each is marked so for ``torch.compile`` (see ``AdaptedModel.reserve``).
    ``frozen``: while set, a bank never grows and no bank is created or dropped — a delta
    that would need it is refused with an :class:`~splice.errors.AdapterError`
    (see ``AdaptedModel.freeze_routing``).
    """

    def __init__(self, capacity: int = 8):
        self.capacity = capacity
        self.verify = True
        self.static = False
        self.frozen = False
        self._banks: dict[tuple, Bank] = {}
        self._records: dict[int, _Record] = {}  # id(delta) -> record; the record keeps the delta alive

    def place(self, deltas: list[nn.Module]) -> tuple[Bank, list[int]]:
        """The bank of these deltas (one layout) and each one's slot, writing those not yet in it."""
        key = layout(deltas[0])
        bank = self._banks.get(key)
        new = [d for d in deltas if id(d) not in self._records]
        if self.frozen and new and (bank is None or bank.free < len(new)):
            raise frozen_error(f"{len(new)} more bank slot(s) of layout {key[0].__name__}{key[2]}" if bank is None
                                else f"{len(new)} more slot(s) in a bank of {bank.capacity}, {bank.free} free")
        if bank is None:
            cls = type(deltas[0])
            bank = self._banks[key] = Bank(bank_sources(deltas[0]), cls.bank_identity, self.capacity)
        slots = []
        for delta in deltas:
            record = self._records.get(id(delta))
            if record is None:
                record = self._records[id(delta)] = _Record(delta, bank, bank.take())
                record.write()
            slots.append(record.slot)
        if self.static and new:
            mark_static(*bank.tensors.values())  # a new or grown bank: new tensors
        return bank, slots

    def refresh(self, deltas: Iterable[nn.Module]) -> int:
        """Rewrite the slots of ``deltas`` whose tensors changed since they were written; returns how many."""
        count = 0
        for delta in deltas:
            record = self._records.get(id(delta))
            if record is not None and record.stale():
                record.write()
                count += 1
        return count

    def watch(self, deltas: list[nn.Module]) -> "Watch":
        """A cheap per-batch freshness check over one adapter's deltas (placed in banks already)."""
        return Watch(self, [self._records[id(d)] for d in deltas if id(d) in self._records])

    def evict(self, deltas: Iterable[nn.Module]) -> None:
        """Free the slots of ``deltas`` (an adapter deleted or unloaded)."""
        for delta in deltas:
            record = self._records.pop(id(delta), None)
            if record is not None:
                record.bank.release(record.slot)

    def clear(self) -> None:
        """Drop every bank (the model moved): slots are written again when next used."""
        if self.frozen:
            raise frozen_error("dropping the banks (the model moved to another device or dtype)")
        self._banks.clear()
        self._records.clear()

    def __len__(self) -> int:
        return len(self._records)

    def tensors(self) -> list[torch.Tensor]:
        """Every bank tensor (a routed forward reads them in place)."""
        return [t for bank in self._banks.values() for t in bank.tensors.values()]


class Watch:
    """The versions of every tensor one adapter's slots were copied from, checked in one comparison.

    In-place edits (optimiser steps, ``load_state_dict``, edits under ``no_grad``) bump a
    tensor's version; moving the model drops the banks altogether (``AdaptedModel._apply``).
    """

    def __init__(self, banks: Banks, records: list[_Record]):
        self._banks, self._records = banks, records
        self._stamp()

    def _stamp(self) -> None:
        self._tensors = [t for record in self._records for t in record.sources]
        self._versions = [t._version for t in self._tensors]

    def refresh(self) -> int:
        """Rewrite this adapter's stale slots; returns how many."""
        if [t._version for t in self._tensors] == self._versions:
            return 0
        count = self._banks.refresh(record.delta for record in self._records)
        self._stamp()
        return count


def mark_static(*tensors: torch.Tensor) -> None:
    """Tell ``torch.compile`` (CUDA graphs, ``mode="reduce-overhead"``) that these tensors keep their address,
    so a graph reads them in place rather than copying each into a private buffer on every replay."""
    import torch._dynamo  # heavy to import: only once graphs are in play

    for tensor in tensors:
        torch._dynamo.mark_static_address(tensor)


def frozen_error(needed: str, fix: str = "") -> AdapterError:
    """The error for a change that would move what captured graphs read (see ``AdaptedModel.freeze_routing``)."""
    fix = fix or ("Reserve room before freezing (model.reserve(adapters=...)), or model.unfreeze_routing(), "
                  "make the change and capture again.")
    return AdapterError(f"Routing is frozen for captured graphs (model.freeze_routing()), and this needs {needed}: "
                        f"the graphs read the routing tensors where they are, so nothing may grow or move. {fix}")


def _first_tensor(sources: Sources) -> torch.Tensor:
    return next(v for v in sources.values() if isinstance(v, torch.Tensor))


@contextmanager
def _writable():
    """Writes to a bank: no autograd, and ordinary tensors even inside ``torch.inference_mode``
    (an inference tensor could not be written again outside it)."""
    with torch.inference_mode(False), torch.no_grad():
        yield
