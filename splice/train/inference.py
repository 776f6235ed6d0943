"""Using trained adapter folders: load them onto their base, evaluate on a dataset, predict for new texts.

An adapter written by ``splice train`` records its model, task and data split
in ``adapter.json`` (``training``), so ``splice eval out/x/adapter`` needs no
other option; an adapter from elsewhere needs ``--model`` (and gets its task
from its head: a classifier, a tagger, or none for a causal LM).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..adapted import attach
from ..checkpoint import CONFIG_FILE, read_meta
from ..data import load_data
from ..errors import SpliceError
from ..model import AdaptedModel
from .backbone import load_backbone
from .encode import IGNORE, Collator, encode, pad_id
from .evaluation import score

HEAD_TASKS = {"classification": "classification", "token_classification": "tagging", None: "causal-lm"}


@dataclass
class Loaded:
    """A base with adapters loaded (not active), its tokenizer, the adapters' names and their task."""

    model: AdaptedModel
    tokenizer: object
    names: list[str]
    task: str
    training: dict  # the first adapter's training record ({} if it was not made by splice train)


def load_adapters(folders: Sequence[str | Path], model: str | None = None, quantize: str | None = None,
                  compute_dtype: str | None = None) -> Loaded:
    """Load every adapter folder onto one base; they must share the task and (unless ``model`` is given) the model.

    ``quantize`` stores the base in 4 or 8 bits (:mod:`splice.quantize`), whatever it was trained under."""
    metas = [read_meta(Path(folder)) for folder in folders]
    tasks = {task_of(meta, Path(folder)) for meta, folder in zip(metas, folders)}
    if len(tasks) != 1:
        raise SpliceError(
            f"These adapters do different tasks ({', '.join(sorted(tasks))}); compare adapters of one task.")
    task = tasks.pop()
    base_name = model or base_of(metas[0], Path(folders[0]))
    if model is None and any(base_of(m, Path(f)) != base_name for m, f in zip(metas, folders)):
        raise SpliceError("These adapters were trained on different models; pass --model to choose one base.")
    backbone, tokenizer = load_backbone(base_name, task, quantize, compute_dtype or "float32")
    adapted = attach(backbone.eval())
    names = [adapted.load(folder, name=f"{i}-{Path(folder).resolve().parent.name}"[:128]
                          if len(folders) > 1 else None) for i, folder in enumerate(folders)]
    return Loaded(adapted, tokenizer, names, task, metas[0].get("training") or {})


def task_of(meta: dict, folder: Path) -> str:
    if meta.get("training", {}).get("task"):
        return meta["training"]["task"]
    head = meta.get("head")
    kind = head.get("kind") if isinstance(head, dict) else None
    if kind not in HEAD_TASKS:
        raise SpliceError(f"{folder / CONFIG_FILE}: a {kind} head has no eval/predict support yet; "
                          "classification, tagging and causal LM adapters do.")
    return HEAD_TASKS[kind]


def base_of(meta: dict, folder: Path) -> str:
    """The model an adapter was trained on: its fine-tuned copy for full fine-tuning, else the recorded base."""
    training = meta.get("training") or {}
    if training.get("fine_tuned_model"):
        return str((folder / training["fine_tuned_model"]).resolve())
    if not training.get("model"):
        raise SpliceError(f"{folder} does not record its base model (it was not made by splice train); "
                          "pass --model NAME_OR_PATH.")
    return training["model"]


def labels_of(model: AdaptedModel, name: str) -> list[str] | None:
    head = model.adapters[name].task_head
    return list(head.labels) if head is not None and getattr(head, "labels", None) else None


def evaluate(loaded: Loaded, name: str, data: str, split: str, sizes, data_seed: int, max_length: int,
             batch_size: int = 64) -> dict:
    """The task's metrics for adapter ``name`` on ``split`` of ``data``."""
    labels = labels_of(loaded.model, name)
    splits = load_data(data, loaded.task, sizes=sizes, seed=data_seed, labels=labels)
    rows = splits.split(split)
    if not rows:
        raise SpliceError(f"The {split} split of {data} is empty; choose --split all or other --sizes.")
    encoded = encode(rows, loaded.task, loaded.tokenizer, max_length, labels)
    loaded.model.activate(name)
    if loaded.task == "causal-lm":
        loss = language_model_loss(loaded.model, encoded, pad_id(loaded.tokenizer), batch_size)
        return {"loss": loss, "perplexity": math.exp(loss), "rows": len(rows)}
    predicted, gold = [], []
    for batch in batches(encoded, pad_id(loaded.tokenizer), batch_size):
        targets = batch.pop("labels")
        with torch.no_grad():
            logits = loaded.model(**batch).logits
        predicted += list(logits.argmax(-1).numpy())
        gold += list(targets.numpy())
    if loaded.task == "tagging":  # rows differ in length: score row by row
        return {**score("tagging", predicted, gold, labels), "rows": len(rows)}
    return {**score("classification", np.array(predicted), np.array(gold), labels), "rows": len(rows)}


def language_model_loss(model: AdaptedModel, encoded: list[dict], pad: int, batch_size: int) -> float:
    """Mean loss per predicted token over ``encoded`` (so perplexity does not depend on batching)."""
    total = tokens = 0.0
    for batch in batches(encoded, pad, batch_size):
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        targets = batch["labels"][:, 1:]
        losses = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets.flatten(),
                                                   ignore_index=IGNORE, reduction="sum")
        total += losses.item()
        tokens += (targets != IGNORE).sum().item()
    return total / max(tokens, 1)


def batches(encoded: list[dict], pad: int, size: int):
    collate = Collator(pad)
    for start in range(0, len(encoded), size):
        yield collate(encoded[start:start + size])


def predict(loaded: Loaded, name: str, texts: Sequence[str], max_length: int, max_new_tokens: int = 40) -> list:
    """Per text: (label, probability) for classification, [(word, tag)] for tagging, the generation for causal LM."""
    model, tokenizer = loaded.model, loaded.tokenizer
    model.activate(name)
    labels = labels_of(model, name)
    if loaded.task == "causal-lm":
        return [generate(model, tokenizer, text, max_new_tokens) for text in texts]
    if loaded.task == "tagging":
        results = []
        for text in texts:
            words = text.split()
            encoded = tokenizer(words, is_split_into_words=True, truncation=True, max_length=max_length,
                                return_tensors="pt")
            with torch.no_grad():
                ids = model(**encoded).logits.argmax(-1)[0].tolist()
            first = {}
            for position, word in enumerate(encoded.word_ids()):
                if word is not None and word not in first:
                    first[word] = labels[ids[position]]
            results.append([(word, first.get(i, "O")) for i, word in enumerate(words)])
        return results
    encoded = tokenizer(list(texts), truncation=True, max_length=max_length, padding=True, return_tensors="pt")
    with torch.no_grad():
        probabilities = model(**encoded).logits.softmax(-1)
    best = probabilities.argmax(-1)
    return [(labels[i], probabilities[row, i].item()) for row, i in enumerate(best.tolist())]


def generate(model: AdaptedModel, tokenizer, prompt: str, max_new_tokens: int) -> str:
    """Greedy continuation of ``prompt`` (the new text only)."""
    encoded = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        output = model.generate(input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"],
                                max_new_tokens=max_new_tokens, do_sample=False,
                                pad_token_id=pad_id(tokenizer))
    return tokenizer.decode(output[0, encoded["input_ids"].shape[1]:], skip_special_tokens=True)

