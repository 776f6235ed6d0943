"""Greedy headlines for held-out BBC articles: the base model beside headline adapters trained by ``splice train``.

    splice train --model smollm2 --data bbc-headlines --task causal-lm --method lora \
        --option 'targets=["q","k","v","o"]' --limit 300 --max-length 160 --epochs 1 --batch-size 8 --out out/hl-lora
    python examples/headline_samples.py out/hl-lora/adapter [more adapter folders] --count 5

The test articles are the ones the adapters were evaluated on: the same data,
``--limit`` and split seed as their training run (300 and 0 above).
"""

from __future__ import annotations

import argparse

from splice.data import load_data
from splice.train.inference import generate, load_adapters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("adapters", nargs="+", help="adapter folders trained on bbc-headlines")
    parser.add_argument("--count", type=int, default=5, help="test articles to show")
    parser.add_argument("--limit", type=int, default=300, help="the training run's --limit")
    parser.add_argument("--data-seed", type=int, default=0, help="the training run's --data-seed")
    args = parser.parse_args()
    splits = load_data("bbc-headlines", "causal-lm", seed=args.data_seed, limit=args.limit)
    loaded = load_adapters(args.adapters)
    model, tokenizer = loaded.model, loaded.tokenizer
    for row in splits.test[: args.count]:
        print("reference:", row["completion"].strip())
        model.disable()
        print("  base:", generate(model, tokenizer, row["prompt"], 24).strip().split("\n")[0])
        for folder, name in zip(args.adapters, loaded.names):
            model.activate(name)
            print(f"  {folder}:", generate(model, tokenizer, row["prompt"], 24).strip())


if __name__ == "__main__":
    main()
