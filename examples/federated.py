"""Federated averaging of adapters, simulated: K clients, disjoint data shards, R rounds of local training + FedAvg.

On-device personalisation keeps data on each device and sends only the adapter
(about a megabyte) to a server, which averages them weighted by each client's
data size (FedAvg, McMahan et al. 2017) and sends the average back. This script
runs that loop on one machine with real data (tweet sentiment, real MiniLM) and
compares the averaged adapter after each round with one adapter trained
centrally on all shards for the same number of passes over the data.

    python examples/federated.py [--clients 4] [--rounds 3] [--train 2000]

`splice fedavg A B ... --weights n1,n2,...` is the same averaging for adapter folders.
"""

from __future__ import annotations

import argparse
import time

import torch

import splice
from splice.data import load_data
from splice.train.backbone import load_backbone, task_head
from splice.train.encode import Collator, encode, pad_id


def batches(encoded: list[dict], collate: Collator, size: int, shuffle: torch.Generator | None = None):
    order = torch.randperm(len(encoded), generator=shuffle).tolist() if shuffle else range(len(encoded))
    rows = [encoded[i] for i in order]
    for start in range(0, len(rows), size):
        yield collate(rows[start:start + size])


def train_locally(model, name: str, encoded: list[dict], collate: Collator, epochs: int, seed: int) -> None:
    """A client's local training: AdamW over its own shard, only adapter ``name`` (and its head) trainable."""
    model.train_adapter(name)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.01)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for batch in batches(encoded, collate, 32, generator):
            loss = model(**batch).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()


@torch.no_grad()
def accuracy(model, name: str, encoded: list[dict], collate: Collator) -> float:
    model.activate(name)
    model.eval()
    correct = 0
    for batch in batches(encoded, collate, 64):
        labels = batch.pop("labels")
        correct += (model(**batch).logits.argmax(-1) == labels).sum().item()
    return correct / len(encoded)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--train", type=int, default=2000, help="training tweets, split among the clients")
    parser.add_argument("--validation", type=int, default=1000)
    args = parser.parse_args()

    splits = load_data("tweet-sentiment", "classification", sizes=(args.train, args.validation, 0))
    base, tokenizer = load_backbone("minilm", "classification")
    collate = Collator(pad_id(tokenizer))
    validation = encode(splits.validation, "classification", tokenizer, 64, splits.labels)
    shards = [encode(splits.train[k::args.clients], "classification", tokenizer, 64, splits.labels)
              for k in range(args.clients)]
    sizes = [len(shard) for shard in shards]
    print(f"{args.clients} clients with {sizes} tweets each (disjoint); {args.rounds} rounds of 1 local epoch")

    torch.manual_seed(0)
    model = splice.attach(base)
    config, head = splice.Bottleneck(reduction_factor=16), task_head("classification", splits.labels, 2, "auto", 0.1)
    model.add("global", config, head=head)
    model.add("central", config, head=task_head("classification", splits.labels, 2, "auto", 0.1))
    model.adapters["central"].load_state_dict(model.adapters["global"].state_dict())  # same starting point

    started = time.time()
    for round_ in range(1, args.rounds + 1):
        clients = []
        for k, shard in enumerate(shards):
            name = f"client{k}"
            model.add(name, config, head=task_head("classification", splits.labels, 2, "auto", 0.1))
            model.adapters[name].load_state_dict(model.adapters["global"].state_dict())  # the server's adapter
            train_locally(model, name, shard, collate, epochs=1, seed=round_ * 100 + k)
            clients.append(name)
        model.delete("global")
        model.average("global", clients, [n / sum(sizes) for n in sizes], mode="parameters")  # FedAvg
        for name in clients:
            model.delete(name)
        train_locally(model, "central", [row for shard in shards for row in shard], collate, epochs=1, seed=round_)
        print(f"round {round_}: FedAvg adapter {accuracy(model, 'global', validation, collate):.1%}, "
              f"central adapter {accuracy(model, 'central', validation, collate):.1%} validation accuracy "
              f"({time.time() - started:.0f} s)")


if __name__ == "__main__":
    main()
