"""``splice convert SRC DST --model MODEL_PATH --to splice|peft``: rewrite an adapter in another format.

The adapter is loaded into the base model (``model.load`` checks every option,
module name and shape against it) and saved again with ``model.save(...,
format=...)``; what a format cannot hold is refused, by name, before anything is
written.
"""

from __future__ import annotations

import argparse
import sys

from .common import Steps, adapter_path, add_command, add_model_options, attach_base

FORMATS = ("splice", "peft", "adapters")  # the keys of splice.convert.WRITERS (which imports torch)


def register(commands: argparse._SubParsersAction) -> None:
    parser = add_command(
        commands, "convert", help="rewrite an adapter (splice, peft or AdapterHub) as splice or peft",
        description="Load the adapter SRC (a splice, peft or AdapterHub folder, or a hub name@version) into the "
                    "base model at --model, then write it to the folder DST in the format --to.")
    parser.add_argument("source", metavar="SRC",
                        help="adapter folder (or a splice train run folder), or name@version in the hub")
    parser.add_argument("dest", metavar="DST", help="folder to write (new, empty, or an earlier save)")
    add_model_options(parser)
    parser.add_argument("--to", required=True, choices=FORMATS, help="format to write")
    parser.add_argument("--name", help="adapter name to load it under (and record in a splice folder)")
    parser.add_argument("--lora-rank", type=int, metavar="R",
                        help="write a LoRA of rank R approximating the adapter (SVD of its weight change; any "
                             "mergeable method), for servers that run only LoRA; the error is reported")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    steps = Steps(args.quiet)
    model = attach_base(args, steps)
    with steps(f"reading {args.source}"):
        name = model.load(adapter_path(args.source), name=args.name)
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
