"""``splice serve``: one base model and many adapters over HTTP (FastAPI under uvicorn, the ``serve`` extra)."""

from __future__ import annotations

import argparse
import math

from ..errors import SpliceError
from .common import Steps, add_command, add_quantize_options, table
from .serve_app import build_app

DEFAULT_MODEL = "minilm"


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
    parser.add_argument("--request-timeout", type=float, default=300.0, metavar="SECONDS",
                        help="a request not answered by then gets 504 (default: 300; long completions on a CPU "
                             "may need more)")
    parser.add_argument("--max-queue", type=int, default=256,
                        help="requests waiting at most; beyond it new ones get 429 (default: 256)")
    parser.add_argument("--device-slots", type=int, default=8, help="adapters on the model at once (default: 8)")
    parser.add_argument("--memory-slots", type=int, default=32,
                        help="further adapters kept built in host memory (default: 32)")
    parser.add_argument("--pin", action="append", default=[], metavar="NAME", help="keep this adapter on the model")
    parser.add_argument("--kv-cache-mb", type=float, default=2048,
                        help="key/value cache of the completions running at once, padded rows at their longest; "
                             "requests that do not fit wait, larger ones are refused (default: 2048)")
    parser.add_argument("--prefill-tokens", type=int, default=512,
                        help="prompt tokens prefilled between two decode steps at most; a longer prompt is prefilled "
                             "in chunks of this size (default: 512)")
    parser.add_argument("--no-continuous", dest="continuous", action="store_false",
                        help="run completions as one generate call per batch instead of continuous batching "
                             "(no logprobs, echo, n or seed; the benchmarks' baseline)")
    parser.add_argument("--replicas", type=int, default=1,
                        help="run this many engine replicas under Ray Serve (the ray extra), requests for one adapter "
                             "kept on the replicas that hold it (default: 1, a single process without Ray)")
    parser.add_argument("--ray-address", default=None, metavar="ADDRESS",
                        help="with --replicas: the Ray cluster to join (default: start a local one)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.replicas < 1:
        raise SpliceError(f"--replicas must be at least 1, got {args.replicas}.")
    if not 0 < args.request_timeout < math.inf:  # NaN fails too
        raise SpliceError(f"--request-timeout must be a positive number of seconds, got {args.request_timeout}.")
    if args.replicas > 1 or args.ray_address:
        from .serve_replicas import serve_replicas  # needs the ray extra; refuses in one line without it

        return serve_replicas(args)
    steps = Steps(args.quiet)
    app, engine, base_name, found = build_app(args, steps)
    _serve(app, args, engine, base_name, found)
    return 0


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
