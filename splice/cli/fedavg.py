"""``splice fedavg ADAPTER ADAPTER ... --weights n1,n2,... --out DIR``: federated averaging of adapters.

Every tensor of the adapters (and their heads) is averaged with weights
proportional to ``--weights`` (typically each client's number of training
examples), as in FedAvg (McMahan et al. 2017). The adapters must share one
config, one head and one base model: loading checks each against the base's
fingerprint, and averaging refuses different configs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import SpliceError
from .common import Steps, adapter_path, add_command


def register(commands: argparse._SubParsersAction) -> None:
    parser = add_command(commands, "fedavg", help="average adapters of one config (federated averaging)",
                         description=__doc__.split("\n\n")[1].replace("\n", " "))
    parser.add_argument("adapters", nargs="+", metavar="ADAPTER",
                        help="adapter folders or splice train run folders (two or more)")
    parser.add_argument("--weights", metavar="N1,N2,...", help="one weight per adapter, e.g. client example "
                        "counts (normalised to sum 1; default: equal)")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for the averaged adapter")
    parser.add_argument("--model", metavar="NAME_OR_PATH", help="base model (default: the one they were trained on)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..checkpoint import write_adapter
    from ..train.inference import load_adapters

    if len(args.adapters) < 2:
        raise SpliceError("fedavg needs two or more adapter folders.")
    weights = _weights(args.weights, len(args.adapters))
    folders = [adapter_path(a) for a in args.adapters]
    with Steps(args.quiet)(f"loading {len(args.adapters)} adapters"):
        loaded = load_adapters(folders, args.model)
    name = "fedavg"
    loaded.model.average(name, loaded.names, weights, mode="parameters")
    record = {**loaded.training, "fedavg_of": [str(Path(a).resolve()) for a in folders],
              "fedavg_weights": weights}
    record.pop("metrics", None)  # the clients' metrics do not describe the average
    record.pop("fine_tuned_model", None)
    write_adapter(loaded.model.anatomy, loaded.model.adapters[name], name, args.out, training=record)
    print(args.out)
    return 0


def _weights(text: str | None, count: int) -> list[float]:
    if text is None:
        return [1.0 / count] * count
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise SpliceError(f"--weights takes numbers separated by commas, got {text!r}.") from None
    if len(values) != count or any(v < 0 for v in values) or sum(values) <= 0:
        raise SpliceError(f"--weights needs {count} non-negative numbers (one per adapter) with a positive sum, "
                          f"got {text!r}.")
    return [v / sum(values) for v in values]
