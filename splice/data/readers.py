"""Reading a user's data file into located rows, before any task gives the columns a meaning.

Every row keeps a *place* ("line 7", "row 3", "business/001.txt") so that an
error about one row can say where to look. Text must be UTF-8: a file that is
not stops with the byte offset of the first bad byte rather than silently
turning characters into replacement marks.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError

# Suffixes read as tables of named columns; ".tsv" is a table too unless the task is tagging (then CoNLL).
TABLE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json", ".parquet")
CONLL_SUFFIXES = (".conll", ".txt", ".tsv")
ACCEPTED = "a .csv, .tsv, .jsonl, .json (JSON lines) or .parquet table, a .conll/.txt/.tsv token<TAB>tag file " \
           "(tagging), a .txt file of one text per line (causal-lm), or a folder with one subfolder of .txt files " \
           "per label"


@dataclass
class Table:
    """The rows of a data file as column -> value dicts, the columns it has, and where each row is in it."""

    path: Path
    columns: tuple[str, ...]
    rows: list[dict]
    places: list[str]


def decode(path: Path, data: bytes) -> str:
    """``data`` (the bytes of ``path``) as UTF-8 text, a leading byte-order mark dropped, or an error saying where."""
    bom = data.startswith(b"\xef\xbb\xbf")
    try:
        return data[3 if bom else 0:].decode("utf-8")
    except UnicodeDecodeError as error:
        offset = error.start + (3 if bom else 0)
        raise DataError(
            f"{path} is not valid UTF-8: byte {offset} (0x{data[offset]:02x}) does not decode. Re-encode the file "
            f"as UTF-8, e.g. iconv -f cp1252 -t utf-8 {path} > {path.with_suffix('.utf8' + path.suffix)}"
        ) from None


def read_text(path: Path) -> str:
    """The UTF-8 text of the file ``path``, or an error if it is missing, empty or not UTF-8."""
    if not path.is_file():
        raise DataError(f"Data file {path} does not exist.")
    text = decode(path, path.read_bytes())
    if not text.strip():
        raise DataError(f"Data file {path} is empty.")
    return text


def read_table(path: Path) -> Table:
    """The rows of a CSV, TSV, JSON-lines or Parquet file."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return _read_parquet(path)
    text = read_text(path)
    if suffix in (".jsonl", ".json"):
        return _read_json(path, text)
    return _read_delimited(path, text, "\t" if suffix == ".tsv" else ",")


def _read_delimited(path: Path, text: str, delimiter: str) -> Table:
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    rows, places = [], []
    # The csv module refuses fields over 128 KiB by default; a long document is a fine training text.
    limit = csv.field_size_limit(2**31 - 1)
    try:
        for row in reader:
            rows.append(row)
            places.append(f"line {reader.line_num}")
    except csv.Error as error:
        raise DataError(f"{path} line {reader.line_num} is not valid {'CSV' if delimiter == ',' else 'TSV'}: "
                        f"{error}") from None
    finally:
        csv.field_size_limit(limit)
    return Table(path, tuple(reader.fieldnames or ()), rows, places)


def _read_json(path: Path, text: str) -> Table:
    """JSON lines (one object per line), or a single JSON array of objects."""
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as error:
            raise DataError(f"{path} is not valid JSON: {error}") from None
        located = [(f"item {i + 1}", item) for i, item in enumerate(items)]
    else:
        located = []
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    located.append((f"line {number}", json.loads(line)))
                except json.JSONDecodeError as error:
                    raise DataError(f"{path} line {number} is not valid JSON ({error}); a .jsonl file holds one "
                                    "JSON object per line.") from None
    columns: dict[str, None] = {}
    for place, item in located:
        if not isinstance(item, dict):
            raise DataError(f"{path} {place} is {type(item).__name__}, not a JSON object of column: value.")
        columns.update(dict.fromkeys(item))
    return Table(path, tuple(columns), [item for _, item in located], [place for place, _ in located])


def _read_parquet(path: Path) -> Table:
    if not path.is_file():
        raise DataError(f"Data file {path} does not exist.")
    try:
        from pyarrow import parquet
    except ImportError:
        raise DataError(f"Reading {path} needs pyarrow: pip install pyarrow (or pip install 'splice[parquet]')."
                        ) from None
    try:
        table = parquet.read_table(path)
    except Exception as error:  # pyarrow raises several unrelated types for a damaged or foreign file
        raise DataError(f"{path} could not be read as Parquet: {error}") from None
    rows = table.to_pylist()
    return Table(path, tuple(table.column_names), rows, [f"row {i + 1}" for i in range(len(rows))])


def read_conll(path: Path) -> tuple[list[dict], list[str]]:
    """Sentences of a ``token<TAB>tag`` file as ``{"tokens", "tags"}`` records, each placed at its first line.

    A blank (or whitespace-only) line ends a sentence. Lines without a tab split on
    whitespace, and the first field is the token, the last the tag, so a CoNLL-2003
    file (token POS chunk NER) reads too; ``-DOCSTART-`` lines are skipped.
    """
    records, places = [], []
    tokens: list[str] = []
    tags: list[str] = []
    start = 0
    for number, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip():
            if tokens:
                records.append({"tokens": tokens, "tags": tags})
                places.append(f"line {start}")
            tokens, tags = [], []
            continue
        fields = line.split("\t") if "\t" in line else line.split()
        if fields[0] == "-DOCSTART-":
            continue
        token, tag = fields[0].strip(), fields[-1].strip()
        if len(fields) < 2 or not token or not tag:
            raise DataError(f"{path} line {number} is {line!r}; a tagging file holds one token<TAB>tag per line, "
                            "with a blank line between sentences.")
        if not tokens:
            start = number
        tokens.append(token)
        tags.append(tag)
    if tokens:
        records.append({"tokens": tokens, "tags": tags})
        places.append(f"line {start}")
    return records, places


def read_lines(path: Path) -> tuple[list[str], list[str]]:
    """The non-blank lines of a text file, and their line numbers as places."""
    located = [(f"line {n}", line) for n, line in enumerate(read_text(path).splitlines(), 1) if line.strip()]
    return [line for _, line in located], [place for place, _ in located]


def read_folder(path: Path, by_label: bool) -> tuple[list[dict], list[str]]:
    """The .txt files under a folder, each one text (stripped), placed at its path inside the folder.

    With ``by_label`` the folder holds one subfolder per label (``DIR/<label>/*.txt``),
    and each record is ``{"text", "label"}``; otherwise every .txt file anywhere
    under the folder is a ``{"text"}`` record. Folders and files are taken in sorted order.
    """
    if by_label:
        folders = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
        files = [(folder.name, file) for folder in folders for file in sorted(folder.glob("*.txt"))]
    else:
        files = [(None, file) for file in sorted(path.rglob("*.txt"))]
    if not files:
        layout = "DIR/<label>/<name>.txt (one subfolder per label)" if by_label else ".txt files"
        raise DataError(f"Data folder {path} holds no .txt files where expected: lay it out as {layout}.")
    records = []
    for label, file in files:
        text = decode(file, file.read_bytes()).strip()
        records.append({"text": text} if label is None else {"text": text, "label": label})
    return records, [str(file.relative_to(path)) for _, file in files]
