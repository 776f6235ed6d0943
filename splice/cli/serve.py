"""``splice serve``: one base model and many adapters over HTTP (FastAPI under uvicorn, the ``serve`` extra)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import SpliceError
from .common import Steps, add_command, add_quantize_options, load_base, table

DEFAULT_MODEL = "minilm"
CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")


def register(commands: argparse._SubParsersAction) -> None:
    parser = add_command(
        commands, "serve", "serve a base model and its adapters over HTTP",
        "Serve one base model and many adapters over HTTP: classify, embeddings, OpenAI-style completions "
        "(model = adapter or alias), adapters loaded and unloaded at run time, A/B aliases, /metrics. "
        "API documentation at http://HOST:PORT/docs.")
    parser.add_argument("--model", default=DEFAULT_MODEL, metavar="PATH_OR_NAME",
                        help="base model: a save_pretrained folder or a built-in demo model "
                             f"(default: {DEFAULT_MODEL})")
    parser.add_argument("--model-class", choices=["auto", "base", "causal-lm"], default="auto",
                        help="auto (the default): causal-lm when the folder's config names a causal LM, else base")
    add_quantize_options(parser)
    parser.add_argument("--adapters", action="append", default=[], metavar="DIR_OR_REGISTRY",
                        help="a folder of adapter folders, one adapter folder, a registry folder, or 'hub' "
                             "(the default registry); repeat for several")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default: 8000; 0 picks a free one)")
    parser.add_argument("--device", default=None, help="torch device for the model (default: cuda if available)")
    parser.add_argument("--max-batch-size", type=int, default=32, help="rows per forward at most (default: 32)")
    parser.add_argument("--max-wait-ms", type=float, default=5.0,
                        help="how long a batch waits to fill once its first request arrived (default: 5)")
    parser.add_argument("--max-queue", type=int, default=256,
                        help="requests waiting at most; beyond it new ones get 429 (default: 256)")
    parser.add_argument("--device-slots", type=int, default=8, help="adapters on the model at once (default: 8)")
    parser.add_argument("--memory-slots", type=int, default=32,
                        help="further adapters kept built in host memory (default: 32)")
    parser.add_argument("--pin", action="append", default=[], metavar="NAME", help="keep this adapter on the model")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..serve import create_app  # needs the serve extra; import splice does not
    from ..serve.sources import discover

    steps = Steps(args.quiet)
    engine, base_name = build_engine(args, steps)
    hub, found = None, {}
    for spec in args.adapters:
        offered, registry = discover(spec)
        hub = hub or registry
        for name, locate in offered:
            try:
                engine.residency.add_source(name, locate, pinned=name in args.pin)
                # where it comes from, for the start-up table (a registry entry is verified only when loaded)
                found[name] = f"{spec} registry" if registry is not None else str(locate())
            except SpliceError as error:
                steps.say(f"skipping adapter {name!r}: {error}")
    unknown = sorted(set(args.pin) - set(found))
    if unknown:
        raise SpliceError(f"--pin names adapters that were not found: {', '.join(unknown)}.")
    first = list(dict.fromkeys([*args.pin, *found]))[: args.device_slots]
    with steps(f"loading {len(first)} of {len(found)} adapters onto the model"):
        failures = engine.residency.preload(first)
    for name, why in failures.items():
        steps.say(f"adapter {name!r} failed to load: {why}")
    app = create_app(engine, base_name=base_name, hub=hub)
    _serve(app, args, engine, base_name, found)
    return 0


def build_engine(args: argparse.Namespace, steps: Steps):
    """The engine for ``--model`` (a folder or a built-in name) on ``--device``, with its tokenizer."""
    import torch
    from transformers import AutoTokenizer

    from ..assets import model_path
    from ..model import attach
    from ..serve import Engine

    folder = model_path(args.model)
    model_class = args.model_class if args.model_class != "auto" else _model_class(folder)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    stored = f", {args.quantize}" if args.quantize else ""
    with steps(f"loading {args.model} ({model_class}{stored}) on {device}"):
        if args.quantize:  # quantized layers are placed as they load; bitsandbytes' int8 refuses .to()
            model = attach(load_base(str(folder), model_class, args.quantize, args.compute_dtype,
                                     device_map={"": device}))
        else:
            model = attach(load_base(str(folder), model_class).to(device))
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    engine = Engine(model, tokenizer, max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms,
                    max_queue=args.max_queue, device_slots=args.device_slots, memory_slots=args.memory_slots)
    return engine, Path(str(args.model)).name or str(args.model)


def _model_class(folder: Path) -> str:
    """causal-lm when the folder's config.json names a causal-LM architecture, else base."""
    try:
        architectures = json.loads((folder / "config.json").read_text()).get("architectures") or []
    except (OSError, ValueError):
        architectures = []
    return "causal-lm" if any(a.endswith(CAUSAL_SUFFIXES) for a in architectures) else "base"


def _serve(app, args: argparse.Namespace, engine, base_name: str, found: dict[str, str]) -> None:
    """Bind the socket (so port 0 resolves), print the URL, the base model and the adapters found, run uvicorn.

    Each adapter is listed under the name requests use (``"adapter"`` / ``"model"``), which for a
    ``splice train`` run is its folder's name, with the folder it is read from.
    """
    import socket

    import uvicorn

    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
    except OSError as error:
        raise SpliceError(f"Cannot listen on {args.host}:{args.port} ({error.strerror}); "
                          "pick another --port.") from None
    port = sock.getsockname()[1]
    rows = [(name, engine.residency.entry(name).tier, source) for name, source in found.items()]
    print(f"splice serve: http://{args.host}:{port}  (API docs: http://{args.host}:{port}/docs)")
    print(f"base model: {base_name}")
    print(f"adapters found: {len(found)}" + ("\n" + table(("adapter", "state", "from"), rows) if rows else ""),
          flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    server.run(sockets=[sock])
