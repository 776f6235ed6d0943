"""A deterministic train / validation / test split of normalised records.

The records are shuffled with ``random.Random(seed)`` and cut in order: the first
rows are train, the next validation, the next test. The same records and seed give
the same split on every machine and Python version.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from ..errors import DataError

SPLIT_NAMES = ("train", "validation", "test", "all")


@dataclass
class Splits:
    """The three splits of one data set for one task, its label set, and where it came from."""

    task: str
    # Lists, or for streamed data (splice.data.stream.StreamedSplit) records read anew on each iteration.
    train: Collection[dict]
    validation: Collection[dict]
    test: Collection[dict]
    labels: tuple[str, ...] | None  # classification: classes; tagging: tags, "O" first; causal-lm: None
    source: str  # what the data is, for model cards: a built-in name and its package, or the file path
    notes: list[str] = field(default_factory=list)  # what was done to the data, in words

    def split(self, name: str) -> Collection[dict]:
        """The records of split ``name``: train, validation, test, or all (the three in that order)."""
        if name == "all":
            return self.train + self.validation + self.test
        if name not in SPLIT_NAMES:
            raise DataError(f"Unknown split {name!r}; choose one of {', '.join(SPLIT_NAMES)}.")
        return getattr(self, name)


def split_records(records: list[dict], sizes: Sequence[float | int], seed: int,
                  limit: int | None, notes: list[str]) -> tuple[list[dict], list[dict], list[dict]]:
    """Shuffle ``records`` with ``seed``, keep the first ``limit``, and cut train, validation and test by ``sizes``.

    ``sizes`` are three fractions of the rows (any of them a float, summing to at most 1)
    or three row counts (all ints). What was done is appended to ``notes``.
    """
    counts = _check_sizes(sizes)
    rows = list(records)
    random.Random(seed).shuffle(rows)
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise DataError(f"limit must be a positive number of rows, not {limit!r}.")
        if limit < len(rows):
            notes.append(f"subsampled {limit:,} of {len(rows):,} rows at random (limit {limit:,}, seed {seed})")
            rows = rows[:limit]
    total = len(rows)
    if counts:
        if sum(sizes) > total:
            raise DataError(f"sizes {tuple(sizes)} ask for {sum(sizes):,} rows but only {total:,} are available; "
                            "ask for fewer rows, or give fractions such as (0.8, 0.1, 0.1).")
        bounds = [sum(sizes[:i + 1]) for i in range(3)]
    else:
        # Cumulative rounding: the three parts never overlap or exceed the rows.
        bounds = [min(total, round(total * sum(sizes[:i + 1]))) for i in range(3)]
    train, validation, test = rows[:bounds[0]], rows[bounds[0]:bounds[1]], rows[bounds[1]:bounds[2]]
    unused = f", {total - bounds[2]:,} unused" if bounds[2] < total else ""
    notes.append(f"shuffled with seed {seed} and split into {len(train):,} train / {len(validation):,} validation / "
                 f"{len(test):,} test rows{unused}")
    for name, part, size in zip(("train", "validation", "test"), (train, validation, test), sizes):
        if not part and size:
            notes.append(f"the {name} split is empty: {total:,} rows are too few for size {size}")
    return train, validation, test


def _check_sizes(sizes: Sequence[float | int]) -> bool:
    """Whether ``sizes`` are row counts (else fractions); an error if they are neither."""
    if len(sizes) != 3 or any(isinstance(size, bool) or not isinstance(size, (int, float)) or size < 0
                              for size in sizes):
        raise DataError(f"sizes must be three non-negative numbers (train, validation, test), not {sizes!r}.")
    counts = all(isinstance(size, int) for size in sizes)
    if not counts and (any(size > 1 for size in sizes) or sum(sizes) > 1 + 1e-9):
        raise DataError(f"sizes {tuple(sizes)} mix fractions and counts or sum to more than 1: give fractions "
                        "summing to at most 1, e.g. (0.8, 0.1, 0.1), or whole row counts, e.g. (4000, 1000, 2000).")
    if sum(sizes) == 0:
        raise DataError("sizes are all zero: at least one split needs rows.")
    return counts
