"""The app and engine ``splice serve`` runs, built from its options: in this process, or in each Ray Serve
replica (:mod:`.serve_replicas`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import SpliceError
from .common import Steps, base_model_class, load_base


def build_app(args: argparse.Namespace, steps: Steps):
    """The app, its engine, the base's name and the adapters found (name -> where from), as ``args`` describe."""
    from ..serve import create_app  # needs the serve extra; import splice does not
    from ..serve.sources import discover

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
    app = create_app(engine, base_name=base_name, hub=hub, request_timeout=args.request_timeout)
    return app, engine, base_name, found


def build_engine(args: argparse.Namespace, steps: Steps):
    """The engine for ``--model`` (a folder or a built-in name) on ``--device``, with its tokenizer."""
    import torch
    from transformers import AutoTokenizer

    from ..adapted import attach
    from ..assets import model_path
    from ..serve import Engine

    folder = model_path(args.model)
    model_class = args.model_class if args.model_class != "auto" else base_model_class(folder)
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
                    max_queue=args.max_queue, device_slots=args.device_slots, memory_slots=args.memory_slots,
                    continuous=args.continuous, cache_mb=args.kv_cache_mb, prefill_tokens=args.prefill_tokens)
    return engine, Path(str(args.model)).name or str(args.model)
