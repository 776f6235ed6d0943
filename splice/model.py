"""The adapted model: a frozen Hugging Face model (``base``, Θ₀) plus named adapters (ΔΘ).

It forwards ``forward``, ``generate`` and attribute access to the base, so it
works with the HF ``Trainer``, ``generate`` and pipelines, and keeps the
bookkeeping of which adapters exist, which are active, and which are merged.
"""

from __future__ import annotations

import inspect
import os
import weakref
from typing import Iterable, Mapping

import torch
from torch import nn

from .adapter import Adapter, HeadSwap, check_name
from .anatomy import Anatomy, RoleSpec
from .errors import AdapterError
from .heads import Head, apply_heads
from .hooks import HookSet, SitePlan
from .methods.base import MethodConfig

_ATTACHED: "weakref.WeakSet[nn.Module]" = weakref.WeakSet()


class AdaptedModel(nn.Module):
    """A Hugging Face model with adapters spliced in through forward hooks.

    Create one with :func:`splice.attach`. The base's parameters are frozen at
    attach time and only :meth:`merge` ever writes to them.
    """

    def __init__(self, base: nn.Module, roles: Mapping[str, RoleSpec] | None = None):
        super().__init__()
        if base in _ATTACHED:
            raise AdapterError("This model is already attached; use the AdaptedModel splice.attach returned.")
        self.anatomy = Anatomy(base, roles)
        self.base = base
        self.adapters = nn.ModuleDict()
        self.hooks = HookSet()
        self._active: tuple[str, ...] = ()
        self._merged: list[str] = []
        self._input_grads_hooked = False
        base.requires_grad_(False)
        _ATTACHED.add(base)

    # -- delegation to the base ---------------------------------------------------------
    def forward(self, *args, **kwargs):
        """Run the base with the active setup; a splice head of the active adapter adds logits and loss."""
        groups = self._head_groups()
        if not groups:
            return self.base(*args, **kwargs)
        return apply_heads(self.base, groups, args, kwargs)

    def _head_groups(self) -> list[tuple[Head, torch.Tensor | None]]:
        """The splice head to run (of the last active adapter that has one), for all rows."""
        for name in reversed(self._active):
            head = self.adapters[name].task_head
            if head is not None:
                return [(head, None)]
        return []

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in ("base", "adapters"):
                raise
            return getattr(self.base, name)

    # -- state ---------------------------------------------------------------------------
    @property
    def active(self) -> tuple[str, ...]:
        """Names of the adapters applied in the next forward, in order."""
        return self._active

    @property
    def merged(self) -> tuple[str, ...]:
        """Names of the adapters folded into the base weights, in merge order."""
        return tuple(self._merged)

    def _get(self, name: str) -> Adapter:
        if name not in self.adapters:
            known = ", ".join(self.adapters) or "none yet"
            raise AdapterError(f"No adapter named {name!r} (adapters: {known}). Add it with model.add(name, config).")
        return self.adapters[name]

    # -- management ----------------------------------------------------------------------
    def add(self, name: str, config: MethodConfig, head: str | Head | None = None) -> Adapter:
        """Add a fresh adapter ``name`` of method ``config``; it leaves outputs unchanged until trained.

        ``head`` is a splice head (``splice.heads.Classification(num_labels=3)``, ...) run
        on the backbone's hidden states, or the path of a base prediction head (such as
        ``"classifier"``, or ``"auto"``) that the adapter gets its own trainable copy of. The new
        adapter is neither active nor trainable: see :meth:`activate` and :meth:`train_adapter`.
        """
        check_name(name)
        if name in self.adapters:
            raise AdapterError(f"An adapter named {name!r} already exists; delete it first or pick another name.")
        if not isinstance(config, MethodConfig):
            raise AdapterError(
                f"add() needs a method config such as splice.LoRA(r=8) or splice.Bottleneck(), got {config!r}."
            )
        adapter = Adapter(config, self.anatomy, head)
        self._register(name, adapter)
        return adapter

    def _register(self, name: str, adapter: Adapter) -> None:
        device = next((p.device for p in self.base.parameters()), torch.device("cpu"))
        adapter.to(device)
        adapter.requires_grad_(False)
        self.hooks.ensure(list(adapter.sites.values()) + ([adapter.head_site] if adapter.head_site else []))
        self.adapters[name] = adapter

    def activate(self, *names: str | Iterable[str]) -> None:
        """Apply these adapters in the next forwards, in this order (replacing the active set)."""
        flat = []
        for item in names:
            items = [item] if isinstance(item, str) else list(item) if isinstance(item, (list, tuple)) else None
            if items is None or not all(isinstance(n, str) for n in items):
                raise AdapterError(f"activate() takes adapter names (strings) or lists of them, got {item!r}.")
            flat.extend(items)
        if not flat:
            raise AdapterError("activate() needs at least one adapter name; use disable() to run the base alone.")
        for name in flat:
            self._get(name)
        if len(set(flat)) != len(flat):
            raise AdapterError(f"activate() got a name twice: {flat}.")
        self._active = tuple(flat)
        self._replan()

    def disable(self) -> None:
        """Run the base model alone (merged adapters stay folded in until unmerged)."""
        self._active = ()
        self._replan()

    def delete(self, name: str) -> None:
        """Remove an adapter (unmerging it first if it is merged)."""
        self._get(name)
        if name in self._merged:
            self.unmerge(name)
        del self.adapters[name]
        self._active = tuple(n for n in self._active if n != name)
        self._replan()

    def train_adapter(self, name: str) -> None:
        """Make ``name`` the only trainable part (with its head), activate it, and set train mode."""
        adapter = self._get(name)
        if name in self._merged:
            raise AdapterError(f"{name!r} is merged into the base weights; unmerge it before training it.")
        self.base.requires_grad_(False)
        for other in self.adapters.values():
            other.requires_grad_(other is adapter)
        self.activate(name)
        self.train()
        # With reentrant gradient checkpointing, a checkpointed block whose inputs need no
        # grad returns none: make the (frozen) embeddings' output require grad, as peft does.
        if hasattr(self.base, "enable_input_require_grads") and not self._input_grads_hooked:
            try:
                self.base.enable_input_require_grads()
                self._input_grads_hooked = True
            except NotImplementedError:  # models without input embeddings (e.g. some vision models)
                pass

    # -- merging -------------------------------------------------------------------------
    def merge(self, name: str) -> None:
        """Fold a mergeable adapter (LoRA, IA³, BitFit) into the base weights: zero cost at inference."""
        adapter = self._get(name)
        if not adapter.config.mergeable:
            raise AdapterError(
                f"{name!r} is a {type(adapter.config).__name__} adapter, which cannot be merged: it has no "
                "equivalent change of the base weights. Keep it active instead; mergeable methods are "
                "LoRA, IA3, BitFit."
            )
        if name in self._merged:
            raise AdapterError(f"{name!r} is already merged.")
        for site, delta in adapter.items():  # refuse before writing anything
            if hasattr(delta, "check_merge"):
                delta.check_merge(site)
        done = []
        try:
            for site, delta in adapter.items():
                delta.merge(site)
                done.append((site, delta))
        except Exception:
            for site, delta in reversed(done):  # leave the base as it was
                delta.unmerge(site)
            raise
        self._merged.append(name)
        self._replan()

    def unmerge(self, name: str) -> None:
        """Take a merged adapter back out of the base weights (exact within float tolerance)."""
        adapter = self._get(name)
        if name not in self._merged:
            raise AdapterError(f"{name!r} is not merged.")
        later = self._merged[self._merged.index(name) + 1 :]
        blocking = [n for n in later + [name] if self.adapters[n].config.method == "ia3"]
        if later and blocking:
            raise AdapterError(
                f"Unmerge {', '.join(reversed(later))} before {name!r}: IA3 rescales weights, so merges "
                "only undo exactly in reverse order."
            )
        for site, delta in reversed(list(adapter.items())):
            delta.unmerge(site)
        self._merged.remove(name)
        self._replan()

    def detach(self) -> nn.Module:
        """Remove every hook and return the base model (merged adapters stay folded in)."""
        self.hooks.remove()
        if self._input_grads_hooked:
            self.base.disable_input_require_grads()
            self._input_grads_hooked = False
        _ATTACHED.discard(self.base)
        return self.base

    # -- files and reports -------------------------------------------------------------------
    def save(self, name: str, path: str | os.PathLike) -> None:
        """Write adapter ``name`` to folder ``path`` (adapter.json + adapter.safetensors + README.md)."""
        from .checkpoint import save_adapter

        save_adapter(self, name, path)

    def load(self, path: str | os.PathLike, name: str | None = None) -> str:
        """Load an adapter folder (under its saved name, or ``name``); returns the name. Does not activate it."""
        from .checkpoint import load_adapter

        return load_adapter(self, path, name)

    def summary(self, print_table: bool = True):
        """Print (and return) a table: adapter, method, trainable params, % of base, MB on disk."""
        from .summary import Summary

        report = Summary.of(self)
        if print_table:
            print(report)
        return report

    # -- the plan the hooks dispatch to -----------------------------------------------------------
    def _replan(self) -> None:
        plan: dict[str, SitePlan] = {}
        for name in self._active:
            adapter = self.adapters[name]
            if name not in self._merged:
                for site, delta in adapter.items():
                    entry = plan.setdefault(site.key, SitePlan())
                    (entry.input_deltas if delta.stage == "input" else entry.output_deltas).append(delta)
            if adapter.head_site is not None:
                plan.setdefault("head", SitePlan()).output_deltas[:] = [HeadSwap(adapter.head)]
        self.hooks.plan = plan


_CLASSES: dict[type, type] = {}


def adapted_class(base_class: type) -> type:
    """An AdaptedModel subclass whose ``forward`` advertises the base's signature.

    The HF Trainer inspects ``model.forward`` to decide which dataset columns to keep;
    a bare ``*args, **kwargs`` would make it drop them all.
    """
    if base_class not in _CLASSES:

        def forward(self, *args, **kwargs):
            return AdaptedModel.forward(self, *args, **kwargs)

        forward.__signature__ = inspect.signature(base_class.forward)
        forward.__doc__ = base_class.forward.__doc__
        _CLASSES[base_class] = type(f"Adapted{base_class.__name__}", (AdaptedModel,), {"forward": forward})
    return _CLASSES[base_class]


def attach(model: nn.Module, roles: Mapping[str, RoleSpec] | None = None) -> AdaptedModel:
    """Wrap a Hugging Face model so adapters can be added to it; its weights are frozen from here on.

    ``roles`` overrides or adds role -> module-path mappings (paths inside a block,
    e.g. ``{"q": "attn.q_proj"}``; ``"blocks"`` names the ModuleList of blocks)
    for models splice does not know.
    """
    if not isinstance(model, nn.Module):
        raise AdapterError(f"attach() needs a torch nn.Module (a Hugging Face model), got {type(model).__name__}.")
    if isinstance(model, AdaptedModel):
        raise AdapterError("This model is already attached: add adapters to it directly, or attach model.base.")
    return adapted_class(type(model))(model, roles)
