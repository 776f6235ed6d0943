"""Composition: the active setup as a small expression over adapter names.

``model.activate(setup)`` takes a name or a block:

- ``Stack(a, b, ...)``: at every site, ``a``'s output feeds ``b`` (MAD-X: language + task);
- ``Fuse(a, b, ...)``: AdapterFusion — attention over the adapters' outputs, learned
  by a fusion added with ``model.add_fusion`` (adapters stay frozen);
- ``Average(a, b, weights=...)``: weighted average of the adapters' outputs;
- ``Split(a, b, splits=n)``: sequence positions ``[:n]`` go through ``a``, the rest through ``b``;
- ``BatchSplit(a, b, batch_sizes=[n, m])``: the first ``n`` rows through ``a``, the next ``m`` through ``b``;
- ``Parallel(a, b)``: the whole batch through each adapter side by side, in one forward
  (outputs come back stacked along the batch: rows of ``a``, then rows of ``b``).

Each block compiles, per site, into a :class:`Program` the hooks run. Nesting
that makes no sense is refused when the block is built (see ``ALLOWED``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Union

import torch
from torch import nn

from ..errors import AdapterError
from ..hooks.programs import Chain, Leaf, Program, as_program
from .rows import Routed, RowIndex

Setup = Union[str, "Block"]


@dataclass(frozen=True, init=False)
class Block:
    """A composition of adapter names and other blocks."""

    children: tuple[Setup, ...]

    def __init__(self, *children: Setup):
        flat = tuple(children[0]) if len(children) == 1 and isinstance(children[0], (list, tuple)) else children
        object.__setattr__(self, "children", flat)
        self._validate()

    def _validate(self) -> None:
        name = type(self).__name__
        if len(self.children) < 1:
            raise AdapterError(f"{name}() needs at least one adapter.")
        for child in self.children:
            if not isinstance(child, (str, Block)):
                raise AdapterError(f"{name} takes adapter names or blocks, got {child!r}.")
            kind = "name" if isinstance(child, str) else type(child).__name__
            if kind not in ALLOWED[name]:
                raise AdapterError(
                    f"{name} cannot contain {kind}: allowed inside {name} are {', '.join(ALLOWED[name])}. "
                    "See the composition table in the README."
                )

    def names(self) -> list[str]:
        """Every adapter name in this block, depth first."""
        return [n for child in self.children for n in ([child] if isinstance(child, str) else child.names())]


class Stack(Block):
    """Apply the children one after another at every site."""


class Fuse(Block):
    """AdapterFusion over the children (a fusion for exactly these adapters must exist: ``add_fusion``)."""


class Parallel(Block):
    """Run the whole batch through each child side by side (the batch is replicated once per child)."""


@dataclass(frozen=True, init=False)
class Average(Block):
    """A weighted average of the children's outputs (weights default to equal, and must sum to 1)."""

    weights: tuple[float, ...] = ()

    def __init__(self, *children: Setup, weights=None):
        Block.__init__(self, *children)
        count = len(self.children)
        weights = tuple(float(w) for w in weights) if weights is not None else (1.0 / count,) * count
        if len(weights) != count or abs(sum(weights) - 1.0) > 1e-6:
            raise AdapterError(f"Average weights {weights} must be {count} numbers that sum to 1.")
        object.__setattr__(self, "weights", weights)


@dataclass(frozen=True, init=False)
class Split(Block):
    """Sequence positions ``[:splits[0]]`` to the first child, the next ``splits[1]`` to the second, ..."""

    splits: tuple[int, ...] = ()

    def __init__(self, *children: Setup, splits):
        Block.__init__(self, *children)
        splits = (splits,) if isinstance(splits, int) else tuple(splits)
        if len(splits) not in (len(self.children) - 1, len(self.children)) or any(s <= 0 for s in splits):
            raise AdapterError(
                f"Split of {len(self.children)} children needs {len(self.children) - 1} positive split sizes "
                f"(the last child takes the rest), got {splits}."
            )
        object.__setattr__(self, "splits", splits)


@dataclass(frozen=True, init=False)
class BatchSplit(Block):
    """The first ``batch_sizes[0]`` rows to the first child, the next ``batch_sizes[1]`` to the second, ..."""

    batch_sizes: tuple[int, ...] = ()

    def __init__(self, *children: Setup, batch_sizes):
        Block.__init__(self, *children)
        sizes = tuple(int(s) for s in batch_sizes)
        if len(sizes) != len(self.children) or any(s < 0 for s in sizes):
            raise AdapterError(f"BatchSplit needs one row count per child ({len(self.children)}), got {sizes}.")
        object.__setattr__(self, "batch_sizes", sizes)


# What may appear inside what. Parallel and BatchSplit change which rows go where,
# so they sit at the top (or under a Stack, after which every site sees routed rows).
ALLOWED: dict[str, tuple[str, ...]] = {
    "Stack": ("name", "Stack", "Fuse", "Average", "Split", "BatchSplit"),
    "Fuse": ("name",),
    "Average": ("name", "Stack"),
    "Split": ("name", "Stack", "Average"),
    "BatchSplit": ("name", "Stack", "Fuse", "Average", "Split"),
    "Parallel": ("name", "Stack", "Fuse", "Average"),
}


# -- programs: what runs at one site ---------------------------------------------------------


class Weighted(Program):
    """``sum_i w_i * child_i(...)``: an average of what each child alone would give."""

    def __init__(self, children: list[Program], weights: tuple[float, ...]):
        self.children, self.weights = children, weights
        self.has_pre = any(c.has_pre for c in children)
        self.has_post = any(c.has_post for c in children)
        self.reads_input = any(c.reads_input for c in children)

    def pre(self, x):
        return sum(w * c.pre(x) for c, w in zip(self.children, self.weights))

    def post(self, x, y):
        return sum(w * c.post(x, y) for c, w in zip(self.children, self.weights))


class Fused(Program):
    """AdapterFusion: the fusion layer attends over each child's output (or change) at this site."""

    def __init__(self, children: list[Program], layer: nn.Module):
        if any(c.has_pre for c in children):
            raise AdapterError("Fuse works over adapters that change a sublayer's output (bottleneck adapters).")
        self.deltas = layer.attend == "deltas"
        self.query_input = layer.query_from == "adapter_input"
        if (self.deltas or self.query_input) and not all(
            type(c) is Program or (isinstance(c, Leaf) and c.delta.fusable) for c in children
        ):
            raise AdapterError("A fusion with attend='deltas' or query_from='adapter_input' fuses bottleneck "
                               "adapters, whose change and input it reads.")
        self.children, self.layer = children, layer
        self.has_post = True
        self.reads_input = any(c.reads_input for c in children)

    def post(self, x, y):
        if self.deltas:  # an adapter absent at this site adds nothing
            candidates = [c.delta.change(x, y) if isinstance(c, Leaf) else torch.zeros_like(y) for c in self.children]
        else:
            candidates = [c.post(x, y) for c in self.children]
        query = None
        if self.query_input:  # what the last fused adapter here reads, as AdapterHub's query
            leaf = next((c for c in reversed(self.children) if isinstance(c, Leaf)), None)
            query = leaf.delta.adapter_input(x, y) if leaf is not None else y
        return self.layer(y, candidates, query)


class Sliced(Program):
    """Different children for different slices of the sequence (Split)."""

    def __init__(self, children: list[Program], sizes: tuple[int, ...]):
        self.children, self.sizes = children, sizes
        self.has_pre = any(c.has_pre for c in children)
        self.has_post = any(c.has_post for c in children)
        self.reads_input = any(c.reads_input for c in children)

    def _bounds(self, length: int) -> list[tuple[int, int]]:
        bounds, start = [], 0
        for index in range(len(self.children)):
            size = self.sizes[index] if index < len(self.sizes) else length - start
            end = min(length, start + size)
            bounds.append((start, end))
            start = end
        return bounds

    def pre(self, x):
        _require_sequence(x)
        return torch.cat([c.pre(x[:, a:b]) for c, (a, b) in zip(self.children, self._bounds(x.shape[1]))], 1)

    def post(self, x, y):
        _require_sequence(y)
        parts = []
        for child, (a, b) in zip(self.children, self._bounds(y.shape[1])):
            parts.append(child.post(x[:, a:b] if child.reads_input else x, y[:, a:b]))
        return torch.cat(parts, 1)


def _require_sequence(t: torch.Tensor) -> None:
    if t.dim() != 3:
        raise AdapterError(
            f"Split needs [batch, sequence, features] activations at every site, got shape {tuple(t.shape)} "
            "(this model flattens tokens there). Use per-row routing or another block."
        )


@dataclass
class Compiler:
    """Turns a setup into one Program per site key, given how to look adapters up."""

    delta_at: Callable[[str, str], nn.Module | None]  # (adapter, site key) -> its delta there, or None
    fused_by: Callable[[str], tuple[str, ...] | None]  # a fusion's adapters (None: not a fusion)
    fusion_over: Callable[[tuple[str, ...]], str]  # the fusion that fuses exactly these adapters

    def program(self, setup: Setup, key: str) -> Program | None:
        """The program of ``setup`` at site ``key`` (None: nothing to do there)."""
        if isinstance(setup, str):
            fused = self.fused_by(setup)
            if fused is not None:
                return self._fused(setup, fused, key)
            delta = self.delta_at(setup, key)
            return as_program(delta) if delta is not None else None
        if isinstance(setup, Fuse):
            return self._fused(self.fusion_over(setup.children), setup.children, key)
        children = [self.program(child, key) for child in setup.children]
        if isinstance(setup, Stack):
            steps = [c for c in children if c is not None]
            return None if not steps else steps[0] if len(steps) == 1 else Chain(steps)
        if all(c is None for c in children):
            return None
        if isinstance(setup, BatchSplit):
            return Routed(children, RowIndex.from_sizes(setup.batch_sizes))
        if any(c is not None and c.has_soft for c in children):
            raise AdapterError(
                f"{type(setup).__name__} cannot mix prompt or prefix adapters: their soft tokens lengthen the whole "
                "call, not one site's output. Use them alone, in a Stack, or per row with adapter_names."
            )
        children = [c if c is not None else Program() for c in children]  # identity where a child is absent
        if isinstance(setup, Average):
            return Weighted(children, setup.weights)
        if isinstance(setup, Split):
            return Sliced(children, setup.splits)
        raise AdapterError(f"{type(setup).__name__} cannot be compiled at a site; it belongs at the top level.")

    def _fused(self, fusion: str, adapters: tuple, key: str) -> Program | None:
        layer = self.delta_at(fusion, key)
        if layer is None:
            return None
        return Fused([self.program(name, key) or Program() for name in adapters], layer)
