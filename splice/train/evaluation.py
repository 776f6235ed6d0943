"""Metrics inside the Trainer (each evaluation) and the full report at the end (per-class tables, perplexity)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from .encode import IGNORE
from .metrics import classification_metrics, entity_metrics

# The validation metric that picks the best checkpoint (the Trainer reads eval_<metric>).
TASK_METRIC = {"classification": "accuracy", "tagging": "f1", "causal-lm": "loss"}


def keep_predictions(logits, labels) -> torch.Tensor:
    """Keep only the predicted ids, so evaluation holds ``[rows]`` / ``[rows, tokens]`` rather than all logits."""
    if isinstance(logits, tuple):
        logits = logits[0]
    return logits.argmax(-1)


def compute_metrics(task: str, labels: Sequence[str]) -> Callable:
    """The Trainer's ``compute_metrics`` for ``task``: scalar metrics only (they go into the logs)."""

    def scalars(prediction) -> dict:
        report = score(task, prediction.predictions, prediction.label_ids, labels)
        return {k: v for k, v in report.items() if isinstance(v, (int, float))}

    return scalars


def score(task: str, predicted: np.ndarray, gold: np.ndarray, labels: Sequence[str]) -> dict:
    """The task's full metrics from predicted and gold ids (-100 marks positions to ignore)."""
    if task == "classification":
        return classification_metrics(predicted.reshape(-1).tolist(), gold.reshape(-1).tolist(), labels)
    predicted_tags, gold_tags = [], []
    for p_row, g_row in zip(predicted, gold):
        keep = g_row != IGNORE
        predicted_tags.append([labels[i] for i in p_row[keep]])
        gold_tags.append([labels[i] for i in g_row[keep]])
    return entity_metrics(predicted_tags, gold_tags)


def full_metrics(trainer, dataset, task: str, labels: Sequence[str] | None, prefix: str) -> dict:
    """Every metric of ``task`` on ``dataset`` (with per-class / per-type rows, or perplexity)."""
    if task == "causal-lm":
        loss = trainer.evaluate(dataset, metric_key_prefix=prefix)[f"{prefix}_loss"]
        return {"loss": loss, "perplexity": math.exp(loss)}
    output = trainer.predict(dataset, metric_key_prefix=prefix)
    return score(task, output.predictions, output.label_ids, labels)
