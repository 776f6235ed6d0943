"""``--streaming`` / ``load_data(streaming=True)``: splits read row by row each time they are iterated, never held.

The memory test is the one that matters: a file read whole costs memory in
proportion to its rows, a streamed one stays bounded by the shuffle buffer.
"""

from __future__ import annotations

import json
import math
import tracemalloc
from collections import Counter

import datasets
import pytest

from splice.cli import main
from splice.data import Columns, load_data
from splice.data.stream import SHUFFLE_BUFFER
from splice.errors import DataError

from train_fixtures import save_tiny, sentiment_csv

ROWS = [{"text": f"text number {i}", "label": ("pos", "neg", "neu")[i % 3]} for i in range(300)]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def texts(records) -> Counter:
    return Counter(record["text"] for record in records)


def test_streamed_splits_hold_every_row_once_and_are_the_same_each_time(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", ROWS)
    splits = load_data(path, "classification", streaming=True)
    train, validation, test = (list(part) for part in (splits.train, splits.validation, splits.test))
    assert texts(train) + texts(validation) + texts(test) == texts(ROWS)  # disjoint, nothing lost
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (len(train), len(validation), len(test))
    assert 200 < len(train) < 280 and validation and test  # ~0.8 / 0.1 / 0.1 of 300
    assert list(splits.train) == train and splits.labels == ("neg", "neu", "pos")  # re-read: the same order
    assert texts(splits.split("all")) == texts(ROWS)
    other_seed = load_data(path, "classification", streaming=True, seed=1)
    assert texts(other_seed.validation) != texts(validation)


def test_a_file_much_larger_than_a_batch_is_never_held(tmp_path):
    """Python memory while loading and reading the first batch: read whole, it grows with the rows; streamed, it
    is bounded by datasets' reading chunk (10,000 CSV rows) and the shuffle buffer, whatever the file's length."""
    import torch  # noqa: F401  (datasets imports it on first use: its import is no part of what is measured)

    def peak(rows: int, streaming: bool) -> int:
        path = tmp_path / f"d{rows}.csv"
        if not path.exists():
            path.write_text("text,label\n" + "".join(f"row {i} {'x' * 40},{('pos', 'neg')[i % 2]}\n"
                                                     for i in range(rows)), encoding="utf-8")
        load_data(path, "classification", streaming=streaming, sizes=(0.5, 0.25, 0.25))  # imports, caches
        tracemalloc.start()
        splits = load_data(path, "classification", streaming=streaming, sizes=(0.5, 0.25, 0.25))
        assert len([record for record, _ in zip(splits.train, range(8))]) == 8
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return peak

    held, held_3x = peak(20_000, False), peak(60_000, False)
    assert held_3x > 2.5 * held  # the check can fail: read whole, memory follows the rows
    streamed, streamed_3x = peak(20_000, True), peak(60_000, True)
    assert streamed_3x < 1.3 * streamed and streamed_3x < held_3x / 4, (streamed, streamed_3x, held_3x)


def test_reading_the_first_training_rows_does_not_read_the_whole_source():
    """A generator-backed IterableDataset: the loading pass reads it once (counting), then the first training
    record needs only the shuffle buffer's worth of rows, not all of them."""
    produced = Counter()

    def generate():
        for i in range(5 * SHUFFLE_BUFFER):
            produced["rows"] += 1
            yield {"text": f"text {i}", "label": ("a", "b")[i % 2]}

    splits = load_data(datasets.IterableDataset.from_generator(generate), "classification")
    counted = produced["rows"]
    assert counted == 5 * SHUFFLE_BUFFER + 1  # the counting pass, and one row read to learn the columns
    first = next(iter(splits.train))
    assert first["label"] in ("a", "b")
    read_again = produced["rows"] - counted
    assert read_again <= 1.25 * SHUFFLE_BUFFER / 0.8 + 1, read_again  # train is ~0.8 of the rows


def test_streamed_errors_are_one_line_and_name_the_row(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", ROWS[:20] + [{"text": "odd one", "label": "meh"}])
    with pytest.raises(DataError, match=r"line 21: label 'meh' is not one of the known labels \(pos, neg, neu\)"):
        load_data(path, "classification", streaming=True, labels=["pos", "neg", "neu"])
    with pytest.raises(DataError, match=r"has no column 'sentiment' for the label \(its columns: 'text', 'label'\)"):
        load_data(path, "classification", streaming=True, columns=Columns(label="sentiment"))
    with pytest.raises(DataError, match=r"row counts, which a streamed file cannot be cut by.*give fractions"):
        load_data(path, "classification", streaming=True, sizes=(10, 5, 5))
    with pytest.raises(DataError, match="does not exist"):
        load_data(tmp_path / "missing.csv", "classification", streaming=True)


def test_train_streaming_runs_every_epoch_over_the_streamed_rows(tmp_path, capsys):
    model = save_tiny("bert", tmp_path / "bert")
    data = sentiment_csv(tmp_path / "sentiment.csv")
    out = tmp_path / "run"
    code = main([str(a) for a in ("train", "--model", model, "--data", data, "--out", out, "--epochs", "2",
                                  "--batch-size", "8", "--learning-rate", "0.01", "--streaming", "-q")])
    assert code == 0, capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    rows = metrics["rows"]
    assert sum(rows.values()) == 60 and rows["train"] > 0
    assert metrics["steps"] == 2 * math.ceil(rows["train"] / 8)
    assert (out / "adapter" / "adapter.safetensors").is_file()
