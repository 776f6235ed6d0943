"""The method contract, written down: a frozen config that says *where* a method acts
(:class:`MethodConfig`), and a small module per site that says *what* it does there
(:class:`Delta`). Both declare what the method can do — merge, average, run many
adapters in one routed call, be fused, add soft positions — as class attributes
and methods with defaults here, which the model, planner, routing, averaging and
CLI read: nothing outside a method asks what a method is. A :class:`Recipe` is a
``splice train --method`` entry. Methods register with :func:`splice.methods.register`.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from ..anatomy import Anatomy, Site, dequantized_weight, is_quantized, linear_weight
from ..errors import AdapterError, ConfigError

STAGES = ("output", "input", "soft", "composite")  # how the hooks run a delta: see Delta
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "swish": nn.SiLU, "silu": nn.SiLU, "tanh": nn.Tanh}
# No option of any method needs a number larger than this (ranks, lengths, scales, token ids): a rank of
# 10**8 or a scale of 1e300 is a typo or a hostile file, and would fail later as an allocation error or NaNs.
MAX_MAGNITUDE = 1_000_000


@dataclass(frozen=True)
class Recipe:
    """One ``splice train --method NAME`` entry a method offers: option defaults, a learning rate, a line of help.

    ``build`` makes the config from the options (default: the config class the recipe is declared on, see
    :meth:`MethodConfig.training_recipes`); ``trains_base``: full fine-tuning, where the base's weights train too.
    """

    defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    learning_rate: float = 1e-3
    help: str = ""
    trains_base: bool = False
    build: Callable[..., MethodConfig] | None = None

    def config(self, options: Mapping[str, Any]) -> MethodConfig:
        """The config for the user's ``options`` over this recipe's defaults."""
        if self.build is None:
            raise ConfigError("This recipe is not bound to a method yet: take it from splice.methods.recipes().")
        try:
            return self.build(**{**self.defaults, **options})
        except TypeError as error:  # an option the config does not take
            raise ConfigError(f"Bad method option: {error}. Options with defaults: {dict(self.defaults)}.") from error


@dataclass(frozen=True, kw_only=True)
class MethodConfig:
    """Base of every method config: frozen, validated on construction, JSON round-trippable.

    ``layers`` restricts the method to those block indices (``None``: every block).
    Every number in every option (also inside lists and mappings) must be finite and
    at most ``MAX_MAGNITUDE`` in size, checked here once for all methods; each
    method's ``validate`` then checks what its own options mean.

    Subclasses declare ``method`` (the name the registry and saved adapters know them by) and their
    capabilities as class attributes, read by the model, averaging and the converters:

    - ``mergeable``: its deltas fold into the base weights (:meth:`Delta.merge`);
    - ``merges_commute``: merges of it undo in any order (additive updates); False (rescaling, IA³): adapters
      merged after one of it must be unmerged first;
    - ``averages_exactly``: :meth:`averaged` gives one adapter computing a weighted average of several;
    - ``recipes``: its ``splice train --method`` entries (see :meth:`training_recipes`);

    and, as a property, ``fused_adapters``: the adapters a fusion-like config attends over.
    """

    method: ClassVar[str] = ""
    mergeable: ClassVar[bool] = False
    merges_commute: ClassVar[bool] = True
    averages_exactly: ClassVar[bool] = False
    recipes: ClassVar[Mapping[str, Recipe] | None] = None

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

    def build(self, site: Site, anatomy: Anatomy) -> Delta:
        """A fresh delta module for ``site``; a fresh adapter must not change the model's output (soft
        positions, which start random, excepted)."""
        raise NotImplementedError

    def shared(self, anatomy: Anatomy) -> nn.Module | None:
        """Tensors that every site of one adapter reads (VeRA's frozen random projections), or None (default).

        Built once per adapter (not per site), kept as its ``shared`` module and handed to each of its deltas
        by :meth:`Delta.use_shared`; its persistent buffers are saved once, under ``shared.``. Buffers, not
        parameters: shared state never trains.
        """
        return None

    def folded(self) -> "MethodConfig":
        """The config a save writes (a delta's ``folded_state`` gives the matching tensors); usually itself."""
        return self

    @property
    def fused_adapters(self) -> tuple[str, ...]:
        """The other adapters this one attends over at run time (a fusion's); empty for ordinary methods."""
        return ()

    def averaged(self, configs: Sequence["MethodConfig"]) -> "MethodConfig":
        """The config of one adapter that computes the weighted average of what adapters of ``configs``
        compute (``self`` is the first), for ``model.average(mode="exact")``; :meth:`Delta.average_of` fills it.

        Only asked where ``averages_exactly``. This default suits methods linear in each tensor at its
        site (IA³, BitFit): adapters of identical configs average tensor by tensor.
        """
        if any(config != self for config in configs):
            raise AdapterError(
                f"Exact averaging of {type(self).__name__} adapters averages their tensors, so it needs identical "
                f"configs; these differ: {list(configs)}."
            )
        return self

    @classmethod
    def training_recipes(cls) -> dict[str, Recipe]:
        """The ``splice train --method`` entries of this class, each with its ``build`` and ``help`` set.

        The class's own ``recipes`` (not inherited ones: a subclass is another method); without them,
        one recipe named after the method, with the class's defaults and a learning rate of 1e-3.
        """
        own = cls.__dict__.get("recipes")
        if own is None:
            own = {cls.method: Recipe()}
        summary = (cls.__doc__ or "").strip().split("\n")[0]
        return {name: dataclasses.replace(recipe, build=recipe.build or cls, help=recipe.help or summary)
                for name, recipe in own.items()}

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

    def sites_for(self, anatomy: Anatomy, roles: typing.Iterable[str]) -> list[Site]:
        """Every site of ``roles`` in this config's ``layers``, role by role (what most methods' :meth:`sites`
        return), or a clear error naming a role the model lacks."""
        return [site for role in roles for site in anatomy.require(role, self.layers)]


class Delta(nn.Module):
    """What a method adds at one site: the contract every delta module follows.

    Its ``stage`` says how the hooks run it:

    - ``"output"``: ``forward(x, y) -> y'`` gets the site's input ``x`` and output ``y`` (only this role's
      columns of a fused projection) and returns the new output: ``y + f(y)`` (sequential bottleneck),
      ``y + f(x)`` (parallel bottleneck, LoRA, bias delta), ``y * l`` (IA³ on an output). ``reads_input``
      says whether it needs ``x`` (the hooks stash it only then);
    - ``"input"``: ``forward(x) -> x'`` changes the site's input before the module runs (IA³ on the FFN's
      inner activation);
    - ``"soft"``: ``soft() -> tuple of [S, ...]`` gives positions the method adds to the call: prompt
      embeddings at the ``prompt`` site, prefix keys and values at ``prefix`` sites (put in by
      :mod:`splice.hooks.soft`);
    - ``"composite"``: ``program()`` compiles several deltas at one site into one program (Union).

    Its optional capabilities each have a default here, so nothing outside a method asks whether a delta has one:

    - shared state (configs whose ``shared`` gives a module): ``use_shared(shared)`` receives it once built;
    - saving: ``folded_state()``, the tensors a save writes (default: the state dict; a delta trained
      through a reparameterisation folds it away, matching its config's ``folded()``);
    - merging (configs with ``mergeable``): ``merge(site)`` / ``unmerge(site)`` fold the delta into, and back
      out of, the base weight in place; ``check_merge(site)`` raises before any weight is written where a
      site cannot take the merge; ``weight_change(site)`` says what a merge would add to the weight and bias
      (default: a trial merge into a float64 copy), which :mod:`splice.to_lora` factors into a LoRA;
    - averaging (configs with ``averages_exactly``): ``average_of(parts, weights)`` makes this fresh delta the
      weighted average of ``parts``, the same site's deltas of other adapters (default: tensor by tensor);
    - per-row routing (``banked = True``): the static ``bank_sources(delta)`` — the tensors (and per-adapter
      constants) one adapter puts in a bank slot — and ``routed(first, table, rows, x, y)`` (``routed(first,
      table, rows, x)`` for an input stage), which computes every row at once from ``table`` (``{name:
      [slots + 1, ...]}``, the last slot the identity, filled from ``bank_identity``, default 0) and ``rows``
      (a :class:`splice.kernels.RowSlots`), e.g. through :mod:`splice.kernels`. ``route_key(delta)`` names
      options that must match to share a call; ``bank_inputs(delta)``, the tensors a slot is computed from
      (default: the delta's parameters and buffers), whose in-place changes make the bank rewrite the slot;
    - fusion (``fusable = True``): ``change(x, y)`` (what the delta adds to ``y``) and ``adapter_input(x, y)``
      (what it reads), which a fusion with ``attend="deltas"`` or ``query_from="adapter_input"`` attends over.
    """

    stage: str = "output"
    reads_input: bool = False
    banked: bool = False
    bank_identity: Mapping[str, float] = {}
    fusable: bool = False

    def soft(self) -> tuple[torch.Tensor, ...]:
        """Soft positions, each ``[S, ...]`` (stage ``"soft"``)."""
        raise NotImplementedError(f"{type(self).__name__} (stage {self.stage!r}) adds no soft positions.")

    def program(self):
        """The program of a composite delta at its site (stage ``"composite"``)."""
        raise NotImplementedError(f"{type(self).__name__} (stage {self.stage!r}) is not a composite delta.")

    def folded_state(self) -> dict[str, torch.Tensor]:
        """The tensors a save writes, by name (default: the state dict)."""
        return self.state_dict(keep_vars=True)

    def use_shared(self, shared: nn.Module) -> None:
        """Take the adapter's shared module (configs whose :meth:`MethodConfig.shared` gives one); a delta
        keeps it outside its own submodules, so it is saved, moved and counted once, with the adapter."""
        raise NotImplementedError(f"{type(self).__name__} reads no shared state, but its config built some.")

    def check_merge(self, site: Site) -> None:
        """Raise, before any weight is written, where ``site`` cannot take this delta's merge (default: every
        site can)."""

    def merge(self, site: Site) -> None:
        """Fold this delta into ``site``'s base weight, in place."""
        raise AdapterError(f"{type(self).__name__} has no merge into the base weights.")

    def unmerge(self, site: Site) -> None:
        """Take this delta back out of ``site``'s base weight, in place."""
        raise AdapterError(f"{type(self).__name__} has no merge into the base weights.")

    def weight_change(self, site: Site) -> tuple[torch.Tensor, torch.Tensor | None]:
        """What :meth:`merge` adds to ``site``'s ``[out, in]`` weight (its rows of a fused one) and to its bias
        (None where it has none), in float64, leaving the base untouched (used to convert to LoRA).

        Default: merge into a float64 copy of the site's weight and bias and subtract, so every mergeable
        method has it, whether its update is additive (LoRA) or a rescaling (IA³).
        """
        copy = _WeightCopy(site.module)
        self.merge(dataclasses.replace(site, module=copy, input_module=copy))
        weight = columns_of(copy.weight, site.columns, 0) - columns_of(copy.original_weight, site.columns, 0)
        if copy.bias is None:
            return weight, None
        return weight, columns_of(copy.bias, site.columns, 0) - columns_of(copy.original_bias, site.columns, 0)

    def average_of(self, parts: Sequence["Delta"], weights: Sequence[float]) -> None:
        """Make this fresh delta the weighted average of ``parts`` (default: every tensor averaged)."""
        with torch.no_grad():
            for key, tensor in self.state_dict(keep_vars=True).items():
                tensor.copy_(sum(w * part.state_dict()[key] for w, part in zip(weights, parts)))

    @staticmethod
    def route_key(delta: "Delta") -> tuple:
        """Options that deltas must share to run in one routed call, beyond class and tensor shapes."""
        return ()

    @staticmethod
    def bank_sources(delta: "Delta") -> dict[str, torch.Tensor | float]:
        """The tensors (and per-adapter constants) one adapter puts in a bank slot (``banked`` deltas)."""
        raise NotImplementedError(f"{type(delta).__name__} is not banked.")

    @staticmethod
    def bank_inputs(delta: "Delta") -> list[torch.Tensor]:
        """What :meth:`bank_sources` computes the slot from, watched for in-place changes (``banked`` deltas):
        sources computed from parameters (VeRA's ``λ ⊙ A``) are fresh tensors, whose own versions never move."""
        return [*delta.parameters(), *delta.buffers()]

    @staticmethod
    def routed(first: "Delta", table: dict[str, torch.Tensor], rows, *tensors: torch.Tensor) -> torch.Tensor:
        """Every row of a mixed batch at once, each with its own slot of ``table`` (``banked`` deltas)."""
        raise NotImplementedError(f"{type(first).__name__} is not banked.")

    def change(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """What this delta adds to the output ``y`` (``fusable`` deltas)."""
        raise NotImplementedError(f"{type(self).__name__} is not fusable.")

    def adapter_input(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """What this delta reads at its site (``fusable`` deltas)."""
        raise NotImplementedError(f"{type(self).__name__} is not fusable.")


class _WeightCopy(nn.Module):
    """A float64 stand-in for a linear-like module, weight laid out ``[out, in]``, for a trial merge."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.original_weight = linear_weight(module).detach().to(torch.float64)
        self.weight = nn.Parameter(self.original_weight.clone(), requires_grad=False)
        bias = getattr(module, "bias", None)
        self.original_bias = None if bias is None else bias.detach().to(torch.float64)
        self.bias = None if bias is None else nn.Parameter(self.original_bias.clone(), requires_grad=False)


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


def float_weight(site: Site, what: str) -> torch.Tensor:
    """``site``'s module weight as ``[out, in]`` floats, for methods that read the base weight itself (DoRA's
    norms, PiSSA's start): on a quantized base, the weight the layer computes with, dequantized (as peft's
    QDoRA does) — a fresh tensor each call, the packed one untouched."""
    if is_quantized(site.module):
        return dequantized_weight(site.module)
    weight = linear_weight(site.module)
    if not weight.is_floating_point():
        raise AdapterError(f"{what} reads the base weight at {site.key}, which is stored as {weight.dtype} "
                           f"({type(site.module).__name__}); splice cannot dequantize it.")
    return weight


def set_rows(module: nn.Module, columns, value: torch.Tensor) -> None:
    """``W[columns] = value`` on a linear-like module's ``[out, in]`` weight, in place (for merges that rescale
    rows: adding the difference instead would round it at the scale of the old weight)."""
    weight = linear_weight(module)
    with torch.no_grad():
        if isinstance(columns, torch.Tensor):
            weight.index_copy_(0, columns.to(weight.device), value.to(weight.dtype))
        else:
            columns_of(weight, columns, 0).copy_(value.to(weight.dtype))


def base_bias(site: Site, purpose: str) -> torch.Tensor:
    """The base module's bias, or a clear error where the layer has none."""
    bias = getattr(site.module, "bias", None)
    if bias is None:
        raise AdapterError(
            f"Cannot {purpose} at {site.key}: the base layer has no bias, and adding one would change the "
            "base model's parameters. Keep this adapter unmerged (it still runs through hooks)."
        )
    return bias
