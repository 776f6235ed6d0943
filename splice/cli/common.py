"""What several commands share: the command parser, adapter and base model arguments, progress lines, formatting.

Nothing here imports torch or transformers at module level: every command
module imports this one when the parser is built, and ``splice --help`` must
not wait seconds for them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from ..files import is_folder

# --model-class: which Auto class reads the base model folder.
MODEL_CLASSES = {
    "base": "AutoModel",
    "causal-lm": "AutoModelForCausalLM",
    "seq-cls": "AutoModelForSequenceClassification",
}
CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")  # the Hugging Face class names of causal language models


QUIET_HELP = "print no progress lines on stderr"
RUN_ADAPTER = "adapter"  # where `splice train --out RUN` writes the trained adapter (splice.train.trainer.ADAPTER_DIR)


def shared_options(top: bool) -> argparse.ArgumentParser:
    """The options every command takes, before or after its name: ``splice -q convert`` = ``splice convert -q``.

    Give it as a parent to the top-level parser (``top``: the options carry their
    defaults) and to every (sub)command (the defaults are suppressed, because
    argparse copies a subcommand's values over the top level's, so a default there
    would undo an option given before the command's name).
    """
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("-q", "--quiet", action="store_true", default=False if top else argparse.SUPPRESS,
                        help=QUIET_HELP)
    return parser


def add_command(commands: argparse._SubParsersAction, name: str, help: str, description: str | None = None,
                parents: Sequence[argparse.ArgumentParser] = ()) -> argparse.ArgumentParser:
    """A subparser for ``name`` with the shared options (:func:`shared_options`) and those of ``parents``."""
    return commands.add_parser(name, help=help, description=description or help,
                               parents=[shared_options(top=False), *parents])


def adapter_path(source: str) -> str:
    """``source`` as an adapter folder: a ``splice train`` run folder stands for the adapter it wrote.

    ``splice train --out RUN`` writes the adapter to ``RUN/adapter``, next to
    metrics and checkpoints; users naturally pass ``RUN``. A folder that is not
    itself an adapter but holds one in ``adapter/`` gives that one; anything else
    (an adapter folder, a hub ``name@version``, a path that does not exist) is
    returned unchanged for the loader to read or refuse.
    """
    from ..convert import ADAPTER_CONFIGS  # needs torch; only commands that load adapters get here

    folder, inner = Path(source), Path(source) / RUN_ADAPTER

    def is_adapter(path: Path) -> bool:
        return any(os.path.isfile(path / config) for config in ADAPTER_CONFIGS)  # never raises, unlike Path's

    return str(inner) if is_folder(folder) and not is_adapter(folder) and is_adapter(inner) else source


def add_model_options(parser: argparse.ArgumentParser, auto: str | None = None) -> None:
    """``--model`` and ``--model-class``; with ``auto`` (what it picks, for the help) the class defaults to
    ``"auto"``, which the command resolves."""
    parser.add_argument("--model", required=True, metavar="NAME_OR_PATH",
                        help="folder of the base model, as save_pretrained wrote it, or a built-in demo model "
                             "(minilm, smollm2)")
    classes = ("base (AutoModel), causal-lm (AutoModelForCausalLM), seq-cls (AutoModelForSequenceClassification)")
    if auto is None:
        parser.add_argument("--model-class", choices=list(MODEL_CLASSES), default="base",
                            help=f"Auto class that reads the base (default: base): {classes}")
    else:
        parser.add_argument("--model-class", choices=["auto", *MODEL_CLASSES], default="auto",
                            help=f"Auto class that reads the base: auto (the default: {auto}), {classes}")


def add_quantize_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--quantize`` and ``--compute-dtype``: store the frozen base in 4 or 8 bits (the adapters stay float)."""
    from ..quantize import COMPUTE_DTYPES, NOT_OFFERED, QUANTIZATIONS

    # A not-offered choice parses, so that loading refuses it with its reason on one line; help lists only offers.
    parser.add_argument("--quantize", choices=QUANTIZATIONS + tuple(NOT_OFFERED),
                        metavar="{" + ",".join(QUANTIZATIONS) + "}",
                        help="load the base quantized: nf4 / fp4 / int8 (bitsandbytes) or torchao-int8 (torchao "
                             "int8 weight-only); adapters stay float (the quantize extra)")
    parser.add_argument("--compute-dtype", choices=COMPUTE_DTYPES,
                        help="dtype 4-bit layers compute in (default: float32)")


def base_model_class(folder: Path) -> str:
    """``--model-class auto`` for a base model folder: causal-lm where its config.json names a causal-LM
    architecture, else base."""
    try:
        architectures = json.loads((folder / "config.json").read_text()).get("architectures") or []
    except (OSError, ValueError, AttributeError):
        architectures = []
    return "causal-lm" if any(str(a).endswith(CAUSAL_SUFFIXES) for a in architectures) else "base"


def load_base(name_or_path: str, model_class: str, quantize: str | None = None, compute_dtype: str | None = None,
              **kwargs):
    """The Hugging Face model in a local folder or built-in demo model, in eval mode (never looked up online),
    stored as ``quantize`` (see :mod:`splice.quantize`) when given; ``kwargs`` go to ``from_pretrained``."""
    import transformers

    from ..assets import model_path
    from ..quantize import load_pretrained

    auto = getattr(transformers, MODEL_CLASSES[model_class])
    return load_pretrained(auto, str(model_path(name_or_path)), quantize, compute_dtype or "float32",
                           local_files_only=True, **kwargs).eval()


def split_sizes(text: str) -> tuple[float, ...]:
    """``--sizes A,B,C``: train, validation, test as fractions (with a dot) or row counts."""
    try:
        values = [float(v) if "." in v else int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected three numbers like 0.8,0.1,0.1 or 4000,1000,2000, got {text!r}") from None
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"expected three numbers (train, validation, test), got {text!r}")
    return tuple(values)



def attach_base(args: argparse.Namespace, steps: Steps):
    """Load ``--model`` with ``--model-class`` and attach splice to it."""
    from ..adapted import attach

    quantize = getattr(args, "quantize", None)
    stored = f" ({quantize})" if quantize else ""
    with steps(f"loading {MODEL_CLASSES[args.model_class]} from {args.model}{stored}"):
        return attach(load_base(args.model, args.model_class, quantize, getattr(args, "compute_dtype", None)))


class Steps:
    """Progress lines on stderr: ``splice: <what> ...`` then ``done (1.2 s)``; silent with ``quiet``."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet

    @contextmanager
    def __call__(self, what: str) -> Iterator[None]:
        start = time.perf_counter()
        self.say(f"{what} ...")
        yield
        self.say(f"  done ({time.perf_counter() - start:.1f} s)")

    def say(self, line: str) -> None:
        if not self.quiet:
            print(f"splice: {line}" if not line.startswith(" ") else line, file=sys.stderr, flush=True)


def human_size(size: int) -> str:
    """Bytes in decimal units, as ``summary()`` reports them: ``812 B``, ``12.3 kB``, ``4.20 MB``."""
    if size < 1000:
        return f"{size} B"
    for unit, scale in (("kB", 1e3), ("MB", 1e6), ("GB", 1e9)):
        if size < scale * 1000 or unit == "GB":
            value = size / scale
            return f"{value:.1f} {unit}" if value < 100 else f"{value:.0f} {unit}"
    raise AssertionError("unreachable")


def table(header: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[int] = ()) -> str:
    """Plain columns, two spaces apart; the columns in ``right`` are right-aligned."""
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [str(c).rjust(w) if i in right else str(c).ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def describe_base(base: dict) -> str:
    """A splice base fingerprint in words: ``bert, hidden 32, 2 layers, 4 heads, vocabulary 128``."""
    if not base:
        return "-"
    words = {"hidden_size": "hidden {}", "num_layers": "{} layers", "num_heads": "{} heads",
             "vocab_size": "vocabulary {}"}
    parts = [str(base["model_type"])] if base.get("model_type") is not None else []
    parts += [words[key].format(base[key]) for key in words if base.get(key) is not None]
    parts += [f"{key.replace('_', ' ')} {value}" for key, value in base.items()
              if key not in words and key != "model_type" and value not in (None, "")]
    return ", ".join(parts)
