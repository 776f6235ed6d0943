"""The resident plan: every bankable adapter at a fixed routing position, and the room kept for more.

Per-row batches of single bankable adapters (``banked`` deltas, without a head) run this
one plan, whatever their mix; only the row index changes. Captured CUDA graphs and compiled forwards
read its tensors in place, so what would move them (growth past the reserved room, a layout no
captured forward runs) is checked here (see :mod:`.capture`).
"""

from __future__ import annotations

import torch

from ..hooks.programs import Leaf, Program
from ..kernels.bank import Bank, Banks, Watch, frozen_error, mark_static
from .rows import RowIndex


class Resident:
    """The plan for batches of single bankable adapters: every such adapter, at a fixed position.

    It changes one adapter at a time: an added, loaded, deleted, merged or unmerged
    adapter touches only its own sites and bank slots.
    """

    def __init__(self, capacity: int = 16):
        self.key: tuple = ((), ())  # the adapters (name, module) and merges it covers
        self.position: dict[str, int] = {}
        self.free: list[int] = []  # positions of adapters that left, for the next ones
        self.plan: dict[str, Program] = {}
        self.rows = RowIndex(torch.zeros(0, dtype=torch.long), capacity=capacity)
        self.watches: dict[str, Watch] = {}  # each adapter's bank slots, checked against its tensors per batch
        self.singles: dict[str, dict[str, Program]] = {}  # plain plans for batches whose rows all name one adapter


def build_static(resident: Resident, banks: Banks) -> None:
    """Build the resident plan's routing tensors now (banks, lookups on the banks' devices), and mark them
    and every later one static for ``torch.compile``."""
    with torch.no_grad():
        for routed in resident.plan.values():
            routed.place()
    banks.static = resident.rows.static = True
    lookups = []
    for routed in resident.plan.values():
        for group in routed.groups():
            device = next(iter(group.bank.tensors.values())).device
            lookups.append(group.lookup("bank", device, resident.rows.capacity))
    mark_static(*banks.tensors(), *resident.rows.buffers(), *lookups)


def reserve_room(resident: Resident, adapters: int) -> None:
    """Routing positions for ``adapters`` adapters, and bank slots for as many of every layout.

    An adapter takes one slot of a bank per group it joins (per site of that layout), so a
    bank gets ``adapters`` times the number of resident groups that read it.
    """
    resident.rows.capacity = max(resident.rows.capacity, adapters)
    readers: dict[int, tuple[Bank, int]] = {}
    for routed in resident.plan.values():
        routed.place()
        for group in routed.groups():
            bank, count = readers.get(id(group.bank), (group.bank, 0))
            readers[id(bank)] = (bank, count + 1)
    for bank, count in readers.values():
        bank.reserve(adapters * count)


def check_fits(resident: Resident, name: str, programs: dict[str, Leaf], position: int) -> None:
    """Refuse (before anything changes) an adapter that frozen routing cannot take in place."""
    if position >= resident.rows.capacity:
        raise frozen_error(f"routing position {position + 1} for adapter {name!r}, beyond the "
                           f"{resident.rows.capacity} reserved")
    wanted: dict[int, tuple[Bank, int]] = {}
    for key, program in programs.items():
        routed = resident.plan.get(key)
        group = routed.group_for(program.delta) if routed is not None else None
        if group is None or group.bank is None:
            raise frozen_error(
                f"adapter {name!r} at site {key!r} with a layout ({type(program.delta).__name__}, its shapes) that "
                "no resident adapter had there when routing was frozen, so no captured forward runs it",
                "Add one adapter of each kind you will serve before freezing, or model.unfreeze_routing(), "
                "add it and capture again.")
        bank, count = wanted.get(id(group.bank), (group.bank, 0))
        wanted[id(bank)] = (bank, count + 1)
    for bank, count in wanted.values():
        if bank.free < count:
            raise frozen_error(f"{count} slot(s) for adapter {name!r} in a bank of {bank.capacity} with "
                               f"{bank.free} free")
