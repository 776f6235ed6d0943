"""``splice eval ADAPTER``: an adapter's metrics on a dataset (by default the test split it was trained beside).

Classification: accuracy, macro-F1 and a per-class table; tagging: entity-level
precision/recall/F1 (seqeval's reading of BIO tags) with a per-type table;
causal LM: perplexity.
"""

from __future__ import annotations

import argparse
import json

from ..errors import SpliceError
from .common import Steps, adapter_path, add_command, add_quantize_options, split_sizes


def register(commands: argparse._SubParsersAction) -> None:
    parser = add_command(commands, "eval", help="evaluate a trained adapter on a dataset",
                         description=__doc__.split("\n\n")[1].replace("\n", " "))
    parser.add_argument("adapter", metavar="ADAPTER",
                        help="adapter folder, or the run folder splice train wrote it in (OUT for OUT/adapter)")
    parser.add_argument("--data", metavar="PATH_OR_BUILTIN", help="dataset (default: the one it was trained on)")
    parser.add_argument("--split", choices=["train", "validation", "test", "all"],
                        help="which split (default: test for the training data, all for other data)")
    parser.add_argument("--sizes", metavar="A,B,C", help="split sizes (default: the training run's)")
    parser.add_argument("--data-seed", type=int, help="split seed (default: the training run's)")
    parser.add_argument("--model", metavar="NAME_OR_PATH", help="base model (default: the one it was trained on)")
    add_quantize_options(parser)
    parser.add_argument("--max-length", type=int, help="tokens per example (default: the training run's)")
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..train.inference import evaluate, load_adapters
    from ..train.metrics import per_class_table

    steps = Steps(args.quiet)
    with steps(f"loading {args.adapter}"):
        loaded = load_adapters([adapter_path(args.adapter)], args.model, args.quantize, args.compute_dtype)
    training = loaded.training
    data = args.data or training.get("data_source")
    if not data:
        raise SpliceError("This adapter does not record its training data; pass --data.")
    same_data = data == training.get("data_source")
    rows = training.get("rows", {})
    sizes = split_sizes(args.sizes) if args.sizes else (
        (rows["train"], rows["validation"], rows["test"]) if same_data and rows else (0.8, 0.1, 0.1))
    split = args.split or ("test" if same_data else "all")
    with steps(f"evaluating on the {split} split of {data}"):
        metrics = evaluate(loaded, loaded.names[0], data, split, sizes,
                           args.data_seed if args.data_seed is not None else training.get("data_seed", 0),
                           args.max_length or training.get("max_length") or (256 if loaded.task == "causal-lm" else 64))
    if args.json:
        print(json.dumps(metrics, indent=2))
        return 0
    print(f"{split} split of {data}: {metrics['rows']:,} rows")
    if loaded.task == "causal-lm":
        print(f"loss {metrics['loss']:.4f}, perplexity {metrics['perplexity']:.2f}")
    elif loaded.task == "tagging":
        print(f"entity F1 {metrics['f1']:.1%} (precision {metrics['precision']:.1%}, recall {metrics['recall']:.1%}),"
              f" token accuracy {metrics['token_accuracy']:.1%}")
        print(per_class_table(metrics["per_type"], "entity type"))
    else:
        print(f"accuracy {metrics['accuracy']:.1%}, macro-F1 {metrics['macro_f1']:.1%}")
        print(per_class_table(metrics["per_class"]))
    return 0
