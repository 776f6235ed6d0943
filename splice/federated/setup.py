"""The model both sides of a federation build from one TrainConfig: the backbone and the run's fresh adapter.

The server needs it to write each round's global adapter as a splice folder; each client to train.
Both add the adapter under the same seed, so the first round starts from the same weights everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..adapted import attach
from ..data import Splits
from ..errors import SpliceError
from ..model import AdaptedModel
from ..train.backbone import load_backbone, task_head
from ..train.config import TrainConfig
from ..train.run import adapter_name, read_splits


@dataclass
class Federated:
    """A run's data, model, tokenizer and the name of the adapter that travels."""

    splits: Splits
    model: AdaptedModel
    tokenizer: object
    name: str


def build(config: TrainConfig) -> Federated:
    """Read ``config``'s data and backbone and add its adapter (and head), seeded by ``config.seed``."""
    from transformers import set_seed

    from ..methods import recipe

    if config.streaming:
        raise SpliceError("Federated training shards the rows among its clients in memory; it does not stream "
                          "(drop --streaming).")
    splits = read_splits(config)
    base, tokenizer = load_backbone(config.model, config.task)
    set_seed(config.seed)
    model = attach(base)
    name = adapter_name(config)
    model.add(name, recipe(config.method).config(config.options),
              head=task_head(config.task, splits.labels, config.head_layers, config.pooling, config.head_dropout))
    return Federated(splits, model, tokenizer, name)
