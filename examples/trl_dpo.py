"""Direct preference optimisation under TRL's DPOTrainer, with the base (adapter off) as the reference model.

Preference pairs from the built-in ``bbc-headlines`` set: for each article the
chosen answer is its own headline, the rejected one another article's. As with
peft, there is no second copy of the model: DPO's reference log-probabilities
come from the same weights with every adapter switched off
(``splice.integrations.trl.DPOTrainer``). The trained adapter is written to
``DIR/adapter``; the base's weights are untouched.

    python examples/trl_dpo.py --steps 20 --out out/trl-dpo [--method lora] [--model smollm2]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import datasets
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import DPOConfig

import splice
from splice.assets import model_path
from splice.data import load_data
from splice.integrations.trl import DPOTrainer
from splice.methods import recipe


def preference_pairs(rows: int, prompt_chars: int) -> datasets.Dataset:
    """prompt (its last ``prompt_chars`` characters) / chosen (the article's headline) / rejected (the next
    article's headline), ``rows`` of them."""
    records = load_data("bbc-headlines", "causal-lm", sizes=(rows + 1, 0, 0)).train
    return datasets.Dataset.from_list([
        {"prompt": record["prompt"][-prompt_chars:], "chosen": record["completion"], "rejected": other["completion"]}
        for record, other in zip(records, records[1:])])


def main(argv: list[str] | None = None):
    """Train, save the adapter, print the loss; returns the trained model and the logged losses (for tests)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="optimiser steps")
    parser.add_argument("--out", default="out/trl-dpo", help="the trained adapter is written to DIR/adapter")
    parser.add_argument("--model", default="smollm2", help="built-in model name or a causal-LM folder")
    parser.add_argument("--method", default="lora", help="any splice training recipe that fits a decoder")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=320, help="tokens per example (prompt + answer)")
    parser.add_argument("--rows", type=int, help="distinct articles to train on (default: steps x batch size, each "
                        "seen once); fewer are cycled through")
    parser.add_argument("--prompt-chars", type=int, default=1300,
                        help="keep the last N characters of each prompt (its end holds the cue 'Headline:')")
    parser.add_argument("--learning-rate", type=float, help="default: the method's recipe's")
    args = parser.parse_args(argv)
    torch.manual_seed(0)

    folder = model_path(args.model)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = splice.attach(AutoModelForCausalLM.from_pretrained(folder))
    plan = recipe(args.method)
    model.add("preferences", plan.config({}))
    model.train_adapter("preferences")

    config = DPOConfig(output_dir=str(Path(args.out) / "trl"), max_steps=args.steps,
                       per_device_train_batch_size=args.batch_size,
                       learning_rate=args.learning_rate or plan.learning_rate, max_length=args.max_length,
                       logging_steps=1, save_strategy="no", report_to=[],
                       use_cpu=not torch.cuda.is_available(), disable_tqdm=True, seed=0)
    pairs = preference_pairs(args.rows or args.steps * args.batch_size, args.prompt_chars)
    trainer = DPOTrainer(model, args=config, train_dataset=pairs, processing_class=tokenizer)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    model.save("preferences", Path(args.out) / "adapter")
    print(f"{args.method} DPO on {folder.name}: loss {losses[0]:.3f} -> {losses[-1]:.3f} over {len(losses)} steps; "
          f"adapter in {Path(args.out) / 'adapter'}")
    return model, losses


if __name__ == "__main__":
    main()
