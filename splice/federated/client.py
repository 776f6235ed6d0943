"""A client's side of a round: put the global adapter in, train it on the local shard, hand its tensors back."""

from __future__ import annotations

import sys
import tempfile
from contextlib import redirect_stdout
from pathlib import Path

import torch
from flwr.app import ArrayRecord

from ..errors import ConfigError
from ..train.config import TrainConfig
from ..train.encode import Collator, encode, pad_id
from ..train.evaluation import compute_metrics, keep_predictions
from ..train.run import training_arguments
from ..train.trainer import AdapterTrainer
from .setup import build
from .tensors import adapter_arrays, load_arrays

_TIMINGS = ("runtime", "per_second", "preparation_time", "epoch")  # the Trainer's bookkeeping, not metrics


class LocalTrainer:
    """One client: shard ``partition`` of ``partitions`` of ``config``'s train and validation splits.

    Each :meth:`fit` trains the adapter it is given for ``config.epochs`` (or ``max_steps``) on the HF
    ``Trainer`` with ``splice train``'s optimiser, schedule and precision; nothing is checkpointed to disk.
    """

    def __init__(self, config: TrainConfig, partition: int, partitions: int) -> None:
        if not 0 <= partition < partitions:
            raise ConfigError(f"partition-id must be in 0..{partitions - 1}, got {partition}.")
        self.config = config
        self.run = build(config)
        tokenizer, splits = self.run.tokenizer, self.run.splits
        self.train_rows = encode(splits.train[partition::partitions], config.task, tokenizer, config.tokens,
                                 splits.labels)
        self.validation_rows = encode(splits.validation[partition::partitions], config.task, tokenizer,
                                      config.tokens, splits.labels)
        if not self.train_rows:
            raise ConfigError(f"Client {partition} of {partitions} has no training rows; use fewer partitions.")

    def fit(self, arrays: ArrayRecord, proximal_mu: float = 0.0) -> tuple[ArrayRecord, dict[str, float]]:
        """Train from ``arrays``; return the trained adapter's tensors and ``num-examples`` and ``train-loss``.

        ``proximal_mu`` > 0 adds FedProx's ``mu/2 · ||w - w_global||²`` over the adapter's tensors to the loss
        (Flower's ``FedProx`` strategy sends it as ``proximal-mu``)."""
        load_arrays(self.run.model, self.run.name, arrays)
        trainer = self._trainer()
        if proximal_mu > 0:
            trainer.proximal = (proximal_mu, {key: t.detach().clone() for key, t in self._tensors().items()})
        with redirect_stdout(sys.stderr):  # the Trainer's log lines are progress, not results
            result = trainer.train()
        return adapter_arrays(self.run.model, self.run.name), {
            "num-examples": len(self.train_rows), "train-loss": float(result.training_loss)}

    def evaluate(self, arrays: ArrayRecord) -> dict[str, float]:
        """The global adapter's validation metrics on this client's shard, with ``num-examples``."""
        load_arrays(self.run.model, self.run.name, arrays)
        if not self.validation_rows:
            return {"num-examples": 0}
        with redirect_stdout(sys.stderr):
            found = self._trainer().evaluate(self.validation_rows, metric_key_prefix="eval")
        metrics = {key.removeprefix("eval_").replace("_", "-"): float(value) for key, value in found.items()
                   if isinstance(value, (int, float)) and not key.endswith(_TIMINGS)}
        return {**metrics, "num-examples": len(self.validation_rows)}

    def _tensors(self) -> dict[str, torch.Tensor]:
        return dict(self.run.model.adapters[self.run.name].named_parameters())

    def _trainer(self) -> "ProximalTrainer":
        config, run = self.config, self.run
        run.model.train_adapter(run.name)
        scratch = Path(tempfile.gettempdir()) / "splice-federated"  # never written: saving is off
        args = training_arguments(config, scratch, progress=False, eval_strategy="no", save_strategy="no",
                                  load_best_model_at_end=False, metric_for_best_model=None)
        classifies = config.task != "causal-lm"
        return ProximalTrainer(
            tensors=self._tensors(), model=run.model, args=args, adapter_name=run.name, train_dataset=self.train_rows,
            data_collator=Collator(pad_id(run.tokenizer)),
            compute_metrics=compute_metrics(config.task, run.splits.labels) if classifies else None,
            preprocess_logits_for_metrics=keep_predictions if classifies else None)


class ProximalTrainer(AdapterTrainer):
    """``AdapterTrainer`` that adds FedProx's proximal term when :attr:`proximal` holds ``(mu, global tensors)``."""

    def __init__(self, *args, tensors: dict[str, torch.Tensor], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.tensors = tensors
        self.proximal: tuple[float, dict[str, torch.Tensor]] | None = None

    def compute_loss(self, model, inputs, *args, **kwargs):
        loss = super().compute_loss(model, inputs, *args, **kwargs)
        if self.proximal is None:
            return loss
        mu, start = self.proximal
        term = sum(((self.tensors[key] - start[key]) ** 2).sum() for key in start)
        if isinstance(loss, tuple):  # (loss, outputs) when the Trainer asks for outputs
            return (loss[0] + mu / 2 * term, *loss[1:])
        return loss + mu / 2 * term
