"""``splice predict --adapter DIR [--adapter DIR2 ...] [TEXT ...]``: labels, tags or generations for new texts.

Texts come from the arguments, from ``--file`` (one per line, or a CSV/JSONL
text column), or from standard input (``-``). With several ``--adapter`` options
every text is run through each adapter, side by side, on one loaded base.
"""

from __future__ import annotations

import argparse
import json
import sys

from ..errors import SpliceError
from .common import Steps, adapter_path, add_command, add_quantize_options


def register(commands: argparse._SubParsersAction) -> None:
    parser = add_command(commands, "predict", help="run trained adapters on new texts",
                         description=__doc__.split("\n\n")[1].replace("\n", " "))
    parser.add_argument("texts", nargs="*", metavar="TEXT", help="texts to run ('-' reads standard input)")
    parser.add_argument("--adapter", action="append", required=True, metavar="DIR",
                        help="adapter folder (or a splice train run folder); give it several times to compare "
                             "adapters")
    parser.add_argument("--file", metavar="PATH", help="read texts from a file (.txt lines, CSV or JSONL 'text')")
    parser.add_argument("--model", metavar="NAME_OR_PATH", help="base model (default: the one it was trained on)")
    add_quantize_options(parser)
    parser.add_argument("--max-length", type=int, default=256, help="tokens per input (default 256)")
    parser.add_argument("--max-new-tokens", type=int, default=40, help="causal LM: tokens to generate (default 40)")
    parser.add_argument("--raw", action="store_true",
                        help="causal LM: generate from the texts as given, not in the prompt format of the built-in "
                             "data the adapter was trained on (bbc-headlines: body + 'Headline:')")
    parser.add_argument("--json", action="store_true", help="one JSON object per text")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..data import read_texts
    from ..train.inference import load_adapters, predict

    texts = list(args.texts)
    if args.file:
        texts += read_texts(args.file)
    if texts == ["-"] or (not texts and not sys.stdin.isatty()):
        texts = read_texts("-")
    if not texts:
        raise SpliceError("No texts to predict: give them as arguments, with --file, or on standard input ('-').")
    with Steps(args.quiet)(f"loading {', '.join(args.adapter)}"):
        loaded = load_adapters([adapter_path(a) for a in args.adapter], args.model, args.quantize, args.compute_dtype)
    inputs = texts if args.raw or loaded.task != "causal-lm" else [_as_trained(loaded.training, t) for t in texts]
    results = {folder: predict(loaded, name, inputs, args.max_length, args.max_new_tokens)
               for folder, name in zip(args.adapter, loaded.names)}
    for i, text in enumerate(texts):
        answers = {folder: results[folder][i] for folder in args.adapter}
        if args.json:
            print(json.dumps({"text": text, "predictions": {f: _jsonable(a) for f, a in answers.items()}}))
            continue
        print(text)
        for folder, answer in answers.items():
            prefix = f"  [{folder}] " if len(answers) > 1 else "  "
            print(prefix + _shown(loaded.task, answer))
    return 0


def _as_trained(training: dict, text: str) -> str:
    """``text`` in the prompt format of the built-in data set the (first) adapter was trained on, if it has one."""
    from ..data import BUILTIN_DATA

    builtin = BUILTIN_DATA.get(str(training.get("data_source")))
    return builtin.prompt(text) if builtin is not None and builtin.prompt is not None else text


def _shown(task: str, answer) -> str:
    if task == "classification":
        return f"{answer[0]} ({answer[1]:.3f})"
    if task == "tagging":
        return " ".join(word if tag == "O" else f"{word}/{tag}" for word, tag in answer)
    return answer.strip()


def _jsonable(answer):
    if isinstance(answer, tuple):
        return {"label": answer[0], "score": answer[1]}
    if isinstance(answer, list):
        return [{"word": w, "tag": t} for w, t in answer]
    return answer
