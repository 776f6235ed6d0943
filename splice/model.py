"""The adapted model: a frozen Hugging Face model (``base``, Θ₀) plus named adapters (ΔΘ).

It forwards ``forward``, ``generate`` and attribute access to the base, so it
works with the HF ``Trainer``, ``generate`` and pipelines, and keeps the
bookkeeping of which adapters exist, which are active, and which are merged.
"""

from __future__ import annotations

import os
import weakref
from typing import TYPE_CHECKING, Iterable, Mapping, Sequence

import torch
from torch import nn

from .adapter import Adapter, adapter_named, check_name
from .anatomy import Anatomy, RoleSpec
from .errors import AdapterError
from .heads import Head, apply_heads
from .hooks.hookset import HookSet
from .hooks.input_grads import InputGrads
from .merge_quantized import RoundingReport
from .merging import check_unmerge_order, merge_into_base, unmerge_from_base
from .methods import METHODS
from .methods.base import MethodConfig
from .methods.fusion import Fusion
from .quantize import prepare_for_kbit_training
from .routing.batch import batch_size, replicate
from .routing.capture import GraphCapture
from .routing.compose import BatchSplit, Parallel, Setup
from .routing.planner import HeadGroups, Planner

if TYPE_CHECKING:
    from .to_lora import LoRAApproximation

_ATTACHED: "weakref.WeakSet[nn.Module]" = weakref.WeakSet()


class AdaptedModel(GraphCapture, nn.Module):
    """A Hugging Face model with adapters spliced in through forward hooks.

    Create one with :func:`splice.attach`. The base's parameters are frozen at
    attach time and only :meth:`merge` ever writes to them. For CUDA graphs and
    ``torch.compile``: :meth:`reserve`, :meth:`freeze_routing`, :meth:`route`.
    """

    def __init__(self, base: nn.Module, roles: Mapping[str, RoleSpec] | None = None):
        super().__init__()
        if base in _ATTACHED:
            raise AdapterError("This model is already attached; use the AdaptedModel splice.attach returned.")
        self.anatomy = Anatomy(base, roles)
        self.base = base
        self.adapters = nn.ModuleDict()
        self.hooks = HookSet(self.anatomy)
        self._merged: list[str] = []
        self.planner = Planner(self.adapters, self._merged, self._device)
        self._setup: Setup | None = None
        self._plan: dict = {}
        self._skip_layers: frozenset[int] = frozenset()
        self._drop_p = 0.0
        self._input_grads = InputGrads(base)
        base.requires_grad_(False)
        self.train(base.training)  # keep the base's mode (HF models load in eval mode)
        _ATTACHED.add(base)

    # -- delegation to the base ---------------------------------------------------------
    def forward(self, *args, adapter_names: Sequence[Setup] | None = None, **kwargs):
        """Run the base with the active setup, or row ``i`` with ``adapter_names[i]`` (``"__base__"``: none).

        A splice head of the setup adds logits (and a loss when targets are given).
        The routing state stays in place until the next forward, so gradient
        checkpointing recomputes with the same state.
        """
        args, kwargs, groups = self._prepare(args, kwargs, adapter_names)
        self.hooks.skip_layers = self._skip_layers | self._sampled_drop()
        if not groups:
            return self.base(*args, **kwargs)
        return apply_heads(self.base, groups, args, kwargs)

    def generate(self, *args, adapter_names: Sequence[Setup] | None = None, **kwargs):
        """The base model's ``generate`` under the active setup, or per row with ``adapter_names``.

        Prompt and prefix adapters' soft tokens are not returned: sequences hold the
        caller's ids and the new tokens, as without them.
        """
        if isinstance(self._setup, Parallel) and adapter_names is None:
            raise AdapterError("generate() does not run a Parallel setup; activate one adapter or pass adapter_names.")
        args, kwargs, _ = self._prepare(args, kwargs, adapter_names)
        self.hooks.skip_layers = self._skip_layers
        return self.hooks.soft.generate(self.base, args, kwargs)

    def _prepare(self, args: tuple, kwargs: dict, adapter_names) -> tuple[tuple, dict, HeadGroups]:
        """Install this forward's plan; replicate the batch for Parallel. Returns the heads to run."""
        if adapter_names is not None:
            batch = batch_size(args, kwargs)
            if batch is not None and len(adapter_names) != batch:
                raise AdapterError(f"adapter_names has {len(adapter_names)} entries for a batch of {batch} rows.")
            self.hooks.plan, groups = self.planner.per_row(list(adapter_names))
            return args, kwargs, groups
        if isinstance(self._setup, Parallel):
            batch = batch_size(args, kwargs)
            copies = len(self._setup.children)
            args, kwargs = replicate(args, kwargs, batch, copies)
            entries = [child for child in self._setup.children for _ in range(batch)]
            self.hooks.plan, groups = self.planner.per_row(entries)
            return args, kwargs, groups
        self.hooks.plan = self._plan
        if isinstance(self._setup, BatchSplit):
            return args, kwargs, self.planner.split_groups(self._setup, self._setup.batch_sizes)
        head = self.planner.head_of(self._setup)
        return args, kwargs, [(head, None)] if head is not None else []

    def _sampled_drop(self) -> frozenset[int]:
        """AdapterDrop in training: each block's adapters are skipped with probability ``drop_p``."""
        if not (self.training and self._drop_p > 0):
            return frozenset()
        layers = max(len(blocks) for blocks in self.anatomy.blocks.values())
        return frozenset(torch.nonzero(torch.rand(layers) < self._drop_p).flatten().tolist())

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
        """Names of the adapters the active setup uses (fusions with the adapters they fuse)."""
        return self.planner.names(self._setup)

    @property
    def setup(self) -> Setup | None:
        """The active setup: a name or a composition block (None: the base alone)."""
        return self._setup

    @property
    def merged(self) -> tuple[str, ...]:
        """Names of the adapters folded into the base weights, in merge order."""
        return tuple(self._merged)

    def _get(self, name: str) -> Adapter:
        return adapter_named(self.adapters, name)

    # -- management ----------------------------------------------------------------------
    def add(self, name: str, config: MethodConfig, head: str | Head | None = None) -> Adapter:
        """Add a fresh adapter ``name`` of method ``config``; it leaves outputs unchanged until trained.

        ``head`` is a splice head (``splice.heads.Classification(num_labels=3)``, ...) run
        on the backbone's hidden states, or the path of a base prediction head (such as
        ``"classifier"``, or ``"auto"``) that the adapter gets its own trainable copy of. The new
        adapter is neither active nor trainable: see :meth:`activate` and :meth:`train_adapter`.
        """
        self._check_new(name)
        if not isinstance(config, MethodConfig):
            raise AdapterError(
                f"add() needs a method config such as splice.LoRA(r=8) or splice.Bottleneck(), got {config!r}."
            )
        adapter = Adapter(config, self.anatomy, head)
        self._register(name, adapter)
        return adapter

    def _check_new(self, name: str) -> None:
        check_name(name)
        if name in self.adapters:
            raise AdapterError(f"An adapter named {name!r} already exists; delete it first or pick another name.")

    def _device(self) -> torch.device:
        """Where the base lives (adapters go there; the row index is set there before a forward)."""
        return next((p.device for p in self.base.parameters()), torch.device("cpu"))

    def _register(self, name: str, adapter: Adapter) -> None:
        adapter.to(self._device())
        adapter.requires_grad_(False)
        adapter.train(self.training)  # a new module starts in train mode; follow the model's mode
        self.adapters[name] = adapter
        if self.routing_frozen:  # captured graphs serve it from the next replay: its slots are written now
            try:
                self.planner.resident()
            except AdapterError:
                del self.adapters[name]
                raise
        self.hooks.ensure(list(adapter.sites.values()) + ([adapter.head_site] if adapter.head_site else []))

    def activate(self, *setup: Setup | Iterable[str], skip_layers: Iterable[int] | None = None,
                 drop_first: int | None = None, drop_p: float = 0.0) -> None:
        """Make ``setup`` the active setup: a name, several names (applied in order, a Stack), or a block.

        AdapterDrop (Rücklé et al. 2020): ``skip_layers`` / ``drop_first`` turn the
        adapters of those blocks off (their hooks do no work); ``drop_p`` skips each
        block's adapters at random with that probability in training forwards.
        """
        normalised = self.planner.normalise(setup)
        skip = set(skip_layers or ()) | set(range(drop_first or 0))
        if any(not isinstance(i, int) or i < 0 for i in skip) or not 0 <= drop_p < 1:
            raise AdapterError("skip_layers and drop_first take block indices >= 0; drop_p is a probability in [0, 1).")
        self._setup, self._skip_layers, self._drop_p = normalised, frozenset(skip), float(drop_p)
        self._replan()

    def disable(self) -> None:
        """Run the base model alone (merged adapters stay folded in until unmerged)."""
        self._setup, self._skip_layers, self._drop_p = None, frozenset(), 0.0
        self._replan()

    def delete(self, name: str) -> None:
        """Remove an adapter (unmerging it first if it is merged)."""
        self._get(name)
        users = [n for n, a in self.adapters.items() if name in a.config.fused_adapters]
        if users:
            raise AdapterError(f"Fusion(s) {', '.join(users)} fuse {name!r}; delete them first.")
        if name in self._merged:
            self.unmerge(name)
        self._setup = self.planner.without(self._setup, name)
        del self.adapters[name]
        self._replan()

    def train_adapter(self, name: str | Sequence[str], setup: Setup | None = None) -> None:
        """Make adapter(s) ``name`` the only trainable part (with heads), activate, and set train mode.

        ``setup`` activates a composition instead of ``name`` alone, e.g. training a
        task adapter on top of a frozen language adapter: ``train_adapter("task", Stack("lang", "task"))``.
        Several names train together (multi-task batches routed with ``adapter_names``).
        On a quantized base (4-bit/8-bit) this also prepares it for k-bit training, as peft's
        ``prepare_model_for_kbit_training`` does (see :func:`splice.quantize.prepare_for_kbit_training`:
        half-precision float parameters outside the quantized layers widen to float32); the quantized
        weights stay as they are.
        """
        names = [name] if isinstance(name, str) else list(name)
        trained = [self._get(n) for n in names]
        merged = [n for n in names if n in self._merged]
        if merged:
            raise AdapterError(f"{merged} merged into the base weights; unmerge before training.")
        self.base.requires_grad_(False)
        prepare_for_kbit_training(self.base)
        for other in self.adapters.values():
            other.requires_grad_(any(other is a for a in trained))
        self.activate(setup if setup is not None else names)
        self.train()
        self._input_grads.install()  # so that reentrant gradient checkpointing still reaches the adapters

    def add_fusion(self, name: str, adapters: Sequence[str], head: str | Head | None = None,
                   temperature: float = 1.0, query_from: str = "output", attend: str = "outputs") -> Adapter:
        """Add an AdapterFusion over trained bottleneck ``adapters`` (train it with :meth:`train_fusion`).

        ``query_from="adapter_input", attend="deltas"`` computes AdapterHub's AdapterFusion (see
        :class:`splice.methods.Fusion`)."""
        fused = [self._get(a) for a in adapters]
        wrong = [a for a, adapter in zip(adapters, fused)
                 if not adapter.sites or not all(delta.fusable for _, delta in adapter.items())]
        if wrong:
            raise AdapterError(
                f"Fuse works over bottleneck adapters (it attends over sublayer outputs); {wrong} are not. "
                "See the composition table in the README."
            )
        roles = sorted({site.role for adapter in fused for site in adapter.sites.values()})
        config = Fusion(adapters=tuple(adapters), roles=tuple(roles), temperature=temperature, query_from=query_from,
                        attend=attend)
        return self.add(name, config, head)

    def train_fusion(self, name: str) -> None:
        """Train only the fusion ``name`` (and its head); the fused adapters and the base stay frozen."""
        if not self._get(name).config.fused_adapters:
            raise AdapterError(f"{name!r} is not a fusion; add one with model.add_fusion(name, adapters).")
        self.train_adapter(name)

    def average(self, name: str, adapters: Sequence[str], weights: Sequence[float] | None = None,
                mode: str = "exact", **options) -> Adapter:
        """Add ``name``, a weighted average of ``adapters``' weights (see :mod:`splice.averaging`).

        ``mode="exact"`` (LoRA, IA3, BitFit) computes what ``Average(...)`` computes, as one
        adapter; ``mode="parameters"`` averages every tensor of identically configured adapters (FedAvg).
        peft's modes for LoRA adapters (``"cat"``, ``"svd"``, ``"ties"``, ``"dare_ties"``, ...; options
        ``density``, ``majority_sign_method``, ``svd_rank``, ``seed``, ...: see :mod:`splice.combine`) use
        ``weights`` as given, as peft's ``add_weighted_adapter`` does.
        """
        from .averaging import average_adapters

        self._check_new(name)
        adapter = average_adapters(self.anatomy, adapters, [self._get(a) for a in adapters], weights, mode, **options)
        self._register(name, adapter)
        return adapter

    def to_lora(self, name: str, new_name: str, rank: int) -> "LoRAApproximation":
        """Add ``new_name``, a LoRA of ``rank`` approximating the mergeable adapter ``name`` (SVD of its weight
        change at each site), for servers that run only LoRA; the result says how close it is per site."""
        from .to_lora import to_lora

        self._check_new(new_name)
        approximation = to_lora(self.anatomy, name, self._get(name), new_name, rank, self.merged)
        self._register(new_name, approximation.adapter)
        return approximation

    # -- merging -------------------------------------------------------------------------
    def merge(self, name: str, dequantize: bool = False) -> RoundingReport | None:
        """Fold a mergeable adapter (LoRA, IA³, BitFit, ...) into the base weights: zero cost at inference.

        On a quantized base (bitsandbytes, torchao) the packed weights cannot take the delta exactly, so
        this refuses unless ``dequantize=True``: then each touched layer is dequantized, the delta added,
        and the layer requantized; the returned :class:`~splice.merge_quantized.RoundingReport` says how
        much that rounding moved the weights (None on a float base, where the merge is exact)."""
        adapter = self._get(name)
        if not adapter.config.mergeable:
            mergeable = ", ".join(cls.__name__ for cls in METHODS.values() if cls.mergeable)
            raise AdapterError(
                f"{name!r} is a {type(adapter.config).__name__} adapter, which cannot be merged: it has no "
                f"equivalent change of the base weights. Keep it active instead; mergeable methods are {mergeable}."
            )
        if name in self._merged:
            raise AdapterError(f"{name!r} is already merged.")
        report = merge_into_base(adapter, name, dequantize)
        self._merged.append(name)
        self._replan()
        return report
    def unmerge(self, name: str) -> RoundingReport | None:
        """Take a merged adapter back out of the base weights (exact within float tolerance; on a quantized
        base, requantized again: the returned report says what that rounded)."""
        adapter = self._get(name)
        if name not in self._merged:
            raise AdapterError(f"{name!r} is not merged.")
        check_unmerge_order(self.adapters, self._merged, name)
        report = unmerge_from_base(adapter)
        self._merged.remove(name)
        self._replan()
        return report

    def detach(self) -> nn.Module:
        """Remove every hook and return the base model (merged adapters stay folded in)."""
        self.hooks.remove()
        self._input_grads.remove()
        _ATTACHED.discard(self.base)
        return self.base

    # -- files and reports -------------------------------------------------------------------
    def save(self, name: str, path: str | os.PathLike, format: str = "splice") -> None:
        """Write adapter ``name`` to folder ``path``: splice's own files (adapter.json + adapter.safetensors +
        README.md), ``format="peft"`` (LoRA, IA3) for ``peft.PeftModel.from_pretrained``, or ``format="adapters"``
        (bottleneck adapters AdapterHub can express) for ``adapters``' ``model.load_adapter``."""
        from .convert import write_as

        write_as(self.anatomy, self._get(name), name, path, format)

    def load(self, path: str | os.PathLike, name: str | None = None) -> str:
        """Load an adapter (under its saved name, or ``name``); returns the name. Does not activate it.

        ``path`` is a splice, peft or AdapterHub folder (recognised by its files), or a
        ``name@version`` in the local hub (:mod:`splice.hub`), or a Hugging Face Hub id ``org/name[@revision]``
        (:mod:`splice.hub_ids`).
        """
        from .convert import read_any

        name, adapter = read_any(self.anatomy, self.adapters, path, name)
        self._register(name, adapter)
        return name

    def push_to_hub(self, name: str, repo_id: str, format: str = "splice", private: bool | None = None,
                    token: str | None = None) -> str:
        """Upload adapter ``name`` to the Hugging Face Hub repo ``repo_id`` in ``format`` (``"splice"`` or
        ``"peft"``), with its model card; returns the commit URL. ``model.load(repo_id)`` reads it back."""
        from .hub_push import push

        return push(self.anatomy, self._get(name), name, repo_id, format, private, token)

    def summary(self, print_table: bool = True):
        """Print (and return) a table: adapter, method, trainable params, % of base, MB on disk."""
        from .summary import Summary

        report = Summary.of(self.anatomy, self.adapters, self.active, self.merged)
        if print_table:
            print(report)
        return report

    def _apply(self, fn, recurse: bool = True):
        """``to`` / ``half`` / ``cuda`` also drop the adapter banks: they refill where the adapters now live."""
        if self.routing_frozen:
            raise AdapterError("Routing is frozen for captured graphs (model.freeze_routing()), which read the "
                               "model where it is: call model.unfreeze_routing() before moving or casting it.")
        module = super()._apply(fn, recurse)
        self.planner.invalidate(banks=True)
        return module

    # -- the plan the hooks dispatch to -----------------------------------------------------------
    def _replan(self) -> None:
        self.planner.invalidate()
        self._plan = self.planner.plan(self._setup, self._skip_layers)
        self.hooks.plan = self._plan
        self.hooks.skip_layers = self._skip_layers
