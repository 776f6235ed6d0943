"""``splice train``: train an adapter (or fully fine-tune, as the baseline) on a real model and real data.

With no options it runs the main job: a Houlsby adapter for tweet sentiment on
all-MiniLM-L6-v2 (both installed from PyPI by scripts/setup.sh). Every option
can also come from a YAML or JSON file (``--config run.yaml``); options given on
the command line win over the file. On many GPUs or machines, run it under
``torchrun --nproc_per_node N -m splice train ...`` or ``accelerate launch -m splice train ...``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys

from ..errors import ConfigError
from ..train.config import TrainConfig
from .common import Steps, add_command, add_quantize_options, human_size, split_sizes

DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.default is not dataclasses.MISSING}


# The --method names are the registry's training recipes, plugins' included. The registry imports the methods'
# modules (and so torch), so it is read only when a command line names a method or asks for this command's help.
METHODS_EPILOG = "methods:"  # stands for the list of methods, which _Help writes in its place


def _recipes() -> dict:
    from ..methods import recipes

    return recipes()


class _Methods:
    """The ``--method`` choices, read from the registry on first use."""

    def __contains__(self, name: object) -> bool:
        return name in _recipes()

    def __iter__(self):
        return iter(_recipes())


class _Help(argparse.RawDescriptionHelpFormatter):
    """Help that ends with the registry's methods, each with its help line and learning rate."""

    def add_text(self, text: str | None) -> None:
        if text is METHODS_EPILOG:
            offered = _recipes()
            width = max(9, *map(len, offered))  # a plugin's longer name keeps the column
            text = METHODS_EPILOG + "\n" + "\n".join(f"  {name:<{width}} {r.help} (lr {r.learning_rate:g})"
                                                     for name, r in offered.items())
        super().add_text(text)


def register(commands: argparse._SubParsersAction) -> None:
    parser = add_command(commands, "train", help="train an adapter (or full fine-tuning) with the HF Trainer",
                         description=__doc__.split("\n\n")[1].replace("\n", " "))
    parser.formatter_class = _Help
    parser.epilog = METHODS_EPILOG
    parser.argument_default = argparse.SUPPRESS  # only options given on the command line override --config

    def option(group, flag: str, help: str, **kwargs) -> None:
        field = flag.lstrip("-").replace("-", "_")
        default = DEFAULTS.get(field)
        shown = "" if default in (None, False) or kwargs.get("action") else f" (default: {default})"
        group.add_argument(flag, help=help + shown, **kwargs)

    parser.add_argument("--config", metavar="FILE", help="YAML or JSON file of options (keys as below, - or _)")
    group = parser.add_argument_group("what to train")
    option(group, "--model", "local model folder or built-in name (minilm, smollm2)", metavar="NAME_OR_PATH")
    option(group, "--data", "CSV, JSONL, Parquet, a datasets save_to_disk folder, folder of <label>/*.txt, CoNLL "
           "file, or a built-in set "
           "(tweet-sentiment, bbc-news, wnut16, bbc-headlines)", metavar="PATH_OR_BUILTIN")
    option(group, "--task", "what the data teaches", choices=["classification", "tagging", "causal-lm"])
    option(group, "--method", "adapter method (see below)", choices=_Methods(), metavar="METHOD")
    group.add_argument("--option", dest="options", action="append", metavar="KEY=VALUE",
                      help="a method option, VALUE read as JSON if it parses (e.g. --option reduction_factor=8 "
                           "--option 'targets=[\"q\",\"v\"]'); repeatable")
    add_quantize_options(group)
    option(group, "--out", "output folder (default: out/<data>-<method>)", metavar="DIR")
    option(group, "--head-layers", "classifier head depth: 1 = linear, 2 = dense + output (default 2; tagging 1)",
           type=int, metavar="N")
    option(group, "--pooling", "how the classifier pools tokens: auto ([CLS] on encoders, last token on decoders), "
           "cls, mean, last", choices=["auto", "cls", "first", "mean", "last"])
    option(group, "--head-dropout", "dropout inside the head while training", type=float, metavar="P")
    group = parser.add_argument_group("data")
    for column in ("text", "label", "tokens", "tags", "prompt", "completion"):
        option(group, f"--{column}-column", f"column holding the {column}", metavar="NAME")
    option(group, "--sizes", "train, validation, test: fractions or row counts, e.g. 0.8,0.1,0.1 or 4000,1000,2000 "
           "(default 0.8,0.1,0.1; tweet-sentiment: 4000,1000,2000)",
           type=split_sizes, metavar="A,B,C")
    option(group, "--limit", "subsample the data to this many rows before splitting", type=int, metavar="N")
    option(group, "--data-seed", "seed of the train/validation/test shuffle", type=int, metavar="N")
    option(group, "--streaming", "read a CSV/JSONL/Parquet file row by row each time a split is used, never "
           "holding it (splits drawn per row by a seeded hash; --sizes as fractions)", action="store_true")
    option(group, "--max-length", "tokens per example (default 64; 256 for causal-lm)", type=int, metavar="N")
    group = parser.add_argument_group("optimisation")
    option(group, "--epochs", "training epochs", type=float, metavar="N")
    option(group, "--max-steps", "stop after N optimiser steps (overrides --epochs)", type=int, metavar="N")
    option(group, "--batch-size", "rows per step per device", type=int, metavar="N")
    option(group, "--eval-batch-size", "rows per evaluation batch", type=int, metavar="N")
    option(group, "--gradient-accumulation", "steps to accumulate before each update", type=int, metavar="N")
    option(group, "--learning-rate", "peak learning rate (default: the method's, see below)", type=float, metavar="LR")
    option(group, "--weight-decay", "AdamW weight decay", type=float, metavar="W")
    option(group, "--max-grad-norm", "gradient clipping", type=float, metavar="N")
    option(group, "--warmup-ratio", "share of steps spent warming up", type=float, metavar="R")
    option(group, "--scheduler", "learning-rate schedule (any HF scheduler name)", metavar="NAME")
    option(group, "--seed", "training seed (initialisation, dropout, batch order)", type=int, metavar="N")
    option(group, "--patience", "early stopping: evaluations without improvement before stopping", type=int,
           metavar="N")
    option(group, "--eval-every", "evaluate and checkpoint every N steps instead of every epoch", type=int, metavar="N")
    option(group, "--save-total-limit", "checkpoints kept (the best one is always kept)", type=int, metavar="N")
    option(group, "--logging-steps", "log the training loss every N steps", type=int, metavar="N")
    option(group, "--precision", "auto = bf16/fp16 on GPUs, fp32 on CPU", choices=["auto", "fp32", "bf16", "fp16"])
    option(group, "--gradient-checkpointing", "recompute activations in backward to save memory", action="store_true")
    option(group, "--resume", "continue from the last checkpoint in OUT/checkpoints", action="store_true")
    option(group, "--workers", "data loader worker processes", type=int, metavar="N")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..train import train

    given = {k: v for k, v in vars(args).items() if k not in ("run", "quiet", "command", "config")}
    if "options" in given:
        given["options"] = dict(_option(text) for text in given["options"])
    config_file = getattr(args, "config", None)
    config = TrainConfig.from_file(config_file, **given) if config_file else TrainConfig(**given)
    result = train(config, command=command_line(sys.argv[1:]), say=Steps(args.quiet).say, progress=not args.quiet)
    if result.main_process:
        report(result, config.task)
    return 0


def report(result, task: str) -> None:
    """The lines a user reads at the end: validation (and test) metric, trainable share, size, where files are."""
    metrics = result.metrics
    key, label = {"classification": ("accuracy", "accuracy"), "tagging": ("f1", "entity F1"),
                  "causal-lm": ("perplexity", "perplexity")}[task]
    for split in ("validation", "test"):
        value = metrics[split][key]
        shown = f"{value:.2f}" if key == "perplexity" else f"{value:.1%}"
        extra = ""
        if key == "perplexity" and "perplexity_before" in metrics[split]:
            extra = f" (base model before training: {metrics[split]['perplexity_before']:.2f})"
        print(f"{split} {label}: {shown}{extra}")
    print(f"trainable parameters: {metrics['trainable']:,} = {metrics['trainable_percent']:.2f} % of the base")
    print(f"adapter: {result.adapter} ({human_size(int(metrics['adapter_mb'] * 1e6))} on disk)")
    print(f"training curves: {result.curves or 'not drawn (pip install matplotlib)'}")
    print(f"metrics: {result.out / 'metrics.json'}")


def command_line(argv: list[str]) -> str:
    """The command to record in the model card: ``argv`` if it is a ``splice train`` command line (``train``
    may follow the shared options, as in ``splice -q train``), else nothing (``main([...])`` called from code)."""
    before = argv[:argv.index("train")] if "train" in argv else None
    return shlex.join(["splice", *argv]) if before is not None and all(a.startswith("-") for a in before) else ""


def _option(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"--option takes KEY=VALUE, got {text!r}.")
    try:
        return key.replace("-", "_"), json.loads(value)
    except json.JSONDecodeError:
        return key.replace("-", "_"), value
