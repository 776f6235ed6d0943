"""Training and evaluation data for ``splice train / eval / predict``.

One call, :func:`load_data`, reads a user's file (CSV, TSV, JSON lines, Parquet,
a CoNLL-style tagging file, a folder per label) or a packaged demo set by name
(:data:`BUILTIN_DATA`), normalises its rows for a task (:data:`TASKS`), and cuts a
deterministic train / validation / test split (:class:`Splits`). :func:`read_texts`
reads the inputs of ``splice predict``.
"""

from .builtin import BUILTIN_DATA, BuiltinData
from .load import load_data, read_texts
from .records import TASKS, Columns
from .splits import Splits

__all__ = ["BUILTIN_DATA", "TASKS", "BuiltinData", "Columns", "Splits", "load_data", "read_texts"]
