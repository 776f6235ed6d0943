"""Training step: step time and peak memory of one adapter being trained, splice beside its peers.

    python benchmarks/train_step.py --quick                      # CPU, tiny Llama, a minute or two
    python benchmarks/train_step.py                              # GPU: 1.1 B Llama shape in bf16, 8x512
    python benchmarks/train_step.py --adapters-python /path/to/python   # also splice vs adapters (transformers 4.57)
    python benchmarks/train_step.py --quantize nf4               # QLoRA: SmolLM2-135M stored NF4 (or int8), and float

Arms: LoRA r8 alpha16 on q, v (splice vs peft, and vs adapters in its Python) and a
Pfeiffer bottleneck, reduction 16 (splice vs adapters ``seq_bn``). A step is forward
with labels (causal-LM loss) + backward + AdamW over the adapter's parameters alone,
on a ``ROWSxTOKENS`` batch. Before anything is timed, the engines are checked to train
the same tensors (the counts are printed), the peer is given splice's initial values,
and k steps from there must give the same losses (again before timing with gradient
checkpointing on). Times are medians over interleaved
rounds (every engine one step per round, after warm-up), which keeps a busy machine's
drift out of the ratios. Peak memory is measured for each arm in its own fresh process:
on CUDA ``torch.cuda.max_memory_allocated``, on the CPU the peak RSS (``VmHWM``, reset
through ``/proc/self/clear_refs``); both as the growth over the loaded base model, so
they hold the adapter, its gradients, AdamW's state and the step's activations.
``adapters`` pins transformers 4.57.x: the script reruns itself in the Python given by
``--adapters-python`` with splice and adapters, so those two are compared within one release.
``--quantize nf4|int8`` trains LoRA on SmolLM2-135M (``--model`` for another folder; ``--quick``: a tiny
random Llama) stored so by bitsandbytes, splice against peft's QLoRA recipe (``prepare_model_for_kbit_training``),
and again on the float32 base; the table then also gives what the loaded base holds (``load MiB``, the
growth of the resident set from before loading to after it) and the JSON the peak while loading.
Before the loss check every adapter tensor that starts at zero (LoRA's B) gets small seeded noise, so the
first loss already depends on the adapter.
Prints a table with splice ÷ peer ratios and writes JSON (``--json``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parent))
from engines import version  # noqa: E402
from multi_adapter import SIZES, common_defaults, common_parser, make_model_factory, sync, timed_rounds  # noqa: E402
from train_engines import TRAINEES, copy_initial_values, nonzero_start  # noqa: E402

GOAL_TIME, GOAL_MEMORY = 0.9, 1.0  # issue 8: splice ≤ 0.9× the faster peer's step time, at ≤ its peak memory
QUANTIZED_GOAL_TIME = 1.05  # issue 15: on a quantized base, ≤ 1.05× peft's step time (the base's kernels dominate)
QUANTIZED = ("nf4", "fp4", "int8")


def parse_args(argv=None) -> argparse.Namespace:
    p = common_parser(__doc__, "lora,pfeiffer")
    p.add_argument("--batch", default=None, help="ROWSxTOKENS (default 8x512 on GPU, 4x64 otherwise)")
    p.add_argument("--rounds", type=int, default=None, help="timed steps per engine (default 20, 15 quick)")
    p.add_argument("--check-steps", type=int, default=3, help="steps whose losses must agree between engines")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--adapter-dtype", choices=["float32", "bfloat16"], default=None,
                   help="the adapters' weights (default float32, or the model's where an engine cannot mix them)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own choice)")
    p.add_argument("--gradient-checkpointing", action="store_true", help="also measure with it on")
    p.add_argument("--adapters-python", default=None,
                   help="a Python with `adapters` (transformers 4.57.x): runs adapters and splice there too")
    p.add_argument("--quantize", choices=QUANTIZED, default=None,
                   help="also train on the base stored so by bitsandbytes (default model: SmolLM2-135M)")
    p.add_argument("--model", default=None, help="a model folder to load instead of a random Llama of --size")
    p.add_argument("--json", default="train_step.json")
    p.add_argument("--memory-arm", default=None, help=argparse.SUPPRESS)  # ENGINE:METHOD:off|on:BASE, fresh process
    args = p.parse_args(argv)
    if args.quantize:
        args.methods = "lora" if args.methods == "lora,pfeiffer" else args.methods  # peft's QLoRA is the peer
        args.dtype = args.dtype or "float32"  # what the quantized layers compute in, and the float run's dtype
        if args.model is None and not args.quick:
            from splice.assets import smollm2_dir

            args.model = str(smollm2_dir())
    common_defaults(args)
    mixes = all(TRAINEES[e].mixes_dtypes for e in args.engines.split(","))
    args.adapter_dtype = getattr(torch, args.adapter_dtype) if args.adapter_dtype else (
        torch.float32 if mixes else args.dtype)
    args.batch = args.batch or ("8x512" if args.device.startswith("cuda") and not args.quick else "4x64")
    args.rounds = args.rounds or (15 if args.quick else 20)
    return args


def make_batch(args) -> dict[str, torch.Tensor]:
    rows, tokens = (int(v) for v in args.batch.split("x"))
    vocab = transformers.AutoConfig.from_pretrained(args.model).vocab_size if args.model else SIZES[args.size][
        "vocab_size"]
    ids = torch.randint(3, vocab, (rows, tokens), generator=torch.Generator().manual_seed(1))
    return {"input_ids": ids.to(args.device), "labels": ids.to(args.device)}


def bases(args) -> list[str]:
    """How the base is stored in each run: the quantization first (when asked), then the float dtype."""
    return [*([args.quantize] if args.quantize else []), str(args.dtype).removeprefix("torch.")]


def model_factory(args, base: str):
    """A function giving the same fresh causal LM on every call, stored as ``base`` (a dtype or a quantization)."""
    if args.model is None:
        return make_model_factory(args, transformers.AutoModelForCausalLM)
    from splice.quantize import load_pretrained

    kind = base if base in QUANTIZED else None
    options = {} if kind else {"dtype": args.dtype}

    def make():
        model = load_pretrained(transformers.AutoModelForCausalLM, args.model, kind, "float32", **options)
        return model.to(args.device).eval() if kind is None else model.eval()

    return make


def tiny_model_folder(args, folder: str) -> str:
    """A random tiny Llama saved in ``folder`` (``--quick --quantize``: quantized loading reads a folder)."""
    make_model_factory(args, transformers.AutoModelForCausalLM)().save_pretrained(folder)
    return folder


def engines_for(method: str, engines: list[str]) -> list[str]:
    """The engines that run ``method``, splice first; none where no peer of splice among them does."""
    able = [e for e in engines if method in TRAINEES[e].methods]
    return sorted(able, key=lambda e: e != "splice") if len(able) > 1 or able == engines else []


def loss_tolerance(dtype: torch.dtype) -> float:
    return 1e-4 if dtype == torch.float32 else 5e-2


def time_method(method: str, engines: list[str], args, make_model, batch, base: str = "float32") -> list[dict]:
    """Rows of one method: parameter counts, losses of a few steps (checked equal), median step times."""
    trainees = {e: TRAINEES[e](make_model(), method, args.lr, args.adapter_dtype) for e in engines}
    nonzero_start(trainees[engines[0]])
    for peer in engines[1:]:
        copy_initial_values(trainees[engines[0]], trainees[peer])
    rows = []
    for checkpointing in ("off", "on") if args.gradient_checkpointing else ("off",):
        if checkpointing == "on":
            for t in trainees.values():
                t.checkpoint_gradients()
        # Every engine has taken the same steps from the same start so far, so the next losses must agree too.
        losses = {e: [t.step(batch).item() for _ in range(args.check_steps)] for e, t in trainees.items()}
        check_losses(f"{method} on {base}", losses, args.dtype)
        times = timed_rounds({e: lambda t=t: t.step(batch) for e, t in trainees.items()}, args.rounds, args.device)
        for e, t in trainees.items():
            rows.append(dict(engine=e, version=t.version, transformers=transformers.__version__, method=method,
                             base=base, checkpointing=checkpointing, adapter_dtype=str(args.adapter_dtype),
                             trainable=t.trainable, losses=losses[e], ms=times[e]))
    return rows


def check_losses(method: str, losses: dict[str, list[float]], dtype: torch.dtype) -> None:
    """Stop the run unless every engine's losses match the first's (splice's): else they train different things."""
    first, *others = losses
    for e in others:
        gap = max(abs(a - b) for a, b in zip(losses[first], losses[e], strict=True))
        if gap > loss_tolerance(dtype) * max(1.0, abs(losses[e][0])):
            raise SystemExit(f"{method}: {e}'s losses {losses[e]} differ from {first}'s {losses[first]} by "
                             f"{gap:.2e} from the same start: the engines do not compute the same thing")


def memory_now(device: str) -> int:
    """Start a fresh peak: bytes in use now (CUDA: allocated by torch; CPU: resident set)."""
    sync(device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux ≥ 4.0)
    return _status_kb("VmRSS") * 1024


def memory_peak(device: str) -> int:
    sync(device)
    return torch.cuda.max_memory_allocated() if device.startswith("cuda") else _status_kb("VmHWM") * 1024


def _status_kb(field: str) -> int:
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(field))
    return int(line.split()[1])


MEMORY_MEASURE = {"cuda": "torch.cuda.max_memory_allocated, growth over the loaded base model",
                  "cpu": "peak RSS (VmHWM, reset via /proc/self/clear_refs), growth over the loaded base model "
                         "(every weight read once after loading); each arm in its own fresh process, glibc told to "
                         "return freed blocks over 128 KiB"}
# glibc keeps freed memory for reuse and raises its mmap threshold as large blocks come and go: memory freed while
# loading would then serve the steps unseen, and the split between loading and stepping would be arbitrary.
RETURN_FREED_MEMORY = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}


def memory_arm(args, batch) -> dict:
    """In this fresh process: the peak memory of loading the model, then of three training steps of one engine
    over the loaded model."""
    engine, method, checkpointing, stored = args.memory_arm.split(":")
    # Libraries are imported first: their code and tables are no part of what loading or training takes.
    for library in (TRAINEES[engine].library, *(["bitsandbytes"] if stored in QUANTIZED else [])):
        importlib.import_module(library)
    before = memory_now(args.device)
    base = model_factory(args, stored)()
    with torch.no_grad():  # weights still mapped from the file would otherwise be counted when a step reads them
        for tensor in (*base.parameters(), *base.buffers()):
            tensor.sum()
    loading_peak = memory_peak(args.device) - before
    start = memory_now(args.device)
    trainee = TRAINEES[engine](base, method, args.lr, args.adapter_dtype)
    if checkpointing == "on":
        trainee.checkpoint_gradients()
    for _ in range(3):  # AdamW's state appears at the first step; the peak is the same from the second on
        trainee.step(batch)
    return dict(peak_bytes=memory_peak(args.device) - start, load_bytes=start - before,
                loading_peak_bytes=loading_peak, base_bytes=start, weights_bytes=base.get_memory_footprint())


def measure_memory(args, row: dict) -> dict:
    """MiB of one arm, measured by this script rerun in a fresh process: the steps' peak over the loaded model
    (``peak``), the resident set's growth on loading (``load``) and its peak then (``loading_peak``), and the
    bytes of the model's weights and buffers as transformers counts them, packed ones at their size (``weights``)."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "memory.json"
        subprocess.run([sys.executable, __file__, *forwarded(args), "--adapter-dtype",
                        str(args.adapter_dtype).removeprefix("torch."), "--memory-arm",
                        f"{row['engine']}:{row['method']}:{row['checkpointing']}:{row['base']}", "--json", str(out)],
                       check=True, env={**os.environ, **RETURN_FREED_MEMORY})
        found = json.loads(out.read_text())
        return {f"{key}_mib": found[f"{key}_bytes"] / 2**20 for key in ("peak", "load", "loading_peak", "weights")}


def forwarded(args) -> list[str]:
    """The options a rerun of this script needs to measure the same thing."""
    return ["--size", args.size, "--device", args.device, "--dtype", str(args.dtype).removeprefix("torch."),
            "--batch", args.batch, "--rounds", str(args.rounds), "--check-steps", str(args.check_steps),
            "--lr", str(args.lr), *(["--threads", str(args.threads)] if args.threads else []),
            *(["--model", args.model] if args.model else [])]


def adapters_rows(args) -> list[dict]:
    """Rerun this script in the Python that has `adapters` (engines splice + adapters); return its rows."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "child.json"
        command = [args.adapters_python, __file__, *forwarded(args), "--engines", "splice,adapters",
                   "--methods", args.methods, "--json", str(out)]
        if args.gradient_checkpointing:
            command.append("--gradient-checkpointing")
        root = str(Path(__file__).resolve().parents[1])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
        subprocess.run(command, check=True, env=env)
        return json.loads(out.read_text())["rows"]


def comparisons(rows: list[dict]) -> list[dict]:
    """splice ÷ peer for every peer row, against the splice row of the same release, method and checkpointing."""
    same = lambda r: (r["transformers"], r["method"], r["checkpointing"], r.get("base"))  # noqa: E731
    splice = {same(r): r for r in rows if r["engine"] == "splice"}
    out = []
    for peer in rows:
        mine = splice.get(same(peer))
        if peer["engine"] == "splice" or mine is None:
            continue
        out.append(dict(peer=f"{peer['engine']} {peer['version']}", transformers=peer["transformers"],
                        method=peer["method"], base=peer.get("base"), checkpointing=peer["checkpointing"],
                        time=mine["ms"] / peer["ms"],
                        memory=mine["peak_mib"] / peer["peak_mib"] if peer["peak_mib"] else None,
                        loss_gap=max(abs(a - b) for a, b in zip(mine["losses"], peer["losses"], strict=True)),
                        params_equal=mine["trainable"] == peer["trainable"]))
    return out


def goals(found: list[dict]) -> list[dict]:
    """Per method, checkpointing and base: splice against its hardest peer (the highest ratio, each within its
    release); on a quantized base the time goal is issue 15's."""
    out = []
    for key in dict.fromkeys((c["method"], c["checkpointing"], c["base"]) for c in found):
        group = [c for c in found if (c["method"], c["checkpointing"], c["base"]) == key]
        time, memory = max(c["time"] for c in group), max(c["memory"] or 0 for c in group)
        goal_time = QUANTIZED_GOAL_TIME if key[2] in QUANTIZED else GOAL_TIME
        out.append(dict(method=key[0], checkpointing=key[1], base=key[2], time=time, memory=memory,
                        goal_time=goal_time, met=time <= goal_time and memory <= GOAL_MEMORY))
    return out


def savings(rows: list[dict]) -> list[dict]:
    """Per engine and method: the quantized run's memory (its weights + the step's peak) against the float run's.
    The weights are counted, not read off the resident set: a quantized load leaves freed float pages resident."""
    out = []
    for r in rows:
        if r["base"] not in QUANTIZED:
            continue
        float_row = next((f for f in rows if f["base"] not in QUANTIZED and all(
            f[k] == r[k] for k in ("engine", "transformers", "method", "checkpointing"))), None)
        if float_row is not None:
            out.append(dict(engine=r["engine"], method=r["method"], checkpointing=r["checkpointing"], base=r["base"],
                            total_mib=r["weights_mib"] + r["peak_mib"],
                            float_total_mib=float_row["weights_mib"] + float_row["peak_mib"],
                            peak=r["peak_mib"] / float_row["peak_mib"], time=r["ms"] / float_row["ms"]))
    return out


def table(rows: list[dict], found: list[dict], reached: list[dict], saved: list[dict] = ()) -> str:
    lines = [f"{'engine':<18}{'transformers':<14}{'method':<10}{'base':<10}{'ckpt':<6}{'adapter':<10}"
             f"{'trainable':>10}{'ms/step':>10}{'peak MiB':>10}{'load MiB':>10}{'weights':>10}"
             "  loss after each check step"]
    for r in rows:
        lines.append(f"{r['engine'] + ' ' + r['version']:<18}{r['transformers']:<14}{r['method']:<10}"
                     f"{r.get('base', ''):<10}{r['checkpointing']:<6}{r['adapter_dtype'].removeprefix('torch.'):<10}"
                     f"{r['trainable']:>10,}{r['ms']:>10.2f}{r['peak_mib']:>10.1f}{r.get('load_mib', 0):>10.1f}"
                     f"{r.get('weights_mib', 0):>10.1f}  "
                     + " ".join(f"{v:.5f}" for v in r["losses"]))
    lines += ["", f"{'splice ÷':<18}{'transformers':<14}{'method':<10}{'base':<10}{'ckpt':<6}{'time':>8}{'memory':>8}"
              f"{'|Δ loss|':>10}  params equal"]
    for c in found:
        memory = f"{c['memory']:.2f}" if c["memory"] is not None else "–"
        lines.append(f"{c['peer']:<18}{c['transformers']:<14}{c['method']:<10}{c.get('base', ''):<10}"
                     f"{c['checkpointing']:<6}{c['time']:>8.2f}{memory:>8}{c['loss_gap']:>10.1e}  {c['params_equal']}")
    for g in reached:
        lines.append(f"goal {g['method']} on {g['base']} (ckpt {g['checkpointing']}): time {g['time']:.2f}× ≤ "
                     f"{g['goal_time']} and memory {g['memory']:.2f}× ≤ {GOAL_MEMORY} against the harder peer: "
                     f"{'met' if g['met'] else 'missed'}")
    for v in saved:
        lines.append(f"{v['engine']} {v['method']} on {v['base']} vs float (ckpt {v['checkpointing']}): weights + "
                     f"step peak {v['total_mib']:.0f} MiB vs {v['float_total_mib']:.0f} MiB "
                     f"({v['float_total_mib'] - v['total_mib']:.0f} MiB saved); step peak {v['peak']:.2f}×, "
                     f"step time {v['time']:.2f}×")
    return "\n".join(lines)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as folder:
        if args.quantize and args.model is None:  # --quick: a tiny Llama, saved so that it loads quantized
            args.model = tiny_model_folder(args, folder)
        return run(args)


def run(args) -> dict:
    batch = make_batch(args)
    if args.memory_arm:
        Path(args.json).write_text(json.dumps(memory_arm(args, batch)))
        return {}
    device_kind = "cuda" if args.device.startswith("cuda") else "cpu"
    meta = dict(device=torch.cuda.get_device_name() if device_kind == "cuda" else f"cpu {platform.machine()}",
                dtype=str(args.dtype), adapter_dtype=str(args.adapter_dtype),
                size=None if args.model else args.size, batch=args.batch, rounds=args.rounds, lr=args.lr,
                check_steps=args.check_steps, threads=torch.get_num_threads(),
                model=args.model or f"random Llama ({args.size})", quantize=args.quantize,
                memory=MEMORY_MEASURE[device_kind],
                init="splice's fresh adapter, zero tensors (LoRA's B) filled with N(0, 0.01²), copied into the peer",
                versions={p: version(p) for p in ("torch", "transformers", "peft", "adapters")})
    print(json.dumps(meta))
    rows = []
    for base in bases(args):
        make_model = model_factory(args, base)
        for method in args.methods.split(","):
            engines = engines_for(method, args.engines.split(","))
            rows += time_method(method, engines, args, make_model, batch, base) if engines else []
    for r in rows:
        r.update(measure_memory(args, r))
    if args.adapters_python:
        rows += adapters_rows(args)
    found = comparisons(rows)
    reached = goals(found)
    saved = savings(rows)
    print(table(rows, found, reached, saved))
    result = dict(meta=meta, rows=rows, comparisons=found, goals=reached, savings=saved)
    from splice.train.run import write_json  # whole or not at all

    write_json(Path(args.json), result)
    return result


if __name__ == "__main__":
    main()
