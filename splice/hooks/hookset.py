"""Sites and hooks: how deltas reach the base model without touching it.

Each module that hosts a site gets one forward pre-hook and one forward hook
(PyTorch's own), installed the first time an adapter needs a site there. The
hooks dispatch to a *plan* — for each site key, the deltas of the active setup
— which the adapted model rebuilds whenever the setup changes. A site with
nothing planned costs one dictionary lookup; adding the hundredth adapter adds
no hooks. Removing the hooks gives back the original model, bit for bit: no
module is replaced, so the base ``state_dict`` keys never change.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from ..anatomy import Anatomy, Site
from .programs import Program, first_input
from .soft import SoftTokens

SOFT_ROLES = ("prompt", "prefix")


class HookSet:
    """The hooks splice installed on one base model, and the plan they dispatch to."""

    def __init__(self, anatomy: Anatomy) -> None:
        self.plan: dict[str, Program] = {}
        self.soft = SoftTokens(anatomy, lambda: self.plan)
        self.skip_layers: frozenset[int] = frozenset()
        self._sites_at: dict[nn.Module, list[Site]] = {}  # module -> sites whose output it produces
        self._inputs_at: dict[nn.Module, list[Site]] = {}  # module -> sites whose input it receives
        self._handles: list[RemovableHandle] = []
        self._hooked: set[nn.Module] = set()
        self._stash: dict[str, torch.Tensor] = {}  # site inputs captured upstream, used downstream

    def ensure(self, sites: list[Site]) -> None:
        """Install hooks for ``sites`` where none exist yet (idempotent)."""
        for site in sites:
            if site.role in SOFT_ROLES:
                for module in self.soft.ensure(site):
                    self._hook(module)
                continue
            for registry, module in ((self._sites_at, site.module), (self._inputs_at, site.input_module)):
                hosted = registry.get(module)
                if hosted is None:
                    registry[module] = hosted = []
                self._hook(module)
                if all(s.key != site.key for s in hosted):
                    hosted.append(site)
                    # Projections run before the sublayer sites sharing their module
                    # (a LoRA on BERT's attention output precedes a Houlsby adapter there).
                    hosted.sort(key=lambda s: not s.is_projection)

    def _hook(self, module: nn.Module) -> None:
        if module not in self._hooked:
            self._hooked.add(module)
            self._handles.append(module.register_forward_pre_hook(self._before, with_kwargs=True))
            self._handles.append(module.register_forward_hook(self._after, with_kwargs=True))

    def remove(self) -> None:
        """Remove every hook: the base model is exactly as it was before attach."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._hooked.clear()
        self._sites_at.clear()
        self._inputs_at.clear()
        self._stash.clear()
        self.plan = {}
        self.soft = SoftTokens(self.soft.anatomy, lambda: self.plan)

    # -- the hot path -----------------------------------------------------------------
    def _before(self, module: nn.Module, args: tuple, kwargs: dict):
        if not self.plan:
            return None
        changed = False
        for site in self._sites_at.get(module, ()):
            program = self.plan.get(site.key)
            if program is not None and program.has_pre and site.layer not in self.skip_layers:
                x = program.pre(first_input(args, kwargs))
                args, kwargs = replace_first_input(args, kwargs, x)
                changed = True
        for site in self._inputs_at.get(module, ()):
            if site.input_module is not site.module:
                program = self.plan.get(site.key)
                if program is not None and program.reads_input and site.layer not in self.skip_layers:
                    self._stash[site.key] = (site.reads or first_input)(args, kwargs)
        for handler in self.soft.before.get(module, ()):  # call rewrites see the deltas' inputs
            rewritten = handler(args, kwargs)
            if rewritten is not None:
                args, kwargs = rewritten
                changed = True
        return (args, kwargs) if changed else None

    def _after(self, module: nn.Module, args: tuple, kwargs: dict, output):
        if not self.plan:
            return None
        strip = self.soft.strip.get(module)
        changed = strip is not None
        if changed:  # soft positions leave before the site deltas see the output
            output = strip(output)
        is_tuple = isinstance(output, tuple) and not hasattr(output, "keys")
        y_full = output[0] if is_tuple else output
        for site in self._sites_at.get(module, ()):
            program = self.plan.get(site.key)
            if program is None or not program.has_post or site.layer in self.skip_layers:
                continue
            if site.input_module is module:
                x = first_input(args, kwargs)
            elif site.reads is not None:  # read once per forward, upstream of a block checkpointing may re-run
                x = self._stash.get(site.key)
            else:
                x = self._stash.pop(site.key, None)
            y = program.post(x, take_columns(y_full, site.columns))
            y_full = put_columns(y_full, site.columns, y)
            changed = True
        for handler in self.soft.after.get(module, ()):  # prefix keys/values override every delta there
            y_full = handler(args, kwargs, y_full)
            changed = True
        if not changed:
            return None
        if not isinstance(y_full, torch.Tensor):  # a whole model output, rewritten by a soft handler
            return y_full
        return (y_full, *output[1:]) if is_tuple else y_full


def replace_first_input(args: tuple, kwargs: dict, x: torch.Tensor) -> tuple[tuple, dict]:
    if args:
        return (x, *args[1:]), kwargs
    key = "hidden_states" if "hidden_states" in kwargs else next(
        k for k, v in kwargs.items() if isinstance(v, torch.Tensor))
    return args, {**kwargs, key: x}


def take_columns(y: torch.Tensor, columns) -> torch.Tensor:
    """This site's share of a (possibly fused) output's last dimension."""
    if columns is None:
        return y
    if isinstance(columns, slice):
        return y[..., columns]
    return y.index_select(-1, columns.to(y.device))


def put_columns(y: torch.Tensor, columns, part: torch.Tensor) -> torch.Tensor:
    """``y`` with this site's columns replaced by ``part`` (out of place, so autograd sees it)."""
    if columns is None:
        return part
    if isinstance(columns, slice):
        return torch.cat([y[..., : columns.start], part, y[..., columns.stop :]], dim=-1)
    return y.index_copy(-1, columns.to(y.device), part)
