"""Task metrics, in plain Python: accuracy, macro-F1 and a per-class table; entity-level F1 for tagging.

Entity F1 follows seqeval's default (conlleval) reading of BIO tags: an entity
starts at ``B-X``, or at an ``I-X`` that does not continue an entity of type X;
a prediction counts only if its span and type both match exactly.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence


def classification_metrics(predicted: Sequence[int], gold: Sequence[int], labels: Sequence[str]) -> dict:
    """accuracy, macro_f1 and ``per_class`` {label: precision, recall, f1, support}."""
    pairs = list(zip(predicted, gold))
    per_class = {}
    for i, label in enumerate(labels):
        tp = sum(p == i and g == i for p, g in pairs)
        predicted_i = sum(p == i for p, _ in pairs)
        support = sum(g == i for _, g in pairs)
        per_class[label] = _prf(tp, predicted_i, support)
    accuracy = sum(p == g for p, g in pairs) / max(len(pairs), 1)
    macro_f1 = sum(row["f1"] for row in per_class.values()) / max(len(per_class), 1)
    return {"accuracy": accuracy, "macro_f1": macro_f1, "per_class": per_class}


def entities(tags: Sequence[str]) -> set[tuple[str, int, int]]:
    """(type, start, end) spans in a BIO tag sequence (end exclusive)."""
    spans, kind, start = set(), None, 0
    for i, tag in enumerate([*tags, "O"]):
        prefix, _, name = tag.partition("-")
        continues = prefix == "I" and name == kind
        if kind is not None and not continues:
            spans.add((kind, start, i))
            kind = None
        if prefix in ("B", "I") and not continues:
            kind, start = name, i
    return spans


def entity_metrics(predicted: Sequence[Sequence[str]], gold: Sequence[Sequence[str]]) -> dict:
    """Micro precision/recall/F1 over entities, ``per_type`` rows, and token accuracy."""
    found, true = Counter(), Counter()
    hits = Counter()
    correct_tokens = total_tokens = 0
    for p_tags, g_tags in zip(predicted, gold):
        p_spans, g_spans = entities(p_tags), entities(g_tags)
        for span in p_spans:
            found[span[0]] += 1
        for span in g_spans:
            true[span[0]] += 1
        for span in p_spans & g_spans:
            hits[span[0]] += 1
        correct_tokens += sum(a == b for a, b in zip(p_tags, g_tags))
        total_tokens += len(g_tags)
    overall = _prf(sum(hits.values()), sum(found.values()), sum(true.values()))
    per_type = {kind: _prf(hits[kind], found[kind], true[kind]) for kind in sorted(set(true) | set(found))}
    return {**overall, "token_accuracy": correct_tokens / max(total_tokens, 1), "per_type": per_type}


def _prf(tp: int, predicted: int, support: int) -> dict:
    precision = tp / predicted if predicted else 0.0
    recall = tp / support if support else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "support": support}


def per_class_table(rows: dict[str, dict], title: str = "class") -> str:
    """A plain-text table of precision / recall / F1 / support per class or entity type."""
    width = max([len(title), *(len(k) for k in rows)])
    lines = [f"{title:<{width}}  precision  recall     f1  support"]
    for name, row in rows.items():
        lines.append(f"{name:<{width}}  {row['precision']:9.3f}  {row['recall']:6.3f}  {row['f1']:5.3f}  "
                     f"{row['support']:7d}")
    return "\n".join(lines)
