"""The server's side: any Flower strategy aggregates, and after each round the global adapter is written to disk."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from ..checkpoint import write_adapter
from ..train.run import write_json
from .setup import Federated
from .tensors import array_bytes, load_arrays


class RoundWriter(Strategy):
    """``strategy`` as it is, plus: after each round, ``out/round-N`` holds the global adapter as a splice folder.

    The folder's ``adapter.json`` (and model card) records the round, the clients' aggregated training metrics,
    how many examples they trained on, and the bytes the round moved (adapter tensors down to and up from the
    clients: the payload, without gRPC framing); ``out/rounds.json`` lists every round's facts, with the clients'
    evaluation of the global adapter where the strategy asks for one. ``say`` gets one line per round.
    """

    def __init__(self, strategy: Strategy, run: Federated, out: str | Path, record: dict | None = None,
                 say: Callable[[str], None] = print) -> None:
        self.strategy, self.run, self.out = strategy, run, Path(out)
        self.record, self.say = dict(record or {}), say
        self.rounds: dict[int, dict] = {}

    def summary(self) -> None:
        self.strategy.summary()

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
        self.rounds[server_round] = {"round": server_round, "clients": len(messages),
                                     "bytes_down": sum(_payload(m) for m in messages)}
        return messages

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        arrays, metrics = self.strategy.aggregate_train(server_round, replies)
        answered = [m for m in replies if not m.has_error()]
        facts = self.rounds.setdefault(server_round, {"round": server_round, "bytes_down": 0})
        facts.update(replied=len(answered), bytes_up=sum(_payload(m) for m in answered),
                     examples=sum(int(m.content["metrics"].get("num-examples", 0)) for m in answered
                                  if "metrics" in m.content),
                     train_metrics=dict(metrics or {}))
        if arrays is not None:
            self.write(server_round, arrays)
        return arrays, metrics

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        metrics = self.strategy.aggregate_evaluate(server_round, replies)
        if metrics is not None and server_round in self.rounds:
            self.rounds[server_round]["evaluate_metrics"] = dict(metrics)
            self._write_rounds()
        return metrics

    def write(self, server_round: int, arrays: ArrayRecord) -> Path:
        """Save ``arrays`` as the adapter of round ``server_round`` under ``out``."""
        facts = self.rounds[server_round]
        load_arrays(self.run.model, self.run.name, arrays)
        model = self.run.model
        folder = write_adapter(model.anatomy, model.adapters[self.run.name], self.run.name,
                               self.out / f"round-{server_round}", training={**self.record, "federated": facts})
        self._write_rounds()
        self.say(f"round {server_round}: {facts.get('replied', 0)} clients, {facts.get('examples', 0):,} examples, "
                 f"{facts['bytes_down']:,} bytes down + {facts['bytes_up']:,} bytes up; "
                 f"train loss {facts['train_metrics'].get('train-loss', float('nan')):.4f} -> {folder}")
        return folder


    def _write_rounds(self) -> None:
        write_json(self.out / "rounds.json", {"rounds": [self.rounds[r] for r in sorted(self.rounds)]})


def _payload(message: Message) -> int:
    return sum(array_bytes(record) for record in message.content.array_records.values())
