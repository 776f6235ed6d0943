"""Turning a table's rows into a task's normalised records, and deciding the label set.

Records per task:

* classification: ``{"text": str, "label": str}``
* tagging: ``{"tokens": list[str], "tags": list[str]}`` (one tag per token)
* causal-lm: ``{"text": str}``, or ``{"prompt": str, "completion": str}`` when the
  data has both of those columns (so a trainer can take the loss on the completion alone).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from ..errors import DataError
from .tables import Table

TASKS = ("classification", "tagging", "causal-lm")


@dataclass(frozen=True)
class Columns:
    """Where each field is in the user's file: the column names to read (``--text-column`` etc. on the CLI)."""

    text: str = "text"
    label: str = "label"
    tokens: str = "tokens"
    tags: str = "tags"
    prompt: str = "prompt"
    completion: str = "completion"


def check_task(task: str) -> None:
    """An error unless ``task`` is one of :data:`TASKS`."""
    if task not in TASKS:
        raise DataError(f"Unknown task {task!r}; choose one of {', '.join(TASKS)}.")


def table_records(table: Table, task: str, columns: Columns) -> list[dict]:
    """Each row of ``table`` as a normalised record of ``task``, read from the columns ``columns`` names."""
    make = record_maker(table, task, columns)
    return [make(row, place) for row, place in zip(table.rows, table.places)]


def record_maker(table: Table, task: str, columns: Columns) -> Callable[[dict, str], dict]:
    """What turns one row of ``table`` (found at ``place``) into a record of ``task``; the columns are checked
    now, so a missing one fails before any row is read (a streamed file is then not read at all)."""
    if task == "classification":
        text, label = _require(table, columns, "text", "label")
        return lambda row, place: {"text": as_string(row.get(text)), "label": as_string(row.get(label))}
    if task == "tagging":
        tokens, tags = _require(table, columns, "tokens", "tags")

        def tagged(row: dict, place: str) -> dict:
            record = {"tokens": _as_sequence(row.get(tokens), table, place, tokens),
                      "tags": _as_sequence(row.get(tags), table, place, tags)}
            check_tags(record, f"{table.where} {place}")
            return record

        return tagged
    if columns.prompt in table.columns and columns.completion in table.columns:
        prompt, completion = columns.prompt, columns.completion
        return lambda row, place: {"prompt": as_string(row.get(prompt)), "completion": as_string(row.get(completion))}
    if columns.text not in table.columns:
        raise DataError(
            f"{table.where} has neither a {columns.text!r} column nor {columns.prompt!r} and {columns.completion!r} "
            f"columns (its columns: {_listed(table.columns)}). Name them with --text-column, or --prompt-column and "
            "--completion-column (Columns(text=...) / Columns(prompt=..., completion=...) in Python)."
        )
    return lambda row, place: {"text": as_string(row.get(columns.text))}


def _require(table: Table, columns: Columns, *fields: str) -> list[str]:
    """The file's column names for ``fields``, or an error naming the missing one and the option to set."""
    wanted = [getattr(columns, field) for field in fields]
    for field, column in zip(fields, wanted):
        if column not in table.columns:
            raise missing_column(table, column, field)
    return wanted


def missing_column(table: Table, column: str, field: str) -> DataError:
    """The error for a table without ``column``, read for ``field``: it lists the columns there are and the option."""
    return DataError(f"{table.where} has no column {column!r} for the {field} (its columns: {_listed(table.columns)}). "
                     f"Name the {field} column with --{field}-column NAME (Columns({field}=NAME) in Python).")


def _listed(names: Sequence[str]) -> str:
    return ", ".join(repr(name) for name in names) or "none"


def as_string(value) -> str:
    """A cell as text: numbers as they are written (``1.0`` read from Parquet as ``"1"``), missing as ``""``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return value if isinstance(value, str) else str(value)


def _as_sequence(value, table: Table, place: str, column: str) -> list[str]:
    """A tokens/tags cell as a list of strings: a list already, a JSON list, or a space-separated string."""
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as error:
            raise DataError(f"{table.where} {place}: column {column!r} starts like a JSON list but is not one "
                            f"({error}).") from None
    if isinstance(value, str) or value is None:
        return (value or "").split()
    if isinstance(value, (list, tuple)):
        return [as_string(item) for item in value]
    raise DataError(f"{table.where} {place}: column {column!r} holds {type(value).__name__}; expected a list of "
                    "strings, a JSON list, or a space-separated string.")


def check_tags(record: dict, where: str) -> None:
    """An error unless a tagging record has exactly one tag per token."""
    if len(record["tokens"]) != len(record["tags"]):
        raise DataError(f"{where}: {len(record['tokens'])} tokens but {len(record['tags'])} tags; each token needs "
                        "exactly one tag.")


def is_empty(record: dict) -> bool:
    """Whether a record has nothing to learn from: empty text, no tokens, or an empty completion."""
    if "tokens" in record:
        return not record["tokens"]
    if "completion" in record:
        return not record["completion"].strip()
    return not record["text"].strip()


def record_labels(record: dict) -> list[str]:
    """The labels a record carries: its class, or its tags; none for causal-lm."""
    if "label" in record:
        return [record["label"]]
    return record.get("tags", [])


def decide_labels(task: str, records: Iterable[dict], places: Iterable[str], where: str,
                  given: Sequence[str] | None) -> tuple[str, ...] | None:
    """The label set: ``given`` after checking every record against it, else the labels the records use.

    Classification labels are sorted (numerically when every label is an integer, so
    ``"2"`` comes before ``"10"``); tagging puts ``"O"`` first and sorts the rest.
    """
    tally = LabelTally(task, where, given)
    for record, place in zip(records, places):
        tally.add(record, place)
    return tally.labels()


class LabelTally:
    """The labels of records seen one at a time, each checked as it comes, so that a streamed file is checked in
    the one pass that also counts it (:func:`decide_labels` for records in memory)."""

    def __init__(self, task: str, where: str, given: Sequence[str] | None):
        if task == "causal-lm" and given is not None:
            raise DataError("labels= applies to classification and tagging only; causal-lm data has no labels.")
        self.task, self.where = task, where
        self.given = None if given is None else tuple(as_string(label) for label in given)
        self.used: set[str] = set()
        self.unlabelled: list[str] = []  # places of classification rows without a label

    def add(self, record: dict, place: str) -> None:
        if self.task == "classification" and not record["label"].strip():
            self.unlabelled.append(place)
            return
        for label in record_labels(record):
            if self.given is not None and label not in self.given:
                kind = "label" if self.task == "classification" else "tag"
                raise DataError(f"{self.where} {place}: {kind} {label!r} is not one of the known {kind}s "
                                f"({', '.join(self.given)}).")
            self.used.add(label)

    def labels(self) -> tuple[str, ...] | None:
        """The label set of everything added (None for causal-lm); an error for unlabelled rows or a single class."""
        if self.task == "causal-lm":
            return None
        if self.unlabelled:
            raise DataError(f"{self.where} {self.unlabelled[0]} has no label ({len(self.unlabelled)} rows without "
                            "one); every row of classification data needs a label.")
        if self.given is not None:
            labels = self.given
        elif self.task == "tagging":
            labels = (("O",) if "O" in self.used else ()) + tuple(sorted(self.used - {"O"}))
        else:
            numeric = all(label.lstrip("-").isdigit() for label in self.used)
            labels = tuple(sorted(self.used, key=int if numeric else None))
        if self.task == "classification" and len(labels) < 2:
            raise DataError(f"{self.where} has a single class ({_listed(labels)}); classification needs at least "
                            "two. Check the label column (--label-column).")
        return labels
