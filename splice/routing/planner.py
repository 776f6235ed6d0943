"""The planner: from the active setup, or a batch's per-row adapter names, to what the hooks run.

It compiles a setup (see :mod:`splice.routing.compose`) into one program per site key,
and says which splice heads run on which rows.

Per-row plans come in two kinds. At inference (gradients off), a batch whose
rows each name one adapter of a bankable method (LoRA, bottleneck, IA³,
BitFit) runs the *resident* plan, built once over every such adapter the
model holds: any mix of them reuses it, and only the row index changes — so a
serving loop does no planning per batch, and a captured CUDA graph stays valid
when the mix changes. The adapters' tensors live in banks (:mod:`splice.kernels.bank`).
Other batches (compositions, prompts, heads, training) get a plan for their
distinct setups, cached by them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from ..adapter import BASE_NAME, Adapter, HeadSwap, adapter_named
from ..anatomy import layer_of
from ..errors import AdapterError
from ..heads import Head
from ..hooks.programs import Leaf, Program
from ..kernels import Banks
from ..kernels.bank import mark_static
from .compose import BatchSplit, Block, Compiler, Fuse, Parallel, Setup, Stack
from .resident import Resident, check_fits, reserve_room
from .rows import Routed, RowIndex

HEAD_KEY = "head"
HeadGroups = list[tuple[Head, torch.Tensor | None]]


class Planner:
    """Compiles setups over one model's adapter table, and holds its adapter banks.

    It reads the table (``adapters``), the names merged into the base (``merged``, kept up to date by the
    model) and where the base lives (``device``); it never sees the model itself.
    """

    def __init__(self, adapters: Mapping[str, Adapter], merged: Sequence[str], device: Callable[[], torch.device]):
        self.adapters, self.merged, self._base_device = adapters, merged, device
        self.banks = Banks()
        self.reserved = 0  # resident adapters to keep room for (AdaptedModel.reserve)
        self._per_row_cache: dict[tuple, tuple[dict[str, Program], RowIndex, list[Setup | None]]] = {}
        self.resident_plan: Resident | None = None  # built at the first per-row batch of resident adapters

    def invalidate(self, banks: bool = False) -> None:
        """Adapters were added, removed, merged or unmerged: cached per-row plans are stale.

        The resident plan, if built, is brought in step here (and checks its own key on
        every batch): switching the active setup keeps it. ``banks``: the adapters moved
        to another device or dtype, so the banks and the resident plan go too.
        """
        self._per_row_cache.clear()
        if banks:
            self.resident_plan = None
            self.banks.clear()
        elif self.resident_plan is not None:
            self.resident()  # a deleted adapter leaves now, so its memory (bank slots too) is free at once

    # -- lookups the compiler needs ------------------------------------------------------------
    def _delta_at(self, name: str, key: str):
        adapter = self.adapters[name]
        if key == HEAD_KEY:  # a copied base head swaps in even when the adapter is merged
            return HeadSwap(adapter.head) if adapter.head_site is not None else None
        if name in self.merged or key not in adapter.sites:
            return None
        return adapter.delta(key)

    def _fused_by(self, name: str) -> tuple[str, ...] | None:
        return self.adapters[name].config.fused_adapters or None

    def _fusion_over(self, children: tuple) -> str:
        matches = [n for n, a in self.adapters.items()
                   if a.config.fused_adapters and a.config.fused_adapters == tuple(children)]
        if len(matches) != 1:
            found = "none" if not matches else f"several ({', '.join(matches)}): activate one by name"
            raise AdapterError(
                f"Fuse{tuple(children)} needs exactly one fusion of these adapters, found {found}. "
                f"Create one with model.add_fusion(name, {list(children)})."
            )
        return matches[0]

    def _compiler(self) -> Compiler:
        return Compiler(self._delta_at, self._fused_by, self._fusion_over)

    # -- setups ----------------------------------------------------------------------------------
    def normalise(self, items: tuple) -> Setup:
        """``activate("a")``, ``activate("a", "b")`` (= Stack), ``activate(["a", "b"])`` or ``activate(block)``."""
        if len(items) == 1 and isinstance(items[0], Block):
            setup = items[0]
        else:
            names = []
            for item in items:
                group = [item] if isinstance(item, str) else list(item) if isinstance(item, (list, tuple)) else None
                if group is None or not all(isinstance(n, str) for n in group):
                    raise AdapterError(
                        f"activate() takes adapter names, lists of names, or one composition block "
                        f"(splice.Stack, Fuse, ...), got {item!r}."
                    )
                names.extend(group)
            if not names:
                raise AdapterError("activate() needs a setup; use disable() to run the base alone.")
            if len(set(names)) != len(names):
                raise AdapterError(f"activate() got a name twice: {names}.")
            setup = names[0] if len(names) == 1 else Stack(*names)
        self.check(setup)
        return setup

    def check(self, setup: Setup) -> None:
        """Every name exists; fusions resolve (the blocks themselves refuse nestings they do not allow)."""
        if not isinstance(setup, (str, Block)):
            raise AdapterError(
                f"A setup is an adapter name or a composition block (splice.Stack, Fuse, ...), got {setup!r}."
            )
        names = [setup] if isinstance(setup, str) else setup.names()
        for name in names:
            adapter_named(self.adapters, name)
        if isinstance(setup, Block):
            self._check_fusions(setup)

    def _check_fusions(self, block: Block) -> None:
        """Every Fuse in ``block`` has its fusion."""
        if isinstance(block, Fuse):
            self._fusion_over(block.children)
        for child in block.children:
            if isinstance(child, Block):
                self._check_fusions(child)

    def without(self, setup: Setup | None, name: str) -> Setup | None:
        """The setup once adapter ``name`` is gone: dropped from a plain stack, else the base alone."""
        if setup is None or name not in self.names(setup):
            return setup
        if isinstance(setup, Stack) and all(isinstance(c, str) for c in setup.children):
            rest = [c for c in setup.children if c != name]
            return rest[0] if len(rest) == 1 else Stack(*rest)
        return None

    def names(self, setup: Setup | None) -> tuple[str, ...]:
        if setup is None:
            return ()
        names = [setup] if isinstance(setup, str) else setup.names()
        expanded = []
        for name in names:
            expanded.append(name)
            expanded.extend(self._fused_by(name) or ())
        return tuple(dict.fromkeys(expanded))

    def _keys(self, setups: Sequence[Setup]) -> list[str]:
        keys: dict[str, None] = {}
        for setup in setups:
            for name in self.names(setup):
                keys.update(dict.fromkeys(self.adapters[name].sites))
        return [*keys, HEAD_KEY]

    # -- plans -------------------------------------------------------------------------------------
    def plan(self, setup: Setup | None, skip_layers: frozenset[int] = frozenset()) -> dict[str, Program]:
        """One program per site for ``setup``; blocks in ``skip_layers`` get none (AdapterDrop)."""
        if setup is None or isinstance(setup, Parallel):  # Parallel is routed per forward (the batch size varies)
            return {}
        compiler = self._compiler()
        plan = {}
        for key in self._keys([setup]):
            program = compiler.program(setup, key)
            # Soft positions lengthen the whole call (one mask for every block): AdapterDrop keeps them.
            if program is not None and (layer_of(key) not in skip_layers or program.has_soft):
                plan[key] = program
        return plan

    def per_row(self, entries: Sequence[Setup], static: bool = False) -> tuple[dict[str, Program], HeadGroups]:
        """The plan and head groups for a batch whose row ``i`` takes ``entries[i]``.

        ``static`` (and frozen banks): a batch of resident adapters always runs the resident plan, even
        when every row names the same one, so a captured forward reads its routing from the row index.
        A batch with splice heads finds each head's rows with ``.nonzero()``, once per batch and outside
        the hooks (resident adapters have no heads, so the serving path does not pay it).
        """
        if all(e == BASE_NAME for e in entries) and not (static or self.banks.frozen):
            # The base alone (DPO's reference pass): no routing, and no resident banks built for it, which
            # would hold copies of every adapter's weights for as long as the model lives.
            return {}, []
        if not torch.is_grad_enabled():
            resident = self.resident()
            if all(e == BASE_NAME or (isinstance(e, str) and e in resident.position) for e in entries):
                first = entries[0] if entries else BASE_NAME
                if all(e == first for e in entries) and not (static or self.banks.frozen):
                    return self._single(first), []  # one setup for every row: no per-row gathers at all
                index = [resident.position.get(e, -1) for e in entries]  # the base alone: -1
                if self.banks.verify:
                    for name in set(entries):
                        if name != BASE_NAME:
                            resident.watches[name].refresh()
                resident.rows.set(torch.tensor(index, dtype=torch.long), self._device())
                return resident.plan, []
        distinct = list(dict.fromkeys(entries))
        for setup in distinct:
            if setup != BASE_NAME:
                self.check(setup)
        setups = [None if s == BASE_NAME else s for s in distinct]
        cache_key = tuple(distinct)
        if cache_key not in self._per_row_cache:
            rows = RowIndex(torch.zeros(0, dtype=torch.long), capacity=len(setups))
            compiler, plan = self._compiler(), {}
            for key in self._keys([s for s in setups if s is not None]):
                children = [None if s is None else compiler.program(s, key) for s in setups]
                if any(c is not None for c in children):
                    plan[key] = Routed(children, rows, self.banks)
            self._per_row_cache[cache_key] = (plan, rows, setups)
        plan, rows, setups = self._per_row_cache[cache_key]
        if not torch.is_grad_enabled():
            self.banks.refresh(d for name in self.names_in(setups) for d in self._deltas(name))
        position = {setup: i for i, setup in enumerate(distinct)}
        index = torch.tensor([-1 if e == BASE_NAME else position[e] for e in entries])
        rows.set(index, self._device())
        groups = []
        for child, setup in enumerate(setups):
            head = self.head_of(setup) if setup is not None else None
            if head is not None:
                groups.append((head, (rows.index == child).nonzero().squeeze(1)))
        return plan, groups

    def resident(self) -> Resident:
        """The resident plan, kept in step with the adapters: those added, merged or unmerged since join it
        again, those gone leave it, each touching only its own sites and slots."""
        adapters, merged = tuple(self.adapters.items()), tuple(self.merged)  # adapters compare by identity
        resident = self.resident_plan
        if resident is not None and resident.key == (adapters, merged):
            return resident
        if resident is None:
            resident = self.resident_plan = Resident(max(16, self.reserved))
            resident.rows.static = self.banks.static
            self.banks.clear()
            self._per_row_cache.clear()  # their groups held slots of the banks just dropped
        (before, was_merged), now = resident.key, dict(adapters)
        before = dict(before)
        changed = {n for n in before if now.get(n) is not before[n] or (n in merged) != (n in was_merged)}
        for name in changed:
            self._drop_resident(resident, name, before[name])
        compiler = self._compiler()
        for name, adapter in adapters:
            if name in changed or name not in before:
                self._make_resident(resident, name, adapter, compiler)
        resident.key = (adapters, merged)
        if self.reserved and not self.banks.frozen:
            reserve_room(resident, self.reserved)  # newcomers' banks too
            if self.banks.static:
                mark_static(*self.banks.tensors())
        return resident

    def _drop_resident(self, resident: Resident, name: str, adapter) -> None:
        """Take an adapter out of the resident plan, and its deltas out of the banks."""
        self.banks.evict(adapter.modules())  # also slots it took in per-batch plans (adapters with heads)
        position = resident.position.pop(name, None)
        if position is None:
            return
        for key in list(resident.plan):
            routed = resident.plan[key]
            routed.remove(position)
            if not any(c is not None for c in routed.children) and not self.banks.frozen:
                del resident.plan[key]
        resident.free.append(position)
        resident.watches.pop(name, None)
        resident.singles.pop(name, None)

    def _make_resident(self, resident: Resident, name: str, adapter, compiler) -> None:
        """Add one adapter to the resident plan if every delta of it can run from a bank.

        While the banks are frozen, an adapter that does not fit what the captured graphs run is refused
        before anything changes (see :func:`splice.routing.resident.check_fits`).
        """
        if adapter.head is not None or self._fused_by(name) is not None or name in resident.position:
            return
        found = {k: p for k in adapter.sites if (p := compiler.program(name, k)) is not None}
        if not all(_bankable(p) for p in found.values()):
            return
        position = resident.free[-1] if resident.free else len(resident.position)
        if self.banks.frozen:
            check_fits(resident, name, found, position)
        resident.position[name] = position
        if resident.free:
            resident.free.pop()
        while resident.rows.capacity <= position:  # lookups are sized by capacity: grow it rarely
            resident.rows.capacity *= 2
        for key, program in found.items():
            if key not in resident.plan:
                resident.plan[key] = Routed([], resident.rows, self.banks)
            resident.plan[key].add(position, program)
            resident.plan[key].place()  # the newcomer's slots are written now, not at the next batch
        resident.watches[name] = self.banks.watch([p.delta for p in found.values()])

    def _single(self, name: str) -> dict[str, Program]:
        """The plain plan of one adapter (or of none), for a batch whose rows all name it."""
        singles = self.resident_plan.singles
        if name not in singles:
            singles[name] = {} if name == BASE_NAME else self.plan(name)
        return singles[name]

    def names_in(self, setups: Sequence[Setup | None]) -> list[str]:
        """Every adapter name the setups use (fusions with the adapters they fuse), once each."""
        return list(dict.fromkeys(n for s in setups for n in self.names(s)))

    def _deltas(self, name: str) -> list[nn.Module]:
        adapter = self.adapters[name]
        return [adapter.delta(k) for k in adapter.sites]

    def _device(self) -> torch.device:
        """Where the row index goes: the base's device, set before the forward so hooks never copy it."""
        return self._base_device()

    def head_of(self, setup: Setup | None) -> Head | None:
        """The splice head a setup ends in: a name's own, a Stack's last, a fusion's own."""
        if setup is None:
            return None
        if isinstance(setup, str):
            return self.adapters[setup].task_head
        if isinstance(setup, Fuse):
            return self.adapters[self._fusion_over(setup.children)].task_head
        if isinstance(setup, (BatchSplit, Parallel)):
            return None  # per-row: see per_row()
        for child in reversed(setup.children):
            head = self.head_of(child)
            if head is not None:
                return head
        return None

    def split_groups(self, setup: Block, sizes: Sequence[int]) -> HeadGroups:
        """Head groups of a BatchSplit / Parallel with these row counts per child."""
        groups, start = [], 0
        for child, size in zip(setup.children, sizes):
            head = self.head_of(child)
            if head is not None:
                groups.append((head, torch.arange(start, start + size)))
            start += size
        return groups


def _bankable(program: Program) -> bool:
    """One delta that keeps its tensors in banks (``banked`` deltas: LoRA, DoRA, VeRA, LoHa, LoKr, bottleneck,
    Compacter, IA³, BitFit)."""
    return isinstance(program, Leaf) and program.delta.banked
