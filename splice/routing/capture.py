"""Routing that CUDA graphs and ``torch.compile`` can capture: reserved room, and frozen routing state.

A forward captured in a CUDA graph replays the same kernels on the same
addresses; a compiled one is re-traced when the Python state it read changes.
Per-row routing is built for that already: a batch's routing lives in device
tensors (the row index, each site's position -> slot lookups, the adapter
banks) that later batches and newly resident adapters *write into*. What can
still move them is growth — a full bank doubles, more adapters than the row
index has positions resize the lookups — and an adapter whose sites or layout
no captured graph runs. So, before capturing::

    model.reserve(adapters=64)        # room for 64 resident adapters: bank slots, routing positions
    model.freeze_routing()            # from here on: grow nothing; refuse what does not fit
    model.route(names)                # row i -> names[i], written in place; then capture / replay

While frozen, ``model.load``/``add`` of an adapter that fits writes its bank slots
and lookup entries at once (the next replay serves it), ``delete`` clears them,
and anything that would reallocate or change what the graphs run raises an
:class:`~splice.errors.AdapterError` instead, leaving the model as it was.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch

from ..errors import AdapterError
from ..kernels.bank import frozen_error
from .resident import build_static, reserve_room

if TYPE_CHECKING:
    from .compose import Setup
    from .planner import Planner


class GraphCapture:
    """The model-level API, mixed into :class:`splice.AdaptedModel`: it uses the planner's public
    surface and sets the hooks' plan; the state it changes lives in :mod:`.resident`."""

    def reserve(self, adapters: int) -> None:
        """Keep room for at least ``adapters`` resident adapters, so serving that many never reallocates.

        Resident adapters are those per-row routing serves from banks (LoRA, bottleneck, IA³,
        BitFit, without a splice head). Every bank (one per method, shape and dtype) gets slots for
        ``adapters`` adapters of its layout, and the row index as many positions; banks made later
        for new layouts get the same room. The routing tensors are built now and marked static
        for ``torch.compile`` (``mode="reduce-overhead"`` then reads them in place, not copying
        them per replay). Call it before capturing a CUDA graph or compiling: a bank that grows
        moves, and a captured forward would not see it. Memory: each bank holds ``adapters``
        copies of one adapter's tensors of its layout.
        """
        if not isinstance(adapters, int) or isinstance(adapters, bool) or adapters < 1:
            raise AdapterError(f"reserve() takes a number of adapters >= 1, got {adapters!r}.")
        planner: Planner = self.planner
        if planner.banks.frozen and adapters > planner.reserved:
            raise frozen_error(f"reserving room for {adapters} adapters (it moves the banks)",
                               "Call model.unfreeze_routing(), reserve, and capture again.")
        planner.reserved = max(planner.reserved, adapters)
        with torch.no_grad():
            reserve_room(planner.resident(), planner.reserved)
        build_static(planner.resident(), planner.banks)

    def freeze_routing(self) -> None:
        """Refuse, from now on, whatever would move the routing state captured graphs read.

        That is, with an :class:`~splice.errors.AdapterError` and the model left as it was: a bank
        or the row index outgrowing :meth:`reserve`, an adapter of a layout or at a site no resident
        adapter had (the captured forwards do not run it), moving or casting the model. Adding,
        loading and deleting adapters that fit write their slots in place, so the next replay
        serves them. The routing tensors are built now, not during a capture. Undo with
        :meth:`unfreeze_routing`.
        """
        build_static(self.planner.resident(), self.planner.banks)
        self.planner.banks.frozen = True

    def unfreeze_routing(self) -> None:
        """Let the routing state grow and change shape again (graphs captured while frozen are stale after that)."""
        planner: Planner = self.planner
        planner.banks.frozen = False
        if planner.resident_plan is not None:
            plan = planner.resident_plan.plan
            for key, routed in list(plan.items()):
                if not routed.settle():  # groups and sites kept for the graphs while frozen
                    del plan[key]

    @property
    def routing_frozen(self) -> bool:
        """Whether :meth:`freeze_routing` is in effect."""
        return self.planner.banks.frozen

    def route(self, adapter_names: Sequence["Setup"]) -> None:
        """Route the rows of the next forwards of the base: row ``i`` through ``adapter_names[i]``.

        For captured or compiled forwards, which cannot take adapter names: route here, outside
        the graph, then replay it (or call the compiled ``model.base``). A batch of resident
        adapters (and ``"__base__"``) is written into the row index of its size in place — the
        same tensor the captured forward reads. While routing is frozen, only such batches can
        be routed. Splice heads do not run in the base: a setup with one is refused.
        """
        entries = list(adapter_names)
        planner: Planner = self.planner
        with torch.no_grad():  # plan as for inference: resident adapters run from their banks
            plan, heads = planner.per_row(entries, static=True)
        if heads:
            raise AdapterError("route() runs the base only, so splice heads cannot run: call "
                               "model(..., adapter_names=...) for setups with a head.")
        if planner.banks.frozen and plan is not planner.resident().plan:
            resident = planner.resident().position
            outside = sorted({str(e) for e in entries if not (isinstance(e, str) and e in resident)} - {"__base__"})
            raise AdapterError(
                f"Routing is frozen for captured graphs, which serve resident adapters only (single LoRA, "
                f"bottleneck, IA3 or BitFit adapters without a head); not resident: {outside}. "
                "Run such batches with model(..., adapter_names=...) instead."
            )
        self.hooks.plan = plan
        self.hooks.skip_layers = self._skip_layers
