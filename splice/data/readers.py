"""Reading the data files that are not tables: CoNLL token<TAB>tag files, text lines, folders of .txt files.

Tables (CSV, TSV, JSON lines, Parquet) are read by 🤗 datasets in :mod:`.tables`.

Every row keeps a *place* ("line 7", "row 3", "business/001.txt") so that an
error about one row can say where to look. Text must be UTF-8: a file that is
not stops with the byte offset of the first bad byte rather than silently
turning characters into replacement marks.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import DataError

CONLL_SUFFIXES = (".conll", ".txt", ".tsv")
ACCEPTED = "a .csv, .tsv, .jsonl, .json (JSON lines) or .parquet table, a .conll/.txt/.tsv token<TAB>tag file " \
           "(tagging), a .txt file of one text per line (causal-lm), or a folder with one subfolder of .txt files " \
           "per label"


def decode(path: Path, data: bytes) -> str:
    """``data`` (the bytes of ``path``) as UTF-8 text, a leading byte-order mark dropped, or an error saying where."""
    bom = data.startswith(b"\xef\xbb\xbf")
    try:
        return data[3 if bom else 0:].decode("utf-8")
    except UnicodeDecodeError as error:
        offset = error.start + (3 if bom else 0)
        raise not_utf8(path, offset, data[offset]) from None


def not_utf8(path: Path, offset: int, byte: int) -> DataError:
    """The error for a file whose byte at ``offset`` (value ``byte``) is the first that is not UTF-8."""
    return DataError(f"{path} is not valid UTF-8: byte {offset} (0x{byte:02x}) does not decode. Re-encode the file "
                     f"as UTF-8, e.g. iconv -f cp1252 -t utf-8 {path} > {path.with_suffix('.utf8' + path.suffix)}")


def read_text(path: Path) -> str:
    """The UTF-8 text of the file ``path``, or an error if it is missing, empty or not UTF-8."""
    if not path.is_file():
        raise DataError(f"Data file {path} does not exist.")
    text = decode(path, path.read_bytes())
    if not text.strip():
        raise DataError(f"Data file {path} is empty.")
    return text


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
