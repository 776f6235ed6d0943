"""Averaging adapters' weights into a new adapter.

Two modes:

- ``"exact"``: the new adapter's update is the weighted average of the others'
  updates, so it computes what ``Average(a, b, weights=...)`` computes, at the cost
  of one adapter. LoRA stacks the ranks (``B = [w_1 s_1 B_1 | w_2 s_2 B_2]``,
  ``A = [A_1; A_2]``); IA³ and BitFit average their vectors, which is exact
  because the model is linear in each of them at its site.
- ``"parameters"``: every tensor averaged as is (FedAvg); configs must be identical.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Sequence

import torch

from .adapter import Adapter
from .errors import AdapterError
from .heads import head_from_dict
from .methods import IA3, BitFit, LoRA

if TYPE_CHECKING:
    from .model import AdaptedModel


def average_adapters(model: "AdaptedModel", name: str, adapters: Sequence[str],
                     weights: Sequence[float] | None = None, mode: str = "exact") -> Adapter:
    """Add adapter ``name`` whose weights average ``adapters`` (weights default to equal, sum to 1)."""
    sources = [model._get(a) for a in adapters]
    weights = [1.0 / len(sources)] * len(sources) if weights is None else [float(w) for w in weights]
    if len(sources) < 2 or len(weights) != len(sources) or abs(sum(weights) - 1) > 1e-6:
        raise AdapterError(f"Averaging needs two or more adapters and one weight each, summing to 1; got {weights}.")
    if mode not in ("exact", "parameters"):
        raise AdapterError(f"Averaging mode must be 'exact' or 'parameters', got {mode!r}.")
    configs = [s.config for s in sources]
    heads = {repr(s.head_spec()) for s in sources}
    if len(heads) > 1:
        raise AdapterError(f"{list(adapters)} have different heads; only adapters with the same head average.")
    if mode == "parameters" or not isinstance(configs[0], LoRA):
        if any(c != configs[0] for c in configs):
            raise AdapterError(
                f"{list(adapters)} have different configs; averaging parameters needs identical ones "
                "(exact averaging of LoRA adapters of different ranks works with mode='exact')."
            )
        if mode == "exact" and not isinstance(configs[0], (IA3, BitFit)):
            raise AdapterError(
                f"Exact weight averaging exists for LoRA, IA3 and BitFit; {type(configs[0]).__name__} is not linear "
                "in its weights. Use the Average composition, or mode='parameters' (an approximation)."
            )
        target = model.add(name, configs[0], _head_like(sources[0]))
        with torch.no_grad():
            for key, tensor in target.state_dict(keep_vars=True).items():
                tensor.copy_(sum(w * s.state_dict()[key] for w, s in zip(weights, sources)))
        return target
    return _stack_loras(model, name, sources, weights)


def _stack_loras(model: "AdaptedModel", name: str, sources: list[Adapter], weights: list[float]) -> Adapter:
    configs = [s.config for s in sources]
    shape = [dataclasses.replace(c, r=1, alpha=1.0, rank_pattern=(), alpha_pattern=()) for c in configs]
    if any(c != shape[0] for c in shape) or any(c.rank_pattern or c.alpha_pattern for c in configs):
        raise AdapterError("Exact LoRA averaging needs the same targets, layers and options (ranks may differ; "
                           "rank/alpha patterns are not supported).")
    rank = sum(c.r for c in configs)
    # alpha = r (or sqrt(r) with rsLoRA) makes the new scaling 1: the sources' scalings go into B.
    alpha = float(rank ** 0.5) if configs[0].use_rslora else float(rank)
    target = model.add(name, dataclasses.replace(configs[0], r=rank, alpha=alpha), _head_like(sources[0]))
    with torch.no_grad():
        for key, delta in ((k, target.delta(k)) for k in target.sites):
            parts = [s.delta(key) for s in sources]
            delta.lora_A.weight.copy_(torch.cat([p.lora_A.weight for p in parts], 0))
            delta.lora_B.weight.copy_(torch.cat([w * p.scaling * p.lora_B.weight for w, p in zip(weights, parts)], 1))
    _average_heads(target, sources, weights)
    return target


def _head_like(source: Adapter):
    """A fresh head of the same kind (its weights are averaged in afterwards)."""
    return head_from_dict(source.head_spec()) if source.task_head is not None else source.head_path


def _average_heads(target: Adapter, sources: list[Adapter], weights: list[float]) -> None:
    with torch.no_grad():
        for key, tensor in target.state_dict(keep_vars=True).items():
            if key.startswith("head."):
                tensor.copy_(sum(w * s.state_dict()[key] for w, s in zip(weights, sources)))
