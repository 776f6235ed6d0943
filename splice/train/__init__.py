"""Training on the HF Trainer: ``splice.train.train(TrainConfig(...))`` is what ``splice train`` runs.

Adapter-only checkpoints (:class:`AdapterTrainer`), data from :mod:`splice.data`,
a head per task, metrics, and the run's files (adapter, metrics.json, curves.png).
Needs the ``train`` extra (accelerate); plotting needs ``plot`` (matplotlib).
"""

from .config import TrainConfig
from .run import TrainResult, train
from .trainer import AdapterTrainer

__all__ = ["TrainConfig", "TrainResult", "train", "AdapterTrainer"]
