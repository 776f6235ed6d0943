"""Folding adapters into the base weights and out again: the only writes to the base splice ever makes.

Each delta knows its own fold (:meth:`~splice.methods.Delta.merge` / ``unmerge``); here is what holds for
a whole adapter: nothing is written before every site agrees, a failure half-way leaves the base as it
was, and merges that rescale weights (IA³) undo exactly only in reverse order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .adapter import Adapter
from .errors import AdapterError
from .merge_quantized import RoundingReport, check_quantized_merge, fold_quantized


def merge_into_base(adapter: Adapter, name: str, dequantize: bool = False) -> RoundingReport | None:
    """Fold every delta of ``adapter`` (called ``name``) into the base weights, or none of them.

    Packed (quantized) weights are refused unless ``dequantize``: then they are dequantized, folded and
    requantized, and the report says what that rounded (None: a float base, folded exactly)."""
    pairs = list(adapter.items())
    check_quantized_merge(name, pairs, dequantize)
    for site, delta in pairs:  # refuse before writing anything
        delta.check_merge(site)
    report = fold_quantized(pairs, "merge")
    if report is not None:
        return report
    done = []
    try:
        for site, delta in adapter.items():
            delta.merge(site)
            done.append((site, delta))
    except Exception:
        for site, delta in reversed(done):  # leave the base as it was
            delta.unmerge(site)
        raise
    return None


def unmerge_from_base(adapter: Adapter) -> RoundingReport | None:
    """Take ``adapter``'s deltas back out of the base weights (exact within float tolerance; packed weights are
    requantized again, and the report says what that rounded)."""
    pairs = list(reversed(list(adapter.items())))
    report = fold_quantized(pairs, "unmerge")
    if report is None:
        for site, delta in pairs:
            delta.unmerge(site)
    return report


def check_unmerge_order(adapters: Mapping[str, Adapter], merged: Sequence[str], name: str) -> None:
    """Refuse to unmerge ``name`` while a later merge sits on top of it, when either rescales weights."""
    later = list(merged[merged.index(name) + 1:])
    rescaling = [type(adapters[n].config).__name__ for n in later + [name] if not adapters[n].config.merges_commute]
    if later and rescaling:
        raise AdapterError(
            f"Unmerge {', '.join(reversed(later))} before {name!r}: {rescaling[0]} rescales weights, so merges "
            "only undo exactly in reverse order."
        )
