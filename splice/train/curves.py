"""``curves.png``: training loss and the validation metric over steps, from the Trainer's log history.

Plotting is optional (``pip install 'splice[plot]'``): without matplotlib the
run still finishes and says the plot was skipped.
"""

from __future__ import annotations

import os
from pathlib import Path


def curves(log_history: list[dict], metric: str) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """(step, training loss) and (step, validation ``metric``) points from the Trainer's log history."""
    loss = [(e["step"], e["loss"]) for e in log_history if "loss" in e and "step" in e]
    evaluated = [(e["step"], e[f"eval_{metric}"]) for e in log_history if f"eval_{metric}" in e]
    return loss, evaluated


def plot_curves(log_history: list[dict], metric: str, path: Path, title: str) -> Path | None:
    """Write the plot to ``path`` (atomically); ``None`` if matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display on servers; must precede pyplot
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    loss, evaluated = curves(log_history, metric)
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    left.plot(*zip(*loss) if loss else ([], []), color="tab:blue")
    left.set(xlabel="step", ylabel="training loss", title="training loss")
    right.plot(*zip(*evaluated) if evaluated else ([], []), marker="o", color="tab:orange")
    right.set(xlabel="step", ylabel=f"validation {metric}", title=f"validation {metric}")
    for axes in (left, right):
        axes.grid(alpha=0.3)
    figure.suptitle(title)
    figure.tight_layout()
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp.png")
    figure.savefig(partial, dpi=100)
    plt.close(figure)
    os.replace(partial, path)
    return path
