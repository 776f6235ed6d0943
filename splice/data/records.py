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
from collections.abc import Sequence
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
    if task == "classification":
        text, label = _require(table, columns, "text", "label")
        return [{"text": as_string(row.get(text)), "label": as_string(row.get(label))} for row in table.rows]
    if task == "tagging":
        tokens, tags = _require(table, columns, "tokens", "tags")
        records = []
        for row, place in zip(table.rows, table.places):
            record = {"tokens": _as_sequence(row.get(tokens), table, place, tokens),
                      "tags": _as_sequence(row.get(tags), table, place, tags)}
            check_tags(record, f"{table.where} {place}")
            records.append(record)
        return records
    if columns.prompt in table.columns and columns.completion in table.columns:
        return [{"prompt": as_string(row.get(columns.prompt)), "completion": as_string(row.get(columns.completion))}
                for row in table.rows]
    if columns.text not in table.columns:
        raise DataError(
            f"{table.where} has neither a {columns.text!r} column nor {columns.prompt!r} and {columns.completion!r} "
            f"columns (its columns: {_listed(table.columns)}). Name them with --text-column, or --prompt-column and "
            "--completion-column (Columns(text=...) / Columns(prompt=..., completion=...) in Python)."
        )
    return [{"text": as_string(row.get(columns.text))} for row in table.rows]


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


def decide_labels(task: str, records: list[dict], places: list[str], where: str,
                  given: Sequence[str] | None) -> tuple[str, ...] | None:
    """The label set: ``given`` after checking every record against it, else the labels the records use.

    Classification labels are sorted (numerically when every label is an integer, so
    ``"2"`` comes before ``"10"``); tagging puts ``"O"`` first and sorts the rest.
    """
    if task == "causal-lm":
        if given is not None:
            raise DataError("labels= applies to classification and tagging only; causal-lm data has no labels.")
        return None
    if task == "classification":
        missing = [place for record, place in zip(records, places) if not record["label"].strip()]
        if missing:
            raise DataError(f"{where} {missing[0]} has no label ({len(missing)} rows without one); every row of "
                            "classification data needs a label.")
    if given is not None:
        labels = tuple(as_string(label) for label in given)
        known = set(labels)
        for record, place in zip(records, places):
            for label in record_labels(record):
                if label not in known:
                    kind = "label" if task == "classification" else "tag"
                    raise DataError(f"{where} {place}: {kind} {label!r} is not one of the known {kind}s "
                                    f"({', '.join(labels)}).")
    else:
        used = {label for record in records for label in record_labels(record)}
        if task == "tagging":
            labels = (("O",) if "O" in used else ()) + tuple(sorted(used - {"O"}))
        else:
            numeric = all(label.lstrip("-").isdigit() for label in used)
            labels = tuple(sorted(used, key=int if numeric else None))
    if task == "classification" and len(labels) < 2:
        raise DataError(f"{where} has a single class ({_listed(labels)}); classification needs at least two. "
                        "Check the label column (--label-column).")
    return labels

