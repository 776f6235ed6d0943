"""splice.federated: a Flower round in process (client apps called with Flower messages, the strategy aggregating
their replies) and the global adapter it writes, checked against ``splice fedavg`` on the clients' adapters."""

from __future__ import annotations

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp.strategy import FedAdam, FedAvg, FedProx
from safetensors.torch import load_file

from splice.cli import main
from splice.errors import ConfigError
from splice.federated import RoundWriter, adapter_arrays, array_bytes, client_app, load_arrays, train_config_from
from splice.federated.apps import strategy_from
from splice.federated.setup import build

from train_fixtures import save_tiny, sentiment_csv

CLIENTS = 3


@pytest.fixture(scope="module")
def run_config(tmp_path_factory):
    folder = tmp_path_factory.mktemp("federated")
    model = save_tiny("bert", folder / "tiny-bert")
    # 61 rows: the train split (49) does not divide by 3, so the clients' example counts differ
    data = sentiment_csv(folder / "sentiment.csv", rows=61)
    return {"model": str(model), "data": str(data), "method": "pfeiffer", "epochs": 1, "batch-size": 8,
            "learning-rate": 0.01, "max-length": 16, "num-server-rounds": 1, "min-clients": CLIENTS,
            "out": str(folder / "out")}


def ask(message_type: str, arrays: ArrayRecord, config: dict, partition: int, run_config: dict) -> Message:
    """Call the client app as a SuperNode would, for client ``partition`` of ``CLIENTS``."""
    message = Message(RecordDict({"arrays": arrays, "config": ConfigRecord(config)}), dst_node_id=partition + 1,
                      message_type=message_type)
    context = Context(run_id=1, node_id=partition + 1, state=RecordDict(), run_config=run_config,
                      node_config={"partition-id": partition, "num-partitions": CLIENTS})
    return client_app(message, context)


def test_one_round_writes_the_example_weighted_average_of_the_clients_adapters(run_config, tmp_path):
    server = build(train_config_from(run_config))
    start = adapter_arrays(server.model, server.name)
    replies = [ask(MessageType.TRAIN, start, {"server-round": 1}, k, run_config) for k in range(CLIENTS)]
    counts = [int(reply.content["metrics"]["num-examples"]) for reply in replies]
    assert len(set(counts)) > 1 and sum(counts) == 49  # every train row once, uneven shards

    writer = RoundWriter(FedAvg(min_available_nodes=CLIENTS), server, tmp_path / "global", say=lambda line: None)
    arrays, metrics = writer.aggregate_train(1, replies)
    assert "train-loss" in metrics
    # what travelled is the adapter (deltas + head) and nothing of the base
    assert set(arrays.keys()) == set(server.model.adapters[server.name].state_dict())
    assert writer.rounds[1]["bytes_up"] == CLIENTS * array_bytes(start)

    folders = []
    for k, reply in enumerate(replies):  # the clients' adapters as folders, averaged offline by `splice fedavg`
        load_arrays(server.model, server.name, reply.content["arrays"])
        server.model.save(server.name, tmp_path / f"client{k}")
        folders.append(str(tmp_path / f"client{k}"))
    assert main(["-q", "fedavg", *folders, "--weights", ",".join(map(str, counts)), "--out",
                 str(tmp_path / "fedavg"), "--model", run_config["model"]]) == 0
    flower = load_file(tmp_path / "global" / "round-1" / "adapter.safetensors")
    offline = load_file(tmp_path / "fedavg" / "adapter.safetensors")
    assert flower.keys() == offline.keys()
    for key in offline:
        torch.testing.assert_close(flower[key], offline[key], rtol=1e-5, atol=1e-6)
    clients = [load_file(f"{folder}/adapter.safetensors") for folder in folders]
    assert any(not torch.equal(clients[0][k], clients[1][k]) for k in offline)  # the clients really differed

    loaded = build(train_config_from(run_config)).model
    loaded.load(tmp_path / "global" / "round-1", name="global")  # a normal splice folder, with the round on its card
    card = (tmp_path / "global" / "round-1" / "README.md").read_text()
    assert "federated" in card


def test_client_evaluates_the_global_adapter_on_its_validation_shard(run_config):
    server = build(train_config_from(run_config))
    reply = ask(MessageType.EVALUATE, adapter_arrays(server.model, server.name), {}, 0, run_config)
    metrics = reply.content["metrics"]
    assert metrics["num-examples"] > 0 and 0 <= metrics["accuracy"] <= 1


def test_fedprox_proximal_term_keeps_the_client_near_the_global_adapter(run_config):
    server = build(train_config_from(run_config))
    start = adapter_arrays(server.model, server.name)
    before = start.to_torch_state_dict()

    def distance(mu: float) -> float:
        reply = ask(MessageType.TRAIN, start, {"proximal-mu": mu}, 0, {**run_config, "learning-rate": 0.05})
        after = reply.content["arrays"].to_torch_state_dict()
        return sum(((after[k] - before[k]) ** 2).sum().item() for k in before)

    assert distance(100.0) < distance(0.0)


def test_run_config_maps_to_train_config_and_strategies():
    config = train_config_from({"method": "lora", "options": '{"r": 4}', "sizes": "0.8,0.1,0.1", "epochs": 2,
                                "num-server-rounds": 5, "strategy": "fedprox"})
    assert (config.method, config.options, config.sizes, config.epochs) == ("lora", {"r": 4}, (0.8, 0.1, 0.1), 2)
    assert isinstance(strategy_from({}), FedAvg)
    assert isinstance(strategy_from({"strategy": "fedprox", "proximal-mu": 0.1}), FedProx)
    assert isinstance(strategy_from({"strategy": "FedAdam"}), FedAdam)
    with pytest.raises(ConfigError, match="Unknown strategy 'krum'"):
        strategy_from({"strategy": "krum"})
    with pytest.raises(ConfigError, match="Unknown run config key 'epoch'"):
        train_config_from({"epoch": 1})
    with pytest.raises(ConfigError, match="JSON object"):
        train_config_from({"options": "r=4"})
