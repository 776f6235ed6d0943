"""Training on the HF Trainer: ``splice.train.train(TrainConfig(...))`` is what ``splice train`` runs.

Adapter-only checkpoints (:class:`AdapterTrainer`), data from :mod:`splice.data`,
a head per task, metrics, and the run's files (adapter, metrics.json, curves.png).
Needs the ``train`` extra (accelerate); plotting needs ``plot`` (matplotlib).

The names below are imported on first use (PEP 562): the ``splice`` command
line reads :mod:`.config`, which needs no torch, to build its parser, and should
not wait for the Trainer's imports. (The ``--method`` recipes are declared on the
method configs: see :func:`splice.methods.recipes`.)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_LAZY = {"TrainConfig": "config", "TrainResult": "run", "train": "run", "AdapterTrainer": "trainer"}

if TYPE_CHECKING:
    from .config import TrainConfig
    from .run import TrainResult, train
    from .trainer import AdapterTrainer


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'splice.train' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value
    return value


__all__ = ["TrainConfig", "TrainResult", "train", "AdapterTrainer"]
