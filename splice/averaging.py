"""Averaging adapters' weights into a new adapter.

Two modes:

- ``"exact"``: the new adapter's update is the weighted average of the others'
  updates, so it computes what ``Average(a, b, weights=...)`` computes, at the cost
  of one adapter. Methods that can do this say so (``averages_exactly``) and say how:
  the config of the average (:meth:`~splice.methods.MethodConfig.averaged`) and its
  tensors (:meth:`~splice.methods.Delta.average_of`). LoRA stacks the ranks; IA³ and
  BitFit average their vectors, which is exact because the model is linear in each
  of them at its site.
- ``"parameters"``: every tensor averaged as is (FedAvg); configs must be identical.

peft's combination modes for LoRA adapters (``"cat"``, ``"ties"``, ``"dare_linear"``, the ``*_svd`` modes, ...)
use the weights as given and live in :mod:`splice.combine_adapters`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch

from .adapter import Adapter
from .anatomy import Anatomy
from .combine import MODES, CombineOptions
from .combine_adapters import combine_adapters
from .errors import AdapterError
from .heads import head_from_dict
from .methods import METHODS, MethodConfig


def average_adapters(anatomy: Anatomy, adapters: Sequence[str], sources: Sequence[Adapter],
                     weights: Sequence[float] | None = None, mode: str = "exact", **options) -> Adapter:
    """A new adapter for ``anatomy`` whose weights average ``sources`` (named ``adapters``; weights default to
    equal, sum to 1). The caller adds it to the model.

    ``options`` (``density``, ``svd_rank``, ``seed``, ...) belong to the combination modes of
    :mod:`splice.combine`, which take the weights as given.
    """
    if mode in MODES:
        try:
            combination = CombineOptions(**options)
        except TypeError:
            raise AdapterError(f"Unknown option(s) {sorted(options)} for mode {mode!r}; the options are "
                               f"{', '.join(f.name for f in dataclasses.fields(CombineOptions))}.") from None
        return combine_adapters(anatomy, adapters, sources, weights, mode, combination)
    if mode not in ("exact", "parameters"):
        raise AdapterError(f"Averaging mode must be 'exact', 'parameters' or one of {', '.join(MODES)}; got {mode!r}.")
    if options:
        raise AdapterError(f"Mode {mode!r} takes no options ({sorted(options)}); they belong to the combination "
                           f"modes {', '.join(MODES)}.")
    weights = [1.0 / len(sources)] * len(sources) if weights is None else [float(w) for w in weights]
    if len(sources) < 2 or len(weights) != len(sources) or abs(sum(weights) - 1) > 1e-6:
        raise AdapterError(f"Averaging needs two or more adapters and one weight each, summing to 1; got {weights}.")
    configs = [s.config for s in sources]
    heads = {repr(s.head_spec()) for s in sources}
    if len(heads) > 1:
        raise AdapterError(f"{list(adapters)} have different heads; only adapters with the same head average.")
    if mode == "parameters":
        if any(c != configs[0] for c in configs):
            raise AdapterError(
                f"{list(adapters)} have different configs; averaging parameters needs identical ones "
                "(mode='exact' averages adapters of different shapes where the method can, e.g. LoRA ranks)."
            )
        target = _fresh(anatomy, configs[0], sources[0])
        with torch.no_grad():
            for key, tensor in target.state_dict(keep_vars=True).items():
                tensor.copy_(sum(w * s.state_dict()[key] for w, s in zip(weights, sources)))
        return target
    if not configs[0].averages_exactly:
        exact = ", ".join(cls.__name__ for cls in METHODS.values() if cls.averages_exactly)
        raise AdapterError(
            f"Exact weight averaging exists for {exact}; {type(configs[0]).__name__} is not linear in its weights. "
            "Use the Average composition, or mode='parameters' (an approximation)."
        )
    if any(type(c) is not type(configs[0]) for c in configs):
        raise AdapterError(f"{list(adapters)} are adapters of different methods; only one method's adapters average.")
    target = _fresh(anatomy, configs[0].averaged(configs), sources[0])
    for key in target.sites:
        target.delta(key).average_of([s.delta(key) for s in sources], weights)
    _average_heads(target, sources, weights)
    return target


def _fresh(anatomy: Anatomy, config: MethodConfig, like: Adapter) -> Adapter:
    """A new adapter of ``config`` on ``like``'s device, with a head of ``like``'s kind."""
    device = next((p.device for p in like.parameters()), torch.device("cpu"))
    return Adapter(config, anatomy, _head_like(like)).to(device)


def _head_like(source: Adapter):
    """A fresh head of the same kind (its weights are averaged in afterwards)."""
    return head_from_dict(source.head_spec()) if source.task_head is not None else source.head_path


def _average_heads(target: Adapter, sources: list[Adapter], weights: list[float]) -> None:
    with torch.no_grad():
        for key, tensor in target.state_dict(keep_vars=True).items():
            if key.startswith("head."):
                tensor.copy_(sum(w * s.state_dict()[key] for w, s in zip(weights, sources)))
