"""Multi-adapter inference: base vs one adapter vs N distinct adapters in one batch, splice beside its peers.

    python benchmarks/multi_adapter.py --quick                   # CPU, tiny model, about a minute
    python benchmarks/multi_adapter.py                           # GPU: 1.1 B Llama shape in bf16 (issue 8)
    python benchmarks/multi_adapter.py --adapters-python /path/to/venv/bin/python
    python benchmarks/multi_adapter.py --graphs --compile        # GPU: decode captured whole (captured.py)

Arms per engine, method and shape: ``base``; ``one`` (one adapter active); ``mix-N``
(row i through its own adapter out of N resident, uniform or Zipf popularity).
Engines: splice, peft (LoRA through ``adapter_names``) and, when ``--adapters-python``
names a Python with AdapterHub's ``adapters`` (which pins transformers 4.57.x),
``adapters`` (``BatchSplit``) *and splice again* in that Python, so those two are
compared within one transformers release. Every mixed arm is checked against its
rows run alone before any time is reported. Times are medians over interleaved
rounds (every arm once per round), which keeps a busy machine's drift out of the ratios.
Also measured for splice: switching the active adapter, and loading a ~1 MB adapter
from disk into a bank slot; with ``--graphs`` / ``--compile``, decode-like batches
through one captured forward (``-graph`` / ``-compiled`` arms, divided by the captured
base and one adapter; see ``captured.py``). Prints a table and writes JSON (``--json``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parent))
import captured  # noqa: E402
from engines import ENGINES, perturb, version  # noqa: E402

CAPTURED = ("-graph", "-compiled")

SIZES = {  # Llama shapes: the 1.1 B (TinyLlama), and small ones for CPU runs
    "1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
               num_key_value_heads=4, vocab_size=32000),
    "small": dict(hidden_size=512, intermediate_size=1376, num_hidden_layers=4, num_attention_heads=8,
                  num_key_value_heads=4, vocab_size=1024),
    "tiny": dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=1024),
}


def common_parser(doc: str, methods: str) -> argparse.ArgumentParser:
    """The options every engine-comparison benchmark takes: size, device, dtype, engines, methods."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny model, small batches, few rounds (CPU)")
    p.add_argument("--size", choices=SIZES, default=None, help="model shape (default: 1b on GPU, tiny otherwise)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default=None)
    p.add_argument("--engines", default="splice,peft",
                   help="comma-separated: splice, splice-generic (banking off), peft, adapters")
    p.add_argument("--methods", default=methods)
    return p


def common_defaults(args: argparse.Namespace) -> None:
    """Fill what :func:`common_parser` leaves open: the 1.1 B shape in bf16 on a GPU, tiny fp32 otherwise."""
    args.size = args.size or ("tiny" if args.quick or not torch.cuda.is_available() else "1b")
    args.dtype = getattr(torch, args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32"))


def parse_args(argv=None) -> argparse.Namespace:
    p = common_parser(__doc__, "lora,pfeiffer,houlsby,ia3")
    p.add_argument("--counts", default="1,4,32,128", help="adapters resident (and spread over the rows)")
    p.add_argument("--shapes", default="prefill,decode", help="comma-separated: prefill, decode")
    p.add_argument("--prefill", default=None, help="ROWSxTOKENS (default 32x256 on GPU, 8x64 quick)")
    p.add_argument("--decode", type=int, default=None, help="rows of one token (default 64 on GPU, 16 quick)")
    p.add_argument("--rounds", type=int, default=None, help="timed rounds per arm (default 20, 7 quick)")
    p.add_argument("--graphs", action="store_true", help="also time decode captured in a CUDA graph (splice)")
    p.add_argument("--compile", action="store_true",
                   help="also time decode through torch.compile (splice; reduce-overhead on a GPU, inductor on CPU)")
    p.add_argument("--adapters-python", default=None,
                   help="a Python with `adapters` (transformers 4.57.x): runs adapters and splice there too")
    p.add_argument("--json", default="multi_adapter.json")
    args = p.parse_args(argv)
    if args.graphs and not args.device.startswith("cuda"):
        p.error("--graphs captures CUDA graphs: it needs a CUDA device (on the CPU, --compile times torch.compile)")
    common_defaults(args)
    args.prefill = args.prefill or ("8x64" if args.quick else "32x256")
    args.decode = args.decode or (16 if args.quick else 64)
    args.rounds = args.rounds or (7 if args.quick else 20)
    return args


def make_model_factory(args, auto_class=transformers.AutoModel):
    """A function building the same random-init Llama (``SIZES[args.size]``, seed 0) on every call, in eval mode."""
    config = transformers.LlamaConfig(**SIZES[args.size], max_position_embeddings=4096, use_cache=False)

    def make():
        torch.manual_seed(0)
        model = auto_class.from_config(config, attn_implementation="sdpa")
        return model.to(args.device, args.dtype).eval()

    return make


def workloads(args) -> dict[str, dict[str, torch.Tensor]]:
    rows, tokens = (int(v) for v in args.prefill.split("x"))
    gen = torch.Generator().manual_seed(1)
    vocab = SIZES[args.size]["vocab_size"]
    shapes = {"prefill": (rows, tokens), "decode": (args.decode, 1)}
    return {name: {"input_ids": torch.randint(3, vocab, shape, generator=gen).to(args.device)}
            for name, shape in shapes.items() if name in args.shapes.split(",")}


def mixes(names: list[str], rows: int, counts: list[int]) -> dict[str, list[str]]:
    """Per-row adapter names: uniform (round-robin over N, shuffled) and Zipf (s = 1) over the first N."""
    rng = random.Random(0)
    out = {}
    for n in counts:
        pool = names[:n]
        uniform = [pool[i % n] for i in range(rows)]
        rng.shuffle(uniform)
        out[f"mix{n}-uniform"] = uniform
        if n > 1:
            out[f"mix{n}-zipf"] = rng.choices(pool, weights=[1 / (k + 1) for k in range(n)], k=rows)
    return out


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed_rounds(arms: dict, rounds: int, device: str) -> dict[str, float]:
    """Median milliseconds per arm; each round runs every arm once (after two warm-up calls each)."""
    for fn in arms.values():
        fn(), fn()
    samples = {name: [] for name in arms}
    for _ in range(rounds):
        for name, fn in arms.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            samples[name].append((time.perf_counter() - start) * 1e3)
    return {name: sorted(s)[len(s) // 2] for name, s in samples.items()}


def check_rows(engine, inputs, names, alone_cache, dtype) -> float:
    """Largest difference between the mixed batch and each row run alone with its adapter (raises if too big)."""
    mixed = engine.mixed(inputs, names)
    worst = 0.0
    for row, name in enumerate(names):
        key = (row, name)
        if key not in alone_cache:
            alone_cache[key] = engine.row({k: v[row : row + 1] for k, v in inputs.items()}, name)
        expected = alone_cache[key]
        worst = max(worst, (mixed[row : row + 1].float() - expected.float()).abs().max().item())
        tolerance = 1e-4 if dtype == torch.float32 else 5e-2
        torch.testing.assert_close(mixed[row : row + 1].float(), expected.float(), atol=tolerance, rtol=tolerance)
    return worst


def run_engine(engine_name, method, args, make_model, inputs_by_shape, counts, notes: list[dict]) -> list[dict]:
    engine = ENGINES[engine_name](make_model)
    names = engine.add(method, max(counts))
    results = []
    with torch.inference_mode():
        for shape, inputs in inputs_by_shape.items():
            arms = {"base": lambda i=inputs: engine.base(i), "one": lambda i=inputs: engine.one(i, names[0])}
            routes = mixes(names, inputs["input_ids"].shape[0], counts)
            alone, checks = {}, {}
            for arm, route in routes.items():
                checks[arm] = check_rows(engine, inputs, route, alone, args.dtype)
                arms[arm] = lambda i=inputs, r=route: engine.mixed(i, r)
            reports = []
            if engine_name == "splice" and shape == "decode":
                for wanted, make in ((args.graphs, captured.graphed_arms), (args.compile, captured.compiled_arms)):
                    if wanted:
                        more, more_checks, report = make(engine, inputs, routes, names[0])
                        arms.update(more)
                        checks.update(more_checks)
                        reports.append(report)
            times = timed_rounds(arms, args.rounds, args.device)
            for report in reports:
                notes.append(dict(method=method, shape=shape, **report()))
            for arm, ms in times.items():
                kind = next((s for s in CAPTURED if arm.endswith(s)), "")  # captured arms: ÷ the captured base
                route = routes.get(arm.removesuffix(kind))
                results.append(dict(engine=f"{engine_name} {engine.version}", transformers=transformers.__version__,
                                    method=method, shape=shape, arm=arm, ms=ms, ratio_base=ms / times["base" + kind],
                                    ratio_one=ms / times["one" + kind], distinct=len(set(route)) if route else None,
                                    max_diff=checks.get(arm)))
    return results


def splice_switch_and_load(args, make_model) -> dict:
    """Activate another resident adapter; load a ~1 MB adapter from disk into a slot (median of repeats)."""
    import splice

    model = splice.attach(make_model())
    shape = SIZES[args.size]
    hidden = shape["hidden_size"]
    kv = hidden * shape["num_key_value_heads"] // shape["num_attention_heads"]
    per_rank = shape["num_hidden_layers"] * (2 * hidden + hidden + kv) * 4  # q and v, A and B, fp32: bytes per rank
    rank = max(1, round(1_000_000 / per_rank))
    for i in range(8):
        model.add(f"a{i}", splice.LoRA(r=rank, targets=["q", "v"]))
        perturb(model.adapters[f"a{i}"].parameters(), seed=i)
    switches = []
    for i in range(50):
        start = time.perf_counter()
        model.activate(f"a{i % 8}")
        switches.append((time.perf_counter() - start) * 1e3)
    with tempfile.TemporaryDirectory() as folder:
        model.save("a0", folder)
        size = sum(f.stat().st_size for f in Path(folder).glob("*.safetensors"))
        model.planner.resident()
        loads, places = [], []
        for i in range(7):
            start = time.perf_counter()
            model.load(folder, name=f"loaded{i}")
            sync(args.device)
            middle = time.perf_counter()
            model.planner.resident()  # the new adapter gets its bank slots
            sync(args.device)
            loads.append((middle - start) * 1e3)
            places.append((time.perf_counter() - middle) * 1e3)
            model.delete(f"loaded{i}")
    med = lambda v: sorted(v)[len(v) // 2]  # noqa: E731
    return dict(switch_ms=med(switches), load_ms=med(loads), slot_ms=med(places), adapter_bytes=size,
                resident_adapters=len(model.adapters))


def adapters_arm(args, counts: list[int]) -> list[dict]:
    """Rerun this script in the Python that has `adapters` (engines adapters + splice); return its rows."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "child.json"
        command = [args.adapters_python, __file__, "--size", args.size, "--device", args.device,
                   "--dtype", str(args.dtype).removeprefix("torch."), "--methods", args.methods,
                   "--counts", ",".join(map(str, counts)), "--shapes", args.shapes, "--prefill", args.prefill,
                   "--decode", str(args.decode),
                   "--rounds", str(args.rounds), "--engines", "adapters,splice", "--json", str(out)]
        root = str(Path(__file__).resolve().parents[1])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
        subprocess.run(command, check=True, env=env)
        return json.loads(out.read_text())["results"]


def table(results: list[dict]) -> str:
    lines = [f"{'engine':<24}{'transformers':<14}{'method':<10}{'shape':<9}{'arm':<26}{'distinct':>8}"
             f"{'ms':>10}{'÷ base':>9}{'÷ one':>8}{'max diff':>10}"]
    for r in results:
        diff = "" if r["max_diff"] is None else f"{r['max_diff']:.1e}"
        lines.append(f"{r['engine']:<24}{r['transformers']:<14}{r['method']:<10}{r['shape']:<9}{r['arm']:<26}"
                     f"{r['distinct'] or '':>8}{r['ms']:>10.2f}{r['ratio_base']:>9.2f}{r['ratio_one']:>8.2f}"
                     f"{diff:>10}")
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    counts = [int(c) for c in args.counts.split(",")]
    make_model = make_model_factory(args)
    inputs = workloads(args)
    from splice import kernels

    probe = next(iter(inputs.values()))["input_ids"]
    meta = dict(device=torch.cuda.get_device_name() if args.device.startswith("cuda") else
                f"cpu {platform.machine()}",
                dtype=str(args.dtype), size=args.size, prefill=args.prefill, decode=args.decode, rounds=args.rounds,
                threads=torch.get_num_threads(), kernels=kernels.backend_for(probe.float()),
                versions={p: version(p) for p in ("torch", "transformers", "peft", "adapters", "triton")})
    print(json.dumps(meta))
    results, notes = [], []
    for engine in args.engines.split(","):
        for method in args.methods.split(","):
            if method in ENGINES[engine].methods:
                results += run_engine(engine, method, args, make_model, inputs, counts, notes)
                if args.device.startswith("cuda"):
                    torch.cuda.empty_cache()  # the engine's model is gone: give its memory back
    extra = splice_switch_and_load(args, make_model) if "splice" in args.engines else {}
    if args.adapters_python:
        results += adapters_arm(args, counts)
    print(table(results))
    if extra:
        print(f"splice: switch {extra['switch_ms']:.3f} ms; load {extra['adapter_bytes'] / 1e6:.2f} MB adapter "
              f"from disk {extra['load_ms']:.1f} ms + bank slots {extra['slot_ms']:.1f} ms "
              f"({extra['resident_adapters']} resident)")
    for note in notes:
        print("splice captured decode: " + ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                                                     for k, v in note.items()))
    Path(args.json).write_text(json.dumps(dict(meta=meta, results=results, splice=extra, captured=notes), indent=1))


if __name__ == "__main__":
    main()
