"""Per-site programs: what the hooks run at one site for the active setup.

A :class:`Program` changes a site's input (``pre``), its output (``post``), or adds
soft positions to the whole call (``soft``: prompt embeddings, prefix keys and
values). A :class:`Leaf` is one adapter's delta; :class:`Chain` runs programs one
after another. The composition blocks (:mod:`splice.routing.compose`) and per-row
routing (:mod:`splice.routing.rows`) build bigger programs from these.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn


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
    return delta.program() if delta.stage == "composite" else Leaf(delta)


class Chain(Program):
    """Children one after another (Stack, or several names activated together)."""

    def __init__(self, steps: list[Program]):
        self.steps = steps
        self.has_pre = any(s.has_pre for s in steps)
        self.has_post = any(s.has_post for s in steps)
        self.has_soft = any(s.has_soft for s in steps)
        self.reads_input = any(s.reads_input for s in steps)

    def pre(self, x):
        for step in self.steps:
            x = step.pre(x)
        return x

    def post(self, x, y):
        for step in self.steps:
            y = step.post(x, y)
        return y

    def soft(self, rows):
        return join_soft([part for step in self.steps if (part := step.soft(rows)) is not None])
