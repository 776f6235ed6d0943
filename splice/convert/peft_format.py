"""Facts of peft's format that its reader and its writers share: the key prefix, the options that do not change
what an adapter computes, and how splice's sites map to the modules peft names."""

from __future__ import annotations

import re
from typing import Any

import torch

from ..adapter import Adapter
from ..anatomy import Anatomy, Site
from ..anatomy.linear import linear_shape
from .peft_heads import TaskHead

PREFIX = "base_model.model."

# Options that do not change what a loaded adapter computes: bookkeeping, initialisation,
# training-time settings, and where the adapter lives (which the tensor names record).
INERT = {
    "task_type", "peft_type", "auto_mapping", "peft_version", "base_model_name_or_path", "revision",
    "inference_mode", "target_modules", "exclude_modules", "fan_in_fan_out", "modules_to_save",
    "layers_to_transform", "layers_pattern", "megatron_core", "runtime_config", "qalora_group_size",
    "eva_config", "corda_config", "lora_ga_config", "loftq_config", "ensure_weight_tying", "init_ia3_weights",
    "feedforward_modules",  # IA3: the saved vector's shape, [1, in] or [out, 1], says which side it scales
}

def by_module(anatomy: Anatomy, adapter: Adapter, head: TaskHead | None) -> dict[str, list[tuple[Site, Any]]]:
    """The adapter's deltas by the path of their module in the model peft loads: the base, or ``head``'s task
    model (where the base sits under a prefix)."""
    prefix = head.base_prefix if head is not None else ""
    grouped: dict[str, list[tuple[Site, Any]]] = {}
    for site, delta in adapter.items():
        grouped.setdefault(prefix + anatomy.module_path(site.module), []).append((site, delta))
    return grouped


def rows(site: Site) -> torch.Tensor:
    """Indices of ``site``'s rows in its module's output."""
    return torch.arange(linear_shape(site.module)[1])[site.columns if site.columns is not None else slice(None)]


def has_conv1d(adapter: Adapter) -> bool:
    return any(type(site.module).__name__ == "Conv1D" for site, _ in adapter.items())


def peft_names(anatomy: Anatomy, head: TaskHead | None, targets: set[str], inputs: set[str]) -> tuple[Any, Any]:
    """``target_modules`` (and IA3's ``feedforward_modules``) that make peft pick exactly these modules.

    The shortest module-name suffixes that do (``["q_proj", "v_proj"]``), as users
    write them; a full-match regular expression where no suffixes are exact. The
    paths are those of the model peft loads: the base, or ``head``'s task model.
    """
    prefix = head.base_prefix if head is not None else ""
    every = [prefix + name for name, _ in anatomy.model.named_modules() if name] + list(head.modules if head else ())
    longest = max(len(path.split(".")) for path in targets)
    for depth in range(1, longest + 1):
        names = sorted({".".join(p.split(".")[-depth:]) for p in targets})
        feedforward = sorted({".".join(p.split(".")[-depth:]) for p in inputs})
        picked = {m for m in every if any(m == n or m.endswith("." + n) for n in names)}
        scaled = {m for m in targets if any(m.endswith(n) for n in feedforward)}  # peft's feedforward test
        if picked == targets and scaled == inputs:
            return names, feedforward
    return _full_match(targets), _full_match(inputs) if inputs else []


def _full_match(paths: set[str]) -> str:
    return "(" + "|".join(re.escape(p) for p in sorted(paths)) + ")"
