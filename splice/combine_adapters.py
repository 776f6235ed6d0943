"""``model.average(name, adapters, weights, mode=...)`` for peft's combination modes: one new LoRA
adapter made of several LoRA adapters site by site (the math is in :mod:`splice.combine`).

The new adapter is an ordinary LoRA (scaling 1, the rank each mode gives): it saves, loads, merges and
routes like any other. Sites are visited in the base model's module order, the order peft visits them,
so the random draws of the dare modes line up with peft's for the same seed.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Sequence

import torch

from .adapter import Adapter
from .combine import SVD_MODES, CombineOptions, LoRAFactors, combine_site
from .errors import AdapterError
from .methods.lora import LoRA

if TYPE_CHECKING:
    from .anatomy import Anatomy, Site


def combine_adapters(anatomy: Anatomy, adapters: Sequence[str], sources: Sequence[Adapter],
                     weights: Sequence[float] | None, mode: str, options: CombineOptions) -> Adapter:
    """A new adapter for ``anatomy``: ``sources`` (LoRA, named ``adapters``) combined by ``mode`` with ``weights``
    as given. The caller adds it to the model.

    ``cat`` needs the adapters on the same sites; the other modes, like peft, combine at each site the
    adapters that adapt it, so the result adapts every site any of them does.
    """
    options.check(mode)
    sources = list(sources)
    if len(sources) < 2 or weights is None or len(weights) != len(sources):
        raise AdapterError(f"Mode {mode!r} needs two or more adapters and one weight each (used as given, not "
                           f"normalised, as in peft); got adapters {list(adapters)} and weights {weights}.")
    weights = [float(w) for w in weights]
    if not all(math.isfinite(w) for w in weights):
        raise AdapterError(f"Weights must be finite numbers; got {weights}.")
    _check_sources(list(adapters), sources, mode)
    config = _union_config(anatomy, list(adapters), sources)
    sites = _in_module_order(anatomy, {key: site for s in sources for key, site in s.sites.items()}.values())
    # peft combines, at each site, the adapters that have one there (with their weights)
    parts = {site.key: [(w, _factors(s, site)) for w, s in zip(weights, sources) if site.key in s.sites]
             for site in sites}
    if mode in SVD_MODES and options.svd_rank is None:  # peft's default: the largest rank of any adapter
        options = dataclasses.replace(options, svd_rank=max(p.A.shape[0] for ps in parts.values() for _, p in ps))
    device = sources[0].delta(next(iter(sources[0].sites))).lora_A.weight.device
    generator = None if options.seed is None else torch.Generator(device).manual_seed(options.seed)
    with torch.no_grad():
        pairs = {key: combine_site(mode, [p for _, p in site_parts], [w for w, _ in site_parts], options, generator)
                 for key, site_parts in parts.items()}
    target = Adapter(_config_for(config, {key: a.shape[0] for key, (a, _) in pairs.items()}), anatomy).to(device)
    with torch.no_grad():
        for key, (a, b) in pairs.items():
            delta = target.delta(key)
            delta.lora_A.weight.copy_(a)
            delta.lora_B.weight.copy_(b / delta.scaling)  # a site whose rank differs from r keeps scaling != 1
    return target


def _check_sources(names: list[str], sources: list[Adapter], mode: str) -> None:
    wrong = [n for n, s in zip(names, sources) if type(s.config) is not LoRA]
    if wrong:
        kinds = {n: type(s.config).__name__ for n, s in zip(names, sources)}
        raise AdapterError(
            f"Mode {mode!r} combines LoRA adapters; {wrong} are not LoRA ({kinds}). Convert a mergeable adapter to "
            "a LoRA first (model.to_lora), or use mode='exact' for adapters of one other method."
        )
    keys = [sorted(s.sites) for s in sources]
    if mode == "cat" and any(k != keys[0] for k in keys):
        raise AdapterError(
            f"Mode 'cat' needs adapters on the same sites; {names} target different projections or layers "
            f"({_where(names, sources)}). The other modes combine, at each site, the adapters found there."
        )
    headed = [n for n, s in zip(names, sources) if s.head is not None]
    if headed:
        raise AdapterError(f"Mode {mode!r} combines LoRA weights only, and {headed} carry a head; use mode='exact' "
                           "(a weighted average that includes heads) or combine adapters without heads.")


def _union_config(anatomy: Anatomy, names: list[str], sources: list[Adapter]) -> LoRA:
    """The first adapter's options on every site any of them adapts, or a refusal where no LoRA config says
    exactly those sites (e.g. q in block 0 only and v in block 1 only)."""
    roles = tuple(dict.fromkeys(site.role for s in sources for site in s.sites.values()))
    layers = None if any(s.config.layers is None for s in sources) else tuple(
        sorted({layer for s in sources for layer in s.config.layers}))
    config = dataclasses.replace(sources[0].config, targets=roles, layers=layers)
    union = {key for s in sources for key in s.sites}
    extra = {site.key for site in config.sites(anatomy)} - union
    if extra:
        raise AdapterError(f"{names} adapt sites ({_where(names, sources)}) whose union no one LoRA covers without "
                           f"also adapting {sorted(extra)}; combine adapters on matching roles and layers.")
    return config


def _where(names: list[str], sources: list[Adapter]) -> str:
    return ", ".join(f"{n}: {s.config.targets} layers {s.config.layers}" for n, s in zip(names, sources))


def _in_module_order(anatomy: Anatomy, sites) -> list["Site"]:
    """``sites`` in the order the base model lists their modules (peft's order), fused roles in site order."""
    position = {id(module): i for i, module in enumerate(anatomy.model.modules())}
    return sorted(sites, key=lambda site: position.get(id(site.module), -1))


def _factors(adapter: Adapter, site: "Site") -> LoRAFactors:
    delta = adapter.delta(site.key)
    return LoRAFactors(delta.lora_A.weight.detach(), delta.lora_B.weight.detach(), delta.scaling)


def _config_for(first: LoRA, ranks: dict[str, int]) -> LoRA:
    """``first``'s options with scaling 1 at rank ``r`` (the largest site rank) and the other ranks as a pattern."""
    r = max(ranks.values())
    pattern = {key: rank for key, rank in ranks.items() if rank != r}
    return dataclasses.replace(first, r=r, alpha=float(r), use_rslora=False, rank_pattern=pattern, alpha_pattern=())
