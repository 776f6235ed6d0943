"""The method contract: a frozen config that says *where* a method acts, and a
small module per site that says *what* it does there.

A site delta is an ``nn.Module`` with one of two stages:

- ``stage = "output"``: ``forward(x, y) -> y'`` gets the site's input ``x`` and
  output ``y`` (only this role's columns of a fused projection) and returns the
  new output: ``y + f(y)`` (sequential bottleneck), ``y + f(x)`` (parallel
  bottleneck, LoRA, bias delta), ``y * l`` (IA³ on an output);
- ``stage = "input"``: ``forward(x) -> x'`` changes the site's input before the
  module runs (IA³ on the FFN's inner activation).

- ``stage = "soft"``: ``soft() -> tuple of [S, ...]`` gives positions the
  method adds to the call (prompt embeddings; prefix keys and values), put in
  by :mod:`splice.soft`.

``reads_input`` says whether an output-stage delta needs ``x`` (hooks stash it
only then). A delta that trains through a reparameterisation implements
``folded_state()`` (the plain tensors a save writes) with the config's
``folded()``. A composite delta (Union) implements ``program()`` instead of a
stage. Mergeable deltas also implement ``merge(site)`` / ``unmerge(site)``,
folding themselves into, and back out of, the base weight in place, and may
implement ``check_merge(site)``, which raises before any weight is written
when a site cannot take the merge.

A delta class that can run a mixed batch in one call (per-row routing)
implements two static methods: ``bank_sources(delta)`` — the tensors (and
per-adapter constants) one adapter puts in a bank slot — and ``routed(first,
table, rows, x, y)`` (``routed(first, table, rows, x)`` for an input stage),
which computes every row at once from ``table`` (``{name: [slots + 1, ...]}``,
the last slot the identity, ``bank_identity`` naming fills other than 0) and
``rows`` (a :class:`splice.kernels.RowSlots`), through :mod:`splice.kernels`.
``route_key(delta)`` names options that must match to share a call.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from ..anatomy import Anatomy, Site, linear_weight
from ..errors import AdapterError, ConfigError

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "swish": nn.SiLU, "silu": nn.SiLU, "tanh": nn.Tanh}
# No option of any method needs a number larger than this (ranks, lengths, scales, token ids): a rank of
# 10**8 or a scale of 1e300 is a typo or a hostile file, and would fail later as an allocation error or NaNs.
MAX_MAGNITUDE = 1_000_000


@dataclass(frozen=True, kw_only=True)
class MethodConfig:
    """Base of every method config: frozen, validated on construction, JSON round-trippable.

    ``layers`` restricts the method to those block indices (``None``: every block).
    Every number in every option (also inside lists and mappings) must be finite and
    at most ``MAX_MAGNITUDE`` in size, checked here once for all methods; each
    method's ``validate`` then checks what its own options mean.
    """

    method: ClassVar[str] = ""
    mergeable: ClassVar[bool] = False

    layers: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # JSON gives lists; configs hold tuples so they stay hashable
            value = getattr(self, f.name)
            if isinstance(value, list):
                object.__setattr__(self, f.name, tuple(value))
        if isinstance(self.layers, int) and not isinstance(self.layers, bool):
            object.__setattr__(self, "layers", (self.layers,))
        if self.layers is not None and not (
            isinstance(self.layers, tuple)
            and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in self.layers)
        ):
            raise ConfigError(f"{type(self).__name__}.layers must be non-negative block indices, got {self.layers!r}.")
        for f in dataclasses.fields(self):
            for number in _numbers(getattr(self, f.name)):
                if (isinstance(number, float) and not math.isfinite(number)) or abs(number) > MAX_MAGNITUDE:
                    raise ConfigError(f"{type(self).__name__}.{f.name} holds {number!r}; options must be finite "
                                      f"numbers no larger than {MAX_MAGNITUDE:,} in size.")
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError naming the bad field and the values it accepts."""

    def sites(self, anatomy: Anatomy) -> list[Site]:
        """The sites this method acts on in ``anatomy``'s model."""
        raise NotImplementedError

    def build(self, site: Site, anatomy: Anatomy) -> nn.Module:
        """A fresh delta module for ``site``; a fresh adapter must not change the model's output."""
        raise NotImplementedError

    def folded(self) -> "MethodConfig":
        """The config a save writes (a delta's ``folded_state`` gives the matching tensors); usually itself."""
        return self

    def to_dict(self) -> dict[str, Any]:
        data = {"method": self.method}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            data[f.name] = list(value) if isinstance(value, tuple) else value
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MethodConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names - {"method"}
        if unknown:
            raise ConfigError(
                f"{cls.__name__} has no option(s) {sorted(unknown)}; its options are {sorted(names)}. "
                "Was this adapter written by a newer splice?"
            )
        return cls(**{k: v for k, v in data.items() if k != "method"})

    # -- helpers for subclasses ---------------------------------------------------
    def _require_choice(self, field: str, value: Any, choices) -> None:
        if value not in choices:
            raise ConfigError(f"{type(self).__name__}.{field} must be one of {sorted(choices)}, got {value!r}.")

    def _require_positive(self, field: str, value: float | None, allow_none: bool = False) -> None:
        if value is None and allow_none:
            return
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ConfigError(f"{type(self).__name__}.{field} must be a positive number, got {value!r}.")

    def _require_count(self, field: str, value, allow_none: bool = False) -> None:
        if value is None and allow_none:
            return
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ConfigError(f"{type(self).__name__}.{field} must be a positive integer, got {value!r}.")

    def _require_fraction(self, field: str, value: float) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
            raise ConfigError(f"{type(self).__name__}.{field} must be a number in [0, 1), got {value!r}.")

    def _sites_for_roles(self, anatomy: Anatomy, roles: typing.Iterable[str]) -> list[Site]:
        return [site for role in roles for site in anatomy.require(role, self.layers)]


def _numbers(value: Any) -> Iterator[int | float]:
    """The numbers in an option value: itself, or those in its items (lists, tuples, mapping values)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _numbers(item)
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _numbers(item)


def expand_targets(targets: tuple[str, ...], anatomy: Anatomy) -> tuple[str, ...]:
    """Roles named by ``targets``, with ``"all-linear"`` standing for every projection the model has."""
    if targets == ("all-linear",):
        return tuple(anatomy.linear_roles())
    return targets


def normalise_targets(config: MethodConfig, field: str, allowed: tuple[str, ...]) -> None:
    """Accept a single role or "all-linear" as a string; store a tuple; reject unknown roles."""
    value = getattr(config, field)
    if isinstance(value, str):
        value = (value,)
        object.__setattr__(config, field, value)
    if not isinstance(value, tuple) or not all(isinstance(role, str) for role in value):
        raise ConfigError(
            f"{type(config).__name__}.{field} must be a role name or a list of them, e.g. ('q', 'v'); got {value!r}."
        )
    if not value:
        raise ConfigError(f"{type(config).__name__}.{field} is empty; name at least one role, e.g. ('q', 'v').")
    if value != ("all-linear",):
        bad = [role for role in value if role not in allowed]
        if bad:
            raise ConfigError(
                f"{type(config).__name__}.{field} has unknown role(s) {bad}; "
                f"use 'all-linear' or roles from {', '.join(allowed)}."
            )


def columns_of(tensor: torch.Tensor, columns, dim: int) -> torch.Tensor:
    """The part of a weight or bias along ``dim`` that a fused-projection site owns (a view for slices)."""
    if columns is None:
        return tensor
    if isinstance(columns, slice):
        return tensor.narrow(dim, columns.start, columns.stop - columns.start)
    return tensor.index_select(dim, columns.to(tensor.device))


def add_to_rows(module: nn.Module, columns, delta: torch.Tensor) -> None:
    """``W[columns] += delta`` on a linear-like module's ``[out, in]`` weight, in place."""
    weight = linear_weight(module)
    with torch.no_grad():
        if isinstance(columns, torch.Tensor):
            weight.index_add_(0, columns.to(weight.device), delta.to(weight.dtype))
        else:
            columns_of(weight, columns, 0).add_(delta.to(weight.dtype))


def base_bias(site: Site, purpose: str) -> torch.Tensor:
    """The base module's bias, or a clear error where the layer has none."""
    bias = getattr(site.module, "bias", None)
    if bias is None:
        raise AdapterError(
            f"Cannot {purpose} at {site.key}: the base layer has no bias, and adding one would change the "
            "base model's parameters. Keep this adapter unmerged (it still runs through hooks)."
        )
    return bias
