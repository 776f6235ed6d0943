"""The Flower apps: a ``ClientApp`` and a ``ServerApp`` that read everything from Flower's run and node config.

Run config (``[tool.flwr.app.config]`` of the Flower app's pyproject.toml, or ``flwr run -c``): every
:class:`~splice.train.TrainConfig` field in kebab-case (``model``, ``data``, ``method``, ``epochs``,
``learning-rate``, ``limit``, ...; ``options`` as a JSON object, ``sizes`` as ``"a,b,c"``), plus

- ``num-server-rounds`` (default 3), ``out`` (default ``out/federated``: ``round-N/`` folders, rounds.json);
- ``strategy``: ``fedavg`` (default), ``fedprox`` (with ``proximal-mu``, default 0.01) or ``fedadam``;
- ``min-clients`` (default 2): clients a round waits for; ``evaluate`` (default true): clients evaluate
  each round's adapter on their validation shard.

Node config (``flower-supernode --node-config``): ``partition-id`` and ``num-partitions``, Flower's usual
keys; client ``k`` of ``n`` trains on every ``n``-th row of the train split from row ``k``.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAdam, FedAvg, FedProx, Strategy

from ..errors import ConfigError
from ..train.config import TrainConfig
from .client import LocalTrainer
from .server import RoundWriter
from .setup import build
from .tensors import adapter_arrays

FEDERATION_KEYS = ("num-server-rounds", "out", "strategy", "proximal-mu", "min-clients", "evaluate")
STRATEGIES = ("fedavg", "fedprox", "fedadam")


def train_config_from(run_config: Mapping[str, Any]) -> TrainConfig:
    """The :class:`TrainConfig` a run config describes (federation keys ignored; an unknown key is refused)."""
    import dataclasses

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    values: dict[str, Any] = {}
    for key, value in run_config.items():
        if key in FEDERATION_KEYS:
            continue
        name = key.replace("-", "_")
        if name not in fields:
            raise ConfigError(f"Unknown run config key {key!r}: use TrainConfig's fields in kebab-case or one of "
                              f"{', '.join(FEDERATION_KEYS)}.")
        values[name] = value
    if isinstance(values.get("options"), str):
        try:
            values["options"] = json.loads(values["options"] or "{}")
        except json.JSONDecodeError as error:
            raise ConfigError(f"Run config 'options' must be a JSON object, got {values['options']!r}.") from error
    if isinstance(values.get("sizes"), str):
        values["sizes"] = tuple(float(v) if "." in v else int(v) for v in values["sizes"].split(","))
    return TrainConfig(**values)


def strategy_from(run_config: Mapping[str, Any]) -> Strategy:
    """FedAvg (weighted by ``num-examples``), FedProx or FedAdam, waiting for ``min-clients`` clients."""
    name = str(run_config.get("strategy", "fedavg")).lower()
    clients = int(run_config.get("min-clients", 2))
    evaluate = 1.0 if run_config.get("evaluate", True) else 0.0
    common = dict(fraction_train=1.0, fraction_evaluate=evaluate, min_train_nodes=clients,
                  min_evaluate_nodes=clients, min_available_nodes=clients)
    if name == "fedavg":
        return FedAvg(**common)
    if name == "fedprox":
        return FedProx(**common, proximal_mu=float(run_config.get("proximal-mu", 0.01)))
    if name == "fedadam":
        return FedAdam(**common)
    raise ConfigError(f"Unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}.")


client_app = ClientApp()
_trainers: dict[tuple, LocalTrainer] = {}  # a process serving many rounds reads its backbone and data once


def _trainer(context: Context) -> LocalTrainer:
    key = (repr(sorted(context.run_config.items())), context.node_config.get("partition-id", 0))
    if key not in _trainers:
        _trainers[key] = LocalTrainer(train_config_from(context.run_config),
                                      int(context.node_config.get("partition-id", 0)),
                                      int(context.node_config.get("num-partitions", 1)))
    return _trainers[key]


@client_app.train()
def _train(message: Message, context: Context) -> Message:
    config = message.content.config_records.get("config", ConfigRecord())
    arrays, metrics = _trainer(context).fit(message.content["arrays"], float(config.get("proximal-mu", 0.0)))
    return Message(RecordDict({"arrays": arrays, "metrics": MetricRecord(metrics)}), reply_to=message)


@client_app.evaluate()
def _evaluate(message: Message, context: Context) -> Message:
    metrics = _trainer(context).evaluate(message.content["arrays"])
    return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=message)


server_app = ServerApp()


@server_app.main()
def _main(grid: Grid, context: Context) -> None:
    run_config = context.run_config
    config = train_config_from(run_config)
    run = build(config)
    record = {"model": config.model, "task": config.task, "data": run.splits.source, "method": config.method,
              "options": config.options, "max_length": config.tokens, "epochs_per_round": config.epochs,
              "learning_rate": config.rate, "seed": config.seed, "strategy": str(run_config.get("strategy", "fedavg"))}
    writer = RoundWriter(strategy_from(run_config), run, str(run_config.get("out", "out/federated")), record)
    writer.start(grid=grid, initial_arrays=adapter_arrays(run.model, run.name),
                 num_rounds=int(run_config.get("num-server-rounds", 3)))
