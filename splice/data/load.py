"""``load_data``: any supported source and a task in, deterministic splits of normalised records out."""

from __future__ import annotations

import difflib
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import DataError
from .builtin import BUILTIN_DATA
from .readers import ACCEPTED, CONLL_SUFFIXES, read_conll, read_folder, read_lines
from .records import Columns, as_string, check_task, decide_labels, is_empty, missing_column, table_records
from .splits import Splits, split_records
from .stream import stream_splits
from .tables import (
    TABLE_SUFFIXES,
    Table,
    dataset_name,
    dataset_table,
    is_dataset,
    is_saved_dataset,
    load_saved,
    read_table,
)


def load_data(source: str | os.PathLike | Any, task: str, *, columns: Columns = Columns(),
              sizes: tuple[float | int, float | int, float | int] = (0.8, 0.1, 0.1), seed: int = 0,
              labels: Sequence[str] | None = None, limit: int | None = None, streaming: bool = False) -> Splits:
    """Read ``source`` for ``task`` and split it into train, validation and test.

    ``source`` is a built-in name (:data:`BUILTIN_DATA`; it wins over a file of the same
    name, so write ``./name`` for the file), a 🤗 ``datasets`` ``Dataset`` or ``DatasetDict``
    (or a folder ``save_to_disk`` wrote; a DatasetDict's own train / validation / test
    splits are kept, see :func:`_dataset_dict`), a CSV / TSV / JSON-lines / Parquet
    file (read by ``datasets``: converted to Arrow once and memory-mapped, or with
    ``streaming`` read row by row each time a split is iterated, never held: see
    :mod:`splice.data.stream`, which also takes a ``datasets.IterableDataset``), a CoNLL-style ``token<TAB>tag``
    file (tagging), a text file of one text per line (causal-lm), or a folder with one
    subfolder of .txt files per label.
    Rows with nothing to learn from (empty text) are dropped; then the rows are
    shuffled with ``seed``, the first ``limit`` kept, and cut by ``sizes`` (fractions,
    or row counts when all three are ints). ``labels`` fixes the label set, e.g. to the
    classes of a trained head, and every row must use one of them; otherwise the label
    set is what the whole data uses (before ``limit``). Bad input raises
    :class:`~splice.errors.DataError` saying what is wrong and how to fix it.
    """
    check_task(task)
    notes: list[str] = []
    if not is_dataset(source) and Path(os.fspath(source)).is_dir() and is_saved_dataset(Path(os.fspath(source))):
        source = load_saved(Path(os.fspath(source)))
    if is_dataset(source) and hasattr(source, "keys"):
        return _dataset_dict(source, task, columns, sizes, seed, labels, limit)
    if is_dataset(source) and not hasattr(source, "__len__"):  # an IterableDataset: streamed, whatever streaming says
        return stream_splits(dataset_table(source, describe(source)), task, columns, sizes, seed, labels, limit)
    if streaming and _is_table_file(source, task):
        table = read_table(Path(os.fspath(source)), streaming=True)
        return stream_splits(table, task, columns, sizes, seed, labels, limit)
    if is_dataset(source):
        records, places = _table_records(dataset_table(source, describe(source)), task, columns)
        where = describe(source)
        _note_repeats(records, notes)
    elif os.fspath(source) in BUILTIN_DATA:
        records, places, where = _builtin(os.fspath(source), task, notes)
    else:
        path = Path(os.fspath(source))
        records, places = _from_path(path, task, columns, streaming)
        where = str(path)
        _note_repeats(records, notes)
    records, places = _drop_empty(records, places, where, task, notes)
    label_set = decide_labels(task, records, places, where, labels)
    train, validation, test = split_records(records, sizes, seed, limit, notes)
    return Splits(task, train, validation, test, label_set, where, notes)


def _drop_empty(records: list[dict], places: Sequence[str], where: str, task: str,
                notes: list[str]) -> tuple[list[dict], list[str]]:
    """The records with something to learn from, and their places; an error if none has."""
    kept = [(record, place) for record, place in zip(records, places) if not is_empty(record)]
    if len(kept) < len(records):
        notes.append(f"dropped {len(records) - len(kept):,} rows with empty text")
    if not kept:
        raise DataError(f"{where} has no rows with text for {task}.")
    return [record for record, _ in kept], [place for _, place in kept]


def _dataset_dict(splits_in, task: str, columns: Columns, sizes: Sequence[float | int], seed: int,
                  labels: Sequence[str] | None, limit: int | None) -> Splits:
    """A DatasetDict's own splits, kept as given; the ones it lacks are cut from its train split.

    ``validation`` may also be called ``valid`` or ``dev``. A lacking split gets the
    share of the train split that ``sizes`` gives it relative to train (a dict with
    train and test, and sizes 0.8 / 0.1 / 0.1, keeps test and cuts 1/9 of train for
    validation); ``limit`` subsamples the train split.
    """
    where, notes = describe(splits_in), []
    keys: dict[str, str] = {}
    for key in splits_in:
        keys.setdefault(SPLIT_KEYS.get(str(key), ""), key)
    if "train" not in keys:
        raise DataError(f"{where} has splits {', '.join(map(repr, splits_in))} but none called 'train'; rename one "
                        "(DatasetDict({'train': ...})) or pass a single Dataset to be split.")
    parts, located = {}, ([], [])
    for split in ("train", "validation", "test"):
        if split in keys:
            part_where = f"{where}[{keys[split]!r}]"
            records, places = _table_records(dataset_table(splits_in[keys[split]], part_where), task, columns)
            parts[split], places = _drop_empty(records, places, part_where, task, notes)
            located[0].extend(parts[split])
            located[1].extend(f"[{keys[split]!r}] {place}" for place in places)
    label_set = decide_labels(task, *located, where, labels)
    lacking = [split for split in ("validation", "test") if split not in parts]
    shares = [size if split == "train" or split in lacking else type(size)(0)
              for split, size in zip(("train", "validation", "test"), sizes)]
    if not all(isinstance(share, int) for share in shares):
        shares = [share / sum(shares) for share in shares]
    cut = dict(zip(("train", "validation", "test"), split_records(parts["train"], shares, seed, limit, notes)))
    given = [split for split in ("validation", "test") if split in parts]
    if given:
        notes.append(f"{' and '.join(given)} as the DatasetDict gives them "
                     f"({' / '.join(f'{len(parts[split]):,}' for split in given)} rows)")
    parts = {**cut, **{split: parts[split] for split in given}}
    return Splits(task, parts["train"], parts["validation"], parts["test"], label_set, where, notes)


def describe(dataset) -> str:
    """A ``datasets`` object in a few words, for messages and model cards: its kind, name and size."""
    name = dataset_name(dataset)
    kind = type(dataset).__name__
    return f"{kind} {name!r}" if name else f"a {kind}"


# How a DatasetDict may name its splits.
SPLIT_KEYS = {"train": "train", "validation": "validation", "valid": "validation", "dev": "validation", "test": "test"}


def _builtin(name: str, task: str, notes: list[str]) -> tuple[list[dict], list[str], str]:
    """A built-in data set's records for ``task``, exact duplicates dropped, placed by row number."""
    data = BUILTIN_DATA[name]
    if task not in data.loaders:
        raise DataError(f"Built-in data {name!r} serves {', '.join(data.tasks)}, not {task}.")
    loaded = data.loaders[task]()
    records, seen = [], set()
    for record in loaded:
        key = _content(record)
        if key not in seen:
            seen.add(key)
            records.append(record)
    if len(records) < len(loaded):
        unit = "sentences" if task == "tagging" else "texts"
        notes.append(f"dropped {len(loaded) - len(records):,} duplicate {unit}")
    return records, [f"row {i + 1}" for i in range(len(records))], data.source(name)


def _content(record: dict) -> tuple:
    """What makes two records the same example: their text (tokens, prompt + completion), not their label."""
    if "tokens" in record:
        return tuple(record["tokens"])
    return tuple(record[key] for key in ("text", "prompt", "completion") if key in record)


def _note_repeats(records: list[dict], notes: list[str]) -> None:
    """Say so when a user's file repeats texts: copies can fall in different splits (they are kept)."""
    repeats = len(records) - len({_content(record) for record in records})
    if repeats:
        notes.append(f"{repeats:,} rows repeat an earlier text; the copies are kept and may fall in different splits")


def _is_table_file(source, task: str) -> bool:
    """Whether ``source`` names a CSV / TSV / JSON / Parquet file read as a table (a .tsv is CoNLL for tagging)."""
    path = Path(os.fspath(source))
    suffix = path.suffix.lower()
    return (os.fspath(source) not in BUILTIN_DATA and suffix in TABLE_SUFFIXES and path.is_file()
            and not (task == "tagging" and suffix in CONLL_SUFFIXES))


def _from_path(path: Path, task: str, columns: Columns, streaming: bool) -> tuple[list[dict], Sequence[str]]:
    """The records and their places in a user's file or folder."""
    if path.is_dir():
        if task == "tagging":
            raise DataError(f"{path} is a folder, which serves classification (one subfolder per label) and "
                            "causal-lm (every .txt file one text); tagging reads a token<TAB>tag file or a table "
                            "with tokens and tags columns.")
        return read_folder(path, by_label=task == "classification")
    if not path.exists():
        close = difflib.get_close_matches(str(path), BUILTIN_DATA, n=1)
        hint = f" Did you mean the built-in {close[0]!r}?" if close else ""
        raise DataError(f"Data {str(path)!r} does not exist; give a data file or folder, or a built-in data set "
                        f"({', '.join(BUILTIN_DATA)}).{hint}")
    suffix = path.suffix.lower()
    if task == "tagging" and suffix in CONLL_SUFFIXES:
        return read_conll(path)
    if task == "causal-lm" and suffix == ".txt":
        lines, places = read_lines(path)
        return [{"text": line} for line in lines], places
    if suffix in (".txt", ".conll"):
        serves = "tagging (token<TAB>tag lines)" + (" and causal-lm (one text per line)" if suffix == ".txt" else "")
        alternatives = ".csv, .tsv, .jsonl, .json or .parquet table" + (
            " or a folder per label" if task == "classification" else "")
        raise DataError(f"{path} is a {suffix} file, which serves {serves}, not {task}; for {task} give a "
                        f"{alternatives}.")
    if suffix not in TABLE_SUFFIXES:
        raise DataError(f"Cannot read {path}: unknown file type {path.suffix or '(no extension)'!r}; give {ACCEPTED}.")
    return _table_records(read_table(path, streaming=streaming), task, columns)


def _table_records(table: Table, task: str, columns: Columns) -> tuple[list[dict], Sequence[str]]:
    records = table_records(table, task, columns)
    if not records:
        raise DataError(f"{table.where} has no rows (only a header, or nothing): nothing to train or evaluate on.")
    return records, table.places


def read_texts(source: str | os.PathLike, *, column: str = "text") -> list[str]:
    """Texts to predict on: from a .txt file (one per line), a table's ``column``, or ``"-"`` for stdin lines."""
    name = os.fspath(source)
    if name == "-":
        try:
            texts = [line for line in sys.stdin.read().splitlines() if line.strip()]
        except UnicodeDecodeError as error:
            raise DataError(f"Standard input is not valid UTF-8 ({error}); re-encode it, e.g. through "
                            "iconv -f cp1252 -t utf-8.") from None
        where = "standard input"
    else:
        path = Path(name)
        if not path.is_file():
            raise DataError(f"Input file {path} does not exist.")
        if path.suffix.lower() in TABLE_SUFFIXES:
            table = read_table(path)
            if column not in table.columns:
                raise missing_column(table, column, "text")
            texts = [text for text in (as_string(row.get(column)) for row in table.rows) if text.strip()]
        else:
            texts, _ = read_lines(path)
        where = str(path)
    if not texts:
        raise DataError(f"No texts to predict on in {where}.")
    return texts
