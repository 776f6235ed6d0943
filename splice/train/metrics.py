"""Task metrics: accuracy, macro-F1 and a per-class table; entity-level F1 for tagging, by seqeval.

Entity F1 is seqeval's default (conlleval) reading of BIO tags: an entity starts
at ``B-X``, or at an ``I-X`` that does not continue an entity of type X; a
prediction counts only if its span and type both match exactly.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

from ..errors import SpliceError


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


def entity_metrics(predicted: Sequence[Sequence[str]], gold: Sequence[Sequence[str]]) -> dict:
    """Micro precision/recall/F1 over entities, ``per_type`` rows, and token accuracy, scored by seqeval."""
    try:
        from seqeval.metrics import accuracy_score, classification_report
    except ImportError:
        raise SpliceError("Entity F1 needs seqeval: pip install 'splice[train]'.") from None
    gold, predicted = [list(tags) for tags in gold], [list(tags) for tags in predicted]
    with warnings.catch_warnings():  # seqeval warns about scores of 0/0 (no entities); those are 0, as before
        warnings.simplefilter("ignore")
        report = classification_report(gold, predicted, output_dict=True, zero_division=0)
        token_accuracy = accuracy_score(gold, predicted) if any(gold) else 0.0
    rows = {name: {"precision": float(row["precision"]), "recall": float(row["recall"]), "f1": float(row["f1-score"]),
                   "support": int(row["support"])} for name, row in report.items()}
    overall = rows.get("micro avg", {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0})
    per_type = {name: row for name, row in rows.items() if not name.endswith(" avg")}
    return {**overall, "token_accuracy": float(token_accuracy), "per_type": per_type}


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
