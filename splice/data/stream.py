"""Streamed splits: a table read row by row every time a split is iterated, never held in memory.

``load_data(..., streaming=True)`` (``splice train --streaming``) on a CSV / JSON-lines /
Parquet file, or a 🤗 ``datasets`` ``IterableDataset``, gives splits of this kind.
A file larger than memory cannot be shuffled as a whole, so each row goes to the
split that a seeded hash of its row number picks, in the proportions ``sizes``
gives (the same row, seed and sizes: the same split, on every machine); the
training split is shuffled through a buffer of :data:`SHUFFLE_BUFFER` rows.
One pass when the data is loaded counts each split's rows and checks the labels
(memory: the label set), so that errors are found before training, with their
row, and a split knows its length (the Trainer's epochs need it).
"""

from __future__ import annotations

import hashlib
import itertools
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

from ..errors import DataError
from .records import Columns, LabelTally, is_empty, record_maker
from .splits import Splits
from .tables import Table

SHUFFLE_BUFFER = 1024  # training rows held at once to shuffle a streamed split
SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class StreamedSplit:
    """The records of some of a streamed table's splits (``parts``: indices into :data:`SPLITS`), read anew on
    each iteration. ``len()`` is the row count the loading pass found."""

    table: Table
    task: str
    columns: Columns
    bounds: tuple[float, float, float]  # cumulative shares: a row whose hash is below bounds[i] goes to split i
    seed: int
    limit: int | None
    parts: tuple[int, ...]
    rows: int
    shuffled: bool = False

    def __len__(self) -> int:
        return self.rows

    def __iter__(self) -> Iterator[dict]:
        records = (record for part, record, _ in read(self) if part in self.parts)
        if not self.shuffled:
            yield from records
            return
        shuffle = random.Random(self.seed)
        buffer: list[dict] = []
        for record in records:
            if len(buffer) < SHUFFLE_BUFFER:
                buffer.append(record)
                continue
            pick = shuffle.randrange(SHUFFLE_BUFFER)
            yield buffer[pick]
            buffer[pick] = record
        shuffle.shuffle(buffer)
        yield from buffer

    def __add__(self, other: StreamedSplit) -> StreamedSplit:
        """Two splits of one table read as one (``Splits.split("all")``)."""
        return replace(self, parts=self.parts + other.parts, rows=self.rows + other.rows, shuffled=False)


def read(split: StreamedSplit) -> Iterator[tuple[int | None, dict, str]]:
    """``(split index, record, place)`` for every row of the table with something to learn from (index None for
    a row outside every split, when ``sizes`` sum to less than 1)."""
    make = record_maker(split.table, split.task, split.columns)
    rows = zip(split.table.rows, split.table.places)
    for number, (row, place) in enumerate(itertools.islice(rows, split.limit)):
        record = make(row, place)
        if not is_empty(record):
            yield _split_of(split.seed, number, split.bounds), record, place


def _split_of(seed: int, number: int, bounds: Sequence[float]) -> int | None:
    """The split of row ``number``: a uniform draw from a hash of (seed, number), placed among ``bounds``."""
    digest = hashlib.blake2b(f"{seed}:{number}".encode(), digest_size=8).digest()
    share = int.from_bytes(digest, "big") / 2**64
    return next((i for i, bound in enumerate(bounds) if share < bound), None)


def stream_splits(table: Table, task: str, columns: Columns, sizes: Sequence[float | int], seed: int,
                  labels: Sequence[str] | None, limit: int | None) -> Splits:
    """Train / validation / test of a streamed table, its rows counted and labels checked in one pass."""
    if all(isinstance(size, int) and not isinstance(size, bool) for size in sizes):
        raise DataError(f"sizes {tuple(sizes)} are row counts, which a streamed file cannot be cut by (it is not "
                        "shuffled as a whole); give fractions such as 0.8,0.1,0.1, or drop --streaming.")
    if any(isinstance(size, bool) or not isinstance(size, (int, float)) or size < 0 for size in sizes) or \
            len(sizes) != 3 or sum(sizes) > 1 + 1e-9 or sum(sizes) == 0:
        raise DataError(f"sizes must be three fractions (train, validation, test) summing to at most 1, e.g. "
                        f"0.8,0.1,0.1; got {tuple(sizes)!r}.")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise DataError(f"limit must be a positive number of rows, not {limit!r}.")
    bounds = tuple(float(sum(sizes[:i + 1])) for i in range(3))
    whole = StreamedSplit(table, task, columns, bounds, seed, limit, (0, 1, 2), 0)
    counts, tally = [0, 0, 0], LabelTally(task, table.where, labels)
    for part, record, place in read(whole):
        if part is not None:
            counts[part] += 1
            tally.add(record, place)
    if not sum(counts):
        raise DataError(f"{table.where} has no rows with text for {task}: nothing to train or evaluate on.")
    label_set = tally.labels()
    train, validation, test = (replace(whole, parts=(i,), rows=counts[i], shuffled=i == 0) for i in range(3))
    notes = [f"streamed: each row's split drawn from a hash of its row number (seed {seed}), not shuffled as a whole; "
             f"training rows shuffled {SHUFFLE_BUFFER:,} at a time"]
    if limit is not None:
        notes.append(f"read the first {limit:,} rows (limit)")
    notes.append(" / ".join(f"{count:,} {name}" for count, name in zip(counts, SPLITS)) + " rows")
    return Splits(task, train, validation, test, label_set, table.where, notes)


__all__ = ["SHUFFLE_BUFFER", "StreamedSplit", "stream_splits"]
