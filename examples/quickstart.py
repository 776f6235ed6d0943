"""The README's quick start, run for real: a Pfeiffer adapter for tweet sentiment on MiniLM-L6.

Real model (all-MiniLM-L6-v2) and real data (CrowdFlower tweets), both from PyPI
packages. Trains on a 2,000-tweet subsample for one epoch so it finishes in a
couple of minutes on 2 CPU cores, then saves the adapter, reloads it into a
fresh copy of the model and checks the predictions match.

    python examples/quickstart.py [--out out/quickstart] [--train 2000] [--steps 0]
"""

from __future__ import annotations

import argparse
import random
import time

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from transformers.utils import logging as hf_logging

import splice
from splice.assets import minilm_dir, tweet_sentiment

LABELS = ["negative", "neutral", "positive"]


def batches(rows, tokenizer, size):
    for start in range(0, len(rows), size):
        chunk = rows[start : start + size]
        encoded = tokenizer([t for t, _ in chunk], padding=True, truncation=True, max_length=48, return_tensors="pt")
        encoded["labels"] = torch.tensor([LABELS.index(label) for _, label in chunk])
        yield encoded


@torch.no_grad()
def accuracy(model, rows, tokenizer) -> float:
    model.eval()
    correct = 0
    for batch in batches(rows, tokenizer, 64):
        labels = batch.pop("labels")
        correct += (model(**batch).logits.argmax(-1) == labels).sum().item()
    return correct / len(rows)


def fresh_backbone():
    hf_logging.set_verbosity_error()  # the new classifier's "newly initialized" warning is expected
    return AutoModelForSequenceClassification.from_pretrained(minilm_dir(), num_labels=len(LABELS))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="out/quickstart", help="where the adapter folder is written")
    parser.add_argument("--train", type=int, default=2000, help="training tweets (subsampled)")
    parser.add_argument("--validation", type=int, default=500, help="validation tweets")
    parser.add_argument("--steps", type=int, default=0, help="stop after this many steps (0: one epoch)")
    args = parser.parse_args()
    torch.manual_seed(0)

    rows = tweet_sentiment()
    random.Random(0).shuffle(rows)
    train, validation = rows[: args.train], rows[args.train : args.train + args.validation]
    print(f"data: {len(rows):,} unique tweets; subsampled {len(train):,} for training, "
          f"{len(validation):,} for validation")

    tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
    model = splice.attach(fresh_backbone())  # the backbone is frozen from here on
    model.add("sentiment", splice.Bottleneck(reduction_factor=16), head="classifier")
    model.add("nli", splice.LoRA(r=8, alpha=16, targets=["q", "v"]))
    model.train_adapter("sentiment")  # only this adapter (and its head) requires grad
    base_before = {k: v.clone() for k, v in model.base.state_dict().items()}

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    started = time.time()
    for step, batch in enumerate(batches(train, tokenizer, 32), start=1):
        model.train()
        loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 10 == 0:
            print(f"  step {step:3d}  loss {loss.item():.3f}  ({time.time() - started:.0f} s)")
        if args.steps and step >= args.steps:
            break

    assert all(torch.equal(v, base_before[k]) for k, v in model.base.state_dict().items()), "base changed!"
    model.activate("sentiment")
    val_accuracy = accuracy(model, validation, tokenizer)
    model.summary()

    model.save("sentiment", args.out)
    reloaded = splice.attach(fresh_backbone())
    reloaded.activate(reloaded.load(args.out))
    assert accuracy(reloaded, validation, tokenizer) == val_accuracy, "reloaded adapter predicts differently"

    row = next(r for r in model.summary(print_table=False).rows if r.name == "sentiment")
    majority = max(sum(label == c for _, label in validation) for c in LABELS) / len(validation)
    print(f"\nvalidation accuracy: {val_accuracy:.1%} (majority class: {majority:.1%})")
    print(f"trainable parameters: {row.parameters:,} = {row.percent_of_base:.2f} % of the base")
    print(f"adapter written to {args.out} ({row.megabytes:.2f} MB of tensors); base weights bit-identical; "
          "reloaded adapter gives identical predictions")


if __name__ == "__main__":
    main()
