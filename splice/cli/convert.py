"""``splice convert SRC DST --model MODEL_PATH --to splice|peft``: rewrite an adapter in another format.

The adapter is loaded into the base model (``model.load`` checks every option,
module name and shape against it) and saved again with ``model.save(...,
format=...)``; what a format cannot hold is refused, by name, before anything is
written.

Which class loads the base matters for what is written: peft names tensors by module path, and a
causal LM's paths (``model.layers.0…``) are not a bare model's (``layers.0…``), so a file written
from the wrong class loads into peft or vLLM with no tensor matched. ``--model-class auto`` (the
default) takes the class the adapter's folder records, else the base's architecture
(:func:`auto_model_class`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..file_names import CONFIG_FILE, FOREIGN_CONFIG
from .common import CAUSAL_SUFFIXES, Steps, adapter_path, add_command, add_model_options, attach_base, base_model_class

FORMATS = ("splice", "peft", "adapters")  # the keys of splice.convert.WRITERS (which imports torch)


def register(commands: argparse._SubParsersAction) -> None:
    parser = add_command(
        commands, "convert", help="rewrite an adapter (splice, peft or AdapterHub) as splice or peft",
        description="Load the adapter SRC (a splice, peft or AdapterHub folder, or a hub name@version) into the "
                    "base model at --model, then write it to the folder DST in the format --to.")
    parser.add_argument("source", metavar="SRC",
                        help="adapter folder (or a splice train run folder), or name@version in the hub")
    parser.add_argument("dest", metavar="DST", help="folder to write (new, empty, or an earlier save)")
    add_model_options(parser, auto="the class the adapter was saved from, else causal-lm for a causal LM's folder")
    parser.add_argument("--to", required=True, choices=FORMATS, help="format to write")
    parser.add_argument("--name", help="adapter name to load it under (and record in a splice folder)")
    parser.add_argument("--lora-rank", type=int, metavar="R",
                        help="write a LoRA of rank R approximating the adapter (SVD of its weight change; any "
                             "mergeable method), for servers that run only LoRA; the error is reported")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    steps = Steps(args.quiet)
    source = adapter_path(args.source)
    if args.model_class == "auto":
        from ..assets import model_path

        args.model_class = auto_model_class(Path(source), model_path(args.model))
    model = attach_base(args, steps)
    with steps(f"reading {args.source}"):
        name = model.load(source, name=args.name)
    if args.lora_rank is not None:
        with steps(f"approximating {name!r} by a LoRA of rank {args.lora_rank}"):
            approximation = model.to_lora(name, f"{name}-lora", args.lora_rank)
        print(f"splice: {approximation.describe()}", file=sys.stderr)  # the result's quality: shown even with -q
        name = approximation.name
    with steps(f"writing {name!r} as {args.to} to {args.dest}"):
        model.save(name, args.dest, format=args.to)
    if args.to == "peft" and model.adapters[name].task_head is not None:
        _how_to_load(steps, model, name, args)
    print(args.dest)
    return 0


def _how_to_load(steps: Steps, model, name: str, args: argparse.Namespace) -> None:
    """peft needs the task model its classifier belongs to, with as many labels as the head: say which."""
    from ..assets import model_path
    from ..convert.peft_heads import task_head

    head = model.adapters[name].task_head
    written = task_head(model.anatomy, model.adapters[name], name)
    steps.say(f"peft loads it with model = {written.task_class}.from_pretrained({str(model_path(args.model))!r}, "
              f"num_labels={head.out_features}), then PeftModel.from_pretrained(model, {args.dest!r})")


def auto_model_class(adapter: Path, base: Path) -> str:
    """``causal-lm`` or ``base``: what the adapter's folder records (peft's ``auto_mapping.base_model_class`` or
    ``task_type``, AdapterHub's ``model_class``; a splice adapter with a head of its own sits on the bare base),
    else what the base folder's architecture says (:func:`.common.base_model_class`)."""
    recorded = _recorded_class(adapter)
    if recorded is None:
        return base_model_class(base)
    return "causal-lm" if recorded else "base"


def _recorded_class(adapter: Path) -> bool | None:
    """Whether the adapter's folder says it was saved from a causal LM; None where it says nothing either way."""
    for config_name in (CONFIG_FILE, FOREIGN_CONFIG):
        try:
            meta = json.loads((adapter / config_name).read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(meta, dict):
            return None
        mapping = meta.get("auto_mapping")
        named = [mapping.get("base_model_class") if isinstance(mapping, dict) else None, meta.get("model_class")]
        named = [str(n) for n in named if n and not str(n).endswith("AdapterModel")]  # an AdapterModel: any task
        if named:
            return named[0].endswith(CAUSAL_SUFFIXES)
        if meta.get("task_type"):
            return meta["task_type"] == "CAUSAL_LM"
        return False if meta.get("head") else None
    return None
