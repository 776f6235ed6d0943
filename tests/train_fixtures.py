"""Tiny models saved as folders (with a real tokenizer) and small data files, for the train/eval/predict tests."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

from splice.assets import minilm_dir

from tiny_models import tiny_config

POSITIVE = ["great", "lovely", "wonderful", "happy", "excellent", "superb"]
NEGATIVE = ["awful", "terrible", "sad", "horrible", "bad", "dreadful"]
NOUNS = ["day", "film", "meal", "trip", "song", "game", "book", "show"]
CITIES = ["paris", "london", "berlin", "rome"]
PEOPLE = ["alice", "bob", "carol", "dave"]


def save_tiny(kind: str, folder: Path) -> Path:
    """A tiny random BERT (``kind="bert"``) or Llama (``"llama"``) with MiniLM's tokenizer, saved to ``folder``."""
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
    config = tiny_config(kind)
    config.vocab_size = tokenizer.vocab_size
    if kind == "llama":
        config.pad_token_id, config.bos_token_id, config.eos_token_id = (tokenizer.pad_token_id,
                                                                           tokenizer.cls_token_id,
                                                                           tokenizer.sep_token_id)
    auto = AutoModelForCausalLM if kind == "llama" else AutoModel
    model = auto.from_config(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def sentiment_csv(path: Path, rows: int = 60, seed: int = 0) -> Path:
    """``text,label`` rows whose label is decided by one adjective: easy to learn in a few steps."""
    rng = random.Random(seed)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        for i in range(rows):
            label = "pos" if i % 2 else "neg"
            word = rng.choice(POSITIVE if label == "pos" else NEGATIVE)
            writer.writerow([f"the {rng.choice(NOUNS)} number {i} was {word}", label])
    return path


def tagging_conll(path: Path, sentences: int = 40, seed: int = 0) -> Path:
    """``token<TAB>tag`` lines (BIO over person and location), sentences separated by a blank line."""
    rng = random.Random(seed)
    lines = []
    for _ in range(sentences):
        person, city = rng.choice(PEOPLE), rng.choice(CITIES)
        for token, tag in [(person, "B-person"), ("went", "O"), ("to", "O"), (city, "B-location"), ("today", "O")]:
            lines.append(f"{token}\t{tag}")
        lines.append("")
    path.write_text("\n".join(lines) + "\n")
    return path


def text_jsonl(path: Path, rows: int = 40, seed: int = 0) -> Path:
    """``{"text": ...}`` lines of a tiny repetitive language."""
    rng = random.Random(seed)
    with path.open("w") as handle:
        for _ in range(rows):
            words = " ".join(rng.choice(["the", "cat", "sat", "on", "mat", "a", "dog"]) for _ in range(12))
            handle.write(json.dumps({"text": words}) + "\n")
    return path
