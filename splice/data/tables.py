"""Tables of named columns read through 🤗 ``datasets``: CSV, TSV, JSON lines, Parquet, ``Dataset`` objects.

``datasets`` converts a file once into Arrow and memory-maps it (or, with
``streaming``, reads it row by row without converting), so a large file is not
parsed into Python first. What stays here is what ``datasets`` does not do for
splice: refusing a path that is not a regular file (a FIFO would block the reader
forever) or JSON nested deep enough to crash the Arrow parser, reading every CSV
cell as the string it is written as (no ``"007"`` -> ``7``, no ``"NA"`` -> missing),
and turning a failure into a one-line :class:`~splice.errors.DataError` that says
where the file is wrong (the first undecodable byte, the first bad JSON line).
``datasets`` is imported only when a table is read: ``import splice`` stays light.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import json
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError
from ..files import MAX_JSON_DEPTH, json_depth
from .readers import not_utf8

# Suffixes read as tables of named columns; ".tsv" is a table too unless the task is tagging (then CoNLL).
TABLE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json", ".parquet")
_BUILDERS = {".csv": "csv", ".tsv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
_CHUNK = 1 << 20


@dataclass
class Places:
    """Where row ``i`` of a table is, computed on demand (no list of strings for a million-row file).

    Iterating never ends (a streamed table's length is unknown): zip it with the rows.
    """

    unit: str  # "line", "row" or "item"
    first: int  # the number of the first row: 2 for a CSV (line 1 is the header), else 1

    def __getitem__(self, index: int) -> str:
        return f"{self.unit} {self.first + index}"

    def __iter__(self) -> Iterator[str]:
        index = 0
        while True:
            yield self[index]
            index += 1


@dataclass
class Table:
    """The rows of a data source as column -> value dicts, the columns it has, what it is and where each row is."""

    where: str  # the file's path, or a description of a Dataset, for error messages and model cards
    columns: tuple[str, ...]
    rows: Iterable[dict]  # a memory-mapped Dataset, a streamed IterableDataset, or a list
    places: Places


def require_datasets(purpose: str):
    """The ``datasets`` module, or a one-line error naming the extra that installs it."""
    try:
        import datasets
        import pyarrow  # noqa: F401  (datasets needs it; checked by name so a missing pyarrow is caught too)
    except ImportError:
        raise DataError(f"{purpose} needs 🤗 datasets and pyarrow: pip install 'splice[train]'.") from None
    return datasets


def is_dataset(value: object) -> bool:
    """Whether ``value`` is a ``datasets`` Dataset, IterableDataset or DatasetDict, without importing datasets."""
    return type(value).__module__.split(".")[0] == "datasets"


def dataset_name(dataset) -> str | None:
    """The name a Dataset or DatasetDict carries (``imdb``; ``csv`` for one read from a CSV file), if any."""
    first = dataset if hasattr(dataset, "info") else next(iter(dataset.values()), None)
    info = getattr(first, "info", None)
    return (info and (info.dataset_name or info.builder_name)) or None


def is_saved_dataset(path: Path) -> bool:
    """Whether ``path`` is a folder written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``."""
    return (path / "dataset_dict.json").is_file() or (
        (path / "state.json").is_file() and (path / "dataset_info.json").is_file())


def load_saved(path: Path):
    """The Dataset or DatasetDict that ``save_to_disk`` wrote to ``path`` (memory-mapped, not read into memory)."""
    datasets = require_datasets(f"Reading the saved dataset {path}")
    try:
        return datasets.load_from_disk(str(path))
    except Exception as error:  # datasets raises several unrelated types for a damaged folder
        raise DataError(f"{path} looks like a save_to_disk folder but could not be read: {error}") from None


def dataset_table(dataset, where: str) -> Table:
    """A ``datasets`` Dataset (or IterableDataset) as a table, its rows numbered from 1."""
    columns = dataset.column_names
    if columns is None:  # an IterableDataset whose features are not known until it is read
        columns = list(next(iter(dataset), {}))
    return Table(where, tuple(columns), dataset, Places("row", 1))


def read_table(path: Path, *, streaming: bool = False) -> Table:
    """The rows of a CSV, TSV, JSON-lines (or JSON array) or Parquet file, read by ``datasets``."""
    _check_regular(path)
    suffix = path.suffix.lower()
    if path.stat().st_size == 0 or (suffix != ".parquet" and not _has_text(path)):
        raise DataError(f"Data file {path} is empty.")
    datasets = require_datasets(f"Reading {path}")
    options: dict = {}
    places = Places("row", 1)
    if suffix in (".csv", ".tsv"):
        delimiter = "\t" if suffix == ".tsv" else ","
        header = _header(path, delimiter)
        # Every cell as the string it is written as; pandas would otherwise guess types and read "NA" as missing.
        options = {"sep": delimiter, "na_filter": False,
                   "features": datasets.Features({name: datasets.Value("string") for name in header})}
        places = Places("line", 2)
    elif suffix in (".jsonl", ".json"):
        array = _check_json(path)
        places = Places("item" if array else "line", 1)
    try:
        with _quiet(datasets):
            table = datasets.load_dataset(_BUILDERS[suffix], data_files=str(path), split="train",
                                          streaming=streaming, **options)
    except Exception as error:  # datasets wraps the parser's error; find what is wrong and say where
        raise _explain(path, suffix, error) from None
    return Table(str(path), tuple(table.column_names or options.get("features", {})), table, places)


def _check_regular(path: Path) -> None:
    """Refuse a FIFO, device or socket before anything opens it (reading a FIFO waits forever for a writer)."""
    try:
        mode = path.stat().st_mode
    except OSError:
        raise DataError(f"Data file {path} does not exist.") from None
    if not stat.S_ISREG(mode):
        raise DataError(f"Data file {path} is not a regular file (a FIFO, device or socket); give an ordinary file.")


def _has_text(path: Path) -> bool:
    """Whether a text file holds anything but whitespace (a byte-order mark counts as nothing)."""
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            if chunk.replace(b"\xef\xbb\xbf", b"").strip():
                return True
    return False


def _header(path: Path, delimiter: str) -> list[str]:
    """The column names on a CSV/TSV file's first line, read without reading the rest."""
    with open(path, encoding="utf-8-sig", errors="strict", newline="") as handle:
        try:
            return next(csv.reader(handle, delimiter=delimiter), [])
        except UnicodeDecodeError:
            raise _not_utf8(path) from None


def _check_json(path: Path) -> bool:
    """Whether the file is one JSON array (else JSON lines); an error if any line nests too deep to parse safely.

    Arrow's JSON parser recurses once per level and overflows the stack on a line
    like ``[[[[...]]]]`` 100,000 deep, killing the process; such a file is refused first.
    """
    array = None
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, 1):
            if array is None and line.strip():
                array = line.lstrip().lstrip(b"\xef\xbb\xbf").startswith(b"[")
            if line.count(b"[") + line.count(b"{") > MAX_JSON_DEPTH:
                depth = json_depth(line.decode("utf-8", errors="replace"))
                if depth > MAX_JSON_DEPTH:
                    raise DataError(f"{path} line {number} nests {depth:,} levels deep (at most {MAX_JSON_DEPTH}); "
                                    "it is not a table of rows.")
    return bool(array)


def _explain(path: Path, suffix: str, error: Exception) -> DataError:
    """A one-line account of why ``datasets`` could not read ``path``: where the bytes or JSON go wrong."""
    cause = error.__cause__ or error.__context__ or error
    if "corresponds to no data" in str(error):
        return DataError(f"{path} has no rows (only a header, or nothing): nothing to train or evaluate on.")
    if suffix == ".parquet":
        return DataError(f"{path} could not be read as Parquet: {cause}")
    if isinstance(cause, UnicodeDecodeError) or _first_bad_byte(path) is not None:
        return _not_utf8(path)
    if suffix in (".jsonl", ".json"):
        bad = _first_bad_json_line(path)
        if bad:
            return bad
        return DataError(f"{path} is not valid JSON lines or a JSON array of objects: {cause}")
    return DataError(f"{path} is not valid {'TSV' if suffix == '.tsv' else 'CSV'}: {cause}")


def _first_bad_byte(path: Path) -> int | None:
    """The offset of the first byte that is not UTF-8 in ``path``, read a chunk at a time; None if all decode."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with open(path, "rb") as handle:
        while True:
            chunk = handle.read(_CHUNK)
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as bad:
                return offset + bad.start - len(decoder.getstate()[0])
            if not chunk:
                return None
            offset += len(chunk)


def _not_utf8(path: Path) -> DataError:
    offset = _first_bad_byte(path) or 0
    with open(path, "rb") as handle:
        handle.seek(offset)
        byte = handle.read(1)
    return not_utf8(path, offset, byte[0] if byte else 0)


def _first_bad_json_line(path: Path) -> DataError | None:
    """The error for the first line of a JSON-lines file that is not a JSON object (the file already failed)."""
    with open(path, encoding="utf-8-sig") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as error:
                return DataError(f"{path} line {number} is not valid JSON ({error}); a .jsonl file holds one JSON "
                                 "object per line.")
            if not isinstance(item, dict):
                return DataError(f"{path} line {number} is {type(item).__name__}, not a JSON object of column: value.")
    return None


@contextlib.contextmanager
def _quiet(datasets):
    """Silence datasets' progress bars and its logged copy of an error we are about to raise in one line."""
    logging = datasets.utils.logging
    level, bars = logging.get_verbosity(), datasets.utils.are_progress_bars_disabled()
    logging.set_verbosity(logging.CRITICAL + 10)
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        logging.set_verbosity(level)
        if not bars:
            datasets.enable_progress_bars()


__all__ = ["TABLE_SUFFIXES", "Places", "Table", "dataset_name", "dataset_table", "is_dataset", "is_saved_dataset",
           "load_saved", "read_table", "require_datasets"]
