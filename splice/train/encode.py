"""Records (from :mod:`splice.data`) to token ids, and batches padded for the model.

One function per task turns a record into ``input_ids`` (+ ``attention_mask``,
``token_type_ids`` where the tokenizer gives them) and ``labels``:

- classification: the label's index in the label list;
- tagging: one tag per word, on its first sub-word token; other tokens get -100
  (ignored by the loss and the metrics), as in the usual HF recipe;
- causal-lm: ``labels`` = the tokens themselves (the model shifts them); for
  prompt/completion records only the completion is learned (prompt tokens -100)
  and an end-of-sequence token closes the completion.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Collection, Iterator, Sequence
from typing import Any

import torch

from ..errors import SpliceError

IGNORE = -100
KEEP_PROMPT_END = 8  # a prompt cut to fit keeps its last tokens: they hold the cue ("Headline:")


def encode(records: Collection[dict], task: str, tokenizer, max_length: int,
           labels: Sequence[str] | None = None) -> list[dict[str, list[int]]] | EncodedStream:
    """Token ids (and targets) for every record, cut to ``max_length`` tokens: a list, or for streamed records
    (anything but a list) a stream that encodes each record as it is read."""
    index = {label: i for i, label in enumerate(labels or ())}
    if task == "classification":
        one = functools.partial(_classification, tokenizer=tokenizer, max_length=max_length, index=index)
    elif task == "tagging":
        if not getattr(tokenizer, "is_fast", False):
            raise SpliceError(
                "Tagging needs a fast tokenizer (it maps tokens back to words); this model has a slow one.")
        one = functools.partial(_tagging, tokenizer=tokenizer, max_length=max_length, index=index)
    else:
        one = functools.partial(_causal, tokenizer=tokenizer, max_length=max_length)
    return [one(r) for r in records] if isinstance(records, list) else EncodedStream(records, one)


class EncodedStream(torch.utils.data.IterableDataset):
    """Streamed records, encoded one at a time as the Trainer reads them; its length is the records'.

    Each DataLoader worker reads every row but keeps only its share, so that workers do not repeat examples.
    """

    def __init__(self, records: Collection[dict], encode_one: Callable[[dict], dict]):
        self.records, self.encode_one = records, encode_one

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[dict]:
        worker = torch.utils.data.get_worker_info()
        records = iter(self.records) if worker is None else itertools.islice(
            self.records, worker.id, None, worker.num_workers)
        return map(self.encode_one, records)


def _classification(record: dict, *, tokenizer, max_length: int, index: dict[str, int]) -> dict[str, Any]:
    features = dict(tokenizer(record["text"], truncation=True, max_length=max_length))
    features["labels"] = index[record["label"]]
    return features


def _tagging(record: dict, *, tokenizer, max_length: int, index: dict[str, int]) -> dict[str, Any]:
    encoded = tokenizer(record["tokens"], is_split_into_words=True, truncation=True, max_length=max_length)
    targets, previous = [], None
    for word in encoded.word_ids():
        targets.append(IGNORE if word is None or word == previous else index[record["tags"][word]])
        previous = word
    features = dict(encoded)
    features["labels"] = targets
    return features


def _causal(record: dict, *, tokenizer, max_length: int) -> dict[str, Any]:
    if "text" in record:
        ids = tokenizer(record["text"], truncation=True, max_length=max_length)["input_ids"]
        return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": list(ids)}
    prompt = prompt_ids(tokenizer, record["prompt"], max_length // 2)
    completion = tokenizer(record["completion"], add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        completion = completion + [tokenizer.eos_token_id]
    completion = completion[: max_length - len(prompt)]
    ids = prompt + completion
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": [IGNORE] * len(prompt) + completion}


def prompt_ids(tokenizer, prompt: str, budget: int) -> list[int]:
    """The prompt's token ids; a prompt over ``budget`` keeps its beginning and its last few tokens."""
    ids = tokenizer(prompt)["input_ids"]
    if len(ids) <= budget:
        return ids
    return ids[: budget - KEEP_PROMPT_END] + ids[-KEEP_PROMPT_END:]


class Collator:
    """Pads a list of encoded examples into one batch: pad id for tokens, 0 for masks, -100 for targets."""

    def __init__(self, pad_id: int, padding_side: str = "right"):
        self.pad_id, self.padding_side = pad_id, padding_side

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch: dict[str, torch.Tensor] = {}
        width = max(len(e["input_ids"]) for e in examples)
        for key in examples[0]:
            values = [e[key] for e in examples]
            if not isinstance(values[0], list):
                batch[key] = torch.tensor(values)
                continue
            fill = {"input_ids": self.pad_id, "labels": IGNORE}.get(key, 0)
            padded = [self._pad(v, width, fill) for v in values]
            batch[key] = torch.tensor(padded)
        return batch

    def _pad(self, values: list[int], width: int, fill: int) -> list[int]:
        gap = [fill] * (width - len(values))
        return values + gap if self.padding_side == "right" else gap + values


def pad_id(tokenizer) -> int:
    """The id padding uses: the tokenizer's pad token, else its end-of-sequence token (decoders often have none)."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return candidate
    raise SpliceError("The tokenizer has neither a pad nor an end-of-sequence token, so batches cannot be padded.")
