"""One command for everything that needs a GPU, sized to finish within 8 minutes on one H100:

    python benchmarks/gpu_suite.py              # GPU: gpu_check, multi_adapter (with peft, CUDA graphs), train_step
    python benchmarks/gpu_suite.py --dry-run    # print the steps, their commands and time limits; run nothing
    python benchmarks/gpu_suite.py --quick      # CPU: the same plumbing on tiny models, about a minute

Each step runs in its own process under its own time limit: its share of ``--budget`` plus whatever the steps
before it left unused, so one slow step cannot eat the others' time. A step that fails or runs out of time is
recorded (with the end of its output) and the suite goes on. The results go to one JSON and one markdown file
in ``benchmarks/results/``, named after the date and the card: ``gpu-suite_<date>_<card>.json`` / ``.md``.
AdapterHub's ``adapters`` pins transformers 4.57, so its arms run only with ``--adapters-python`` (see
benchmarks/README.md); without it the suite says which arms it skipped. Exits 1 if any step failed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from engines import version  # noqa: E402
from suite_report import markdown  # noqa: E402

GPU_BUDGET, QUICK_BUDGET = 450.0, 300.0  # seconds: 7.5 minutes on the GPU leaves room for start-up and writing
TAIL = 4000  # characters of a step's output kept in the results


@dataclass
class Step:
    """One benchmark script run as ``python <argv> --json <file>``; ``share`` is its part of the budget."""

    name: str
    argv: list[str]
    share: float
    skip: str = ""  # why it does not run here; empty: it runs
    notes: list[str] = field(default_factory=list)  # arms it leaves out, and why


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny models and batches: the CPU check of the plumbing")
    p.add_argument("--dry-run", action="store_true", help="print the plan and run nothing")
    p.add_argument("--budget", type=float, default=None,
                   help=f"seconds for all steps together (default {GPU_BUDGET:g}; {QUICK_BUDGET:g} with --quick)")
    p.add_argument("--adapters-python", default=None,
                   help="a Python with AdapterHub's `adapters` (transformers 4.57.x): adds its arms")
    p.add_argument("--out", type=Path, default=HERE / "results", help="folder for the JSON and markdown results")
    args = p.parse_args(argv)
    args.budget = args.budget or (QUICK_BUDGET if args.quick else GPU_BUDGET)
    return args


def plan(args: argparse.Namespace, cuda: bool) -> list[Step]:
    """The three steps, with options sized to the budget: the 1.1 B Llama shape on a GPU, tiny ones with --quick."""
    peers = ["--adapters-python", args.adapters_python] if args.adapters_python else []
    if args.quick:
        multi = ["--quick", "--methods", "lora", "--counts", "1,2", "--prefill", "2x8", "--decode", "2",
                 "--rounds", "1"]
        train = ["--quick", "--batch", "2x8", "--rounds", "1", "--check-steps", "2"]
    else:  # the 1.1 B shape in bf16 (32x256 prefill, 64x1 decode; 8x512 training), fewer rounds and counts
        multi = ["--methods", "lora,pfeiffer,houlsby,ia3", "--counts", "1,8,32", "--rounds", "10"]
        train = ["--rounds", "10"]
    graphs = ["--graphs"] if cuda else []
    # Pfeiffer's only training peer is adapters' seq_bn: without it, LoRA (vs peft) alone.
    methods = ["--methods", "lora,pfeiffer" if peers else "lora"]
    return [
        Step("gpu_check", [str(HERE / "gpu_check.py")], 0.22 * args.budget,
             skip="" if cuda else "needs a CUDA GPU; on the CPU the test suite checks the kernels "
                                  "(tests/test_kernels.py, through Triton's interpreter)"),
        Step("multi_adapter", [str(HERE / "multi_adapter.py"), "--engines", "splice,peft", *multi, *graphs, *peers],
             0.49 * args.budget, notes=[] if cuda else ["CUDA-graph arms: they need a CUDA device"]),
        Step("train_step", [str(HERE / "train_step.py"), "--engines", "splice,peft", *methods, *train, *peers],
             0.29 * args.budget, notes=[] if peers else ["Pfeiffer: its only training peer is adapters"]),
    ]


def left_out(args: argparse.Namespace) -> list[str]:
    """Arms no step runs here, and why."""
    return [] if args.adapters_python else [
        "splice vs adapters (multi_adapter's BatchSplit, train_step's LoRA and Pfeiffer seq_bn): AdapterHub's "
        "`adapters` pins transformers 4.57, so it is not installed beside this one; give --adapters-python "
        "(benchmarks/README.md)"]


def time_limit(steps: list[Step], index: int, deadline: float) -> float:
    """What is left before the deadline, less the shares of the steps still to come (each keeps its own)."""
    later = sum(s.share for s in steps[index + 1 :] if not s.skip)
    return max(1.0, deadline - time.monotonic() - later)


def run_step(step: Step, limit: float, folder: Path, env: dict[str, str] | None = None) -> dict:
    """Run one step in its own process group (killed whole on time-out); its JSON result, status and output tail."""
    out = folder / f"{step.name}.json"
    command = [sys.executable, *step.argv, "--json", str(out)]
    started = time.monotonic()
    # Its own process group: a time-out also ends what the step started (train_step's memory arms, say).
    process = subprocess.Popen(command, cwd=HERE.parent, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env=env, start_new_session=True)
    lines: list[str] = []

    def echo() -> None:  # the step's output is shown as it comes and kept for the record's tail
        for line in process.stdout:
            print(line, end="", flush=True)
            lines.append(line)

    reader = threading.Thread(target=echo)
    reader.start()
    try:
        process.wait(timeout=limit)
        status = "ok" if process.returncode == 0 else "failed"
    except subprocess.TimeoutExpired:
        status = "timeout"
    try:  # whatever of the group still runs (all of it after a time-out) would hold the output open
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()
    reader.join()
    output = "".join(lines)
    return dict(name=step.name, status=status, seconds=round(time.monotonic() - started, 1), limit=round(limit, 1),
                returncode=process.returncode, command=shlex.join(["python", *relative(step.argv)]),
                notes=step.notes, result=json.loads(out.read_text()) if out.exists() and status != "timeout" else None,
                output_tail=output[-TAIL:])


def relative(argv: list[str]) -> list[str]:
    """Paths under the repository written from its root, so the recorded commands read the same on any machine."""
    root = f"{HERE.parent}{os.sep}"
    return [a.removeprefix(root) for a in argv]


def card_name(cuda: bool) -> str:
    return torch.cuda.get_device_name() if cuda else f"cpu {platform.machine()}"


def results_name(stamp: str, card: str) -> str:
    """``gpu-suite_2025-01-31_1405_nvidia-h100-80gb-hbm3``: the date and the card, as a file name."""
    date = stamp[:16].replace(" ", "_").replace(":", "")
    return f"gpu-suite_{date}_{re.sub(r'[^a-z0-9]+', '-', card.lower()).strip('-')}"


def write_whole(path: Path, text: str) -> None:
    """Write beside the target and rename over it: an interrupted run leaves no half-written results."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    partial.write_text(text)
    os.replace(partial, path)


def main(argv=None) -> int:
    args = parse_args(argv)
    cuda = torch.cuda.is_available()
    steps = plan(args, cuda)
    card = card_name(cuda)
    if args.dry_run:
        print(f"{card}; budget {args.budget:g} s")
        for note in left_out(args):
            print(f"not run: {note}")
        for step in steps:
            what = f"skipped: {step.skip}" if step.skip else shlex.join(["python", *relative(step.argv)])
            print(f"{step.name:<14} share {step.share:5.0f} s  {what}")
            for note in step.notes:
                print(f"{'':<14} not run: {note}")
        return 0
    started, stamp = time.monotonic(), time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    deadline = started + args.budget
    # --quick: one thread per step; on a shared CPU torch's threads stall each other at every barrier (4x slower).
    env = {**os.environ, "OMP_NUM_THREADS": "1"} if args.quick else None
    records = []
    with tempfile.TemporaryDirectory() as folder:
        for index, step in enumerate(steps):
            if step.skip:
                records.append(dict(name=step.name, status="skipped", reason=step.skip, notes=step.notes))
                print(f"== {step.name}: skipped, {step.skip}", flush=True)
                continue
            limit = time_limit(steps, index, deadline)
            print(f"== {step.name} (at most {limit:.0f} s)", flush=True)
            records.append(run_step(step, limit, Path(folder), env))
            print(f"== {step.name}: {records[-1]['status']} in {records[-1]['seconds']} s", flush=True)
    summary = dict(card=card, date=stamp, quick=args.quick, budget_s=args.budget, not_run=left_out(args),
                   seconds=round(time.monotonic() - started, 1),
                   versions={p: version(p) for p in ("torch", "transformers", "peft", "accelerate", "triton",
                                                     "adapters")},
                   steps=records)
    args.out.mkdir(parents=True, exist_ok=True)
    name = results_name(stamp, card)
    write_whole(args.out / f"{name}.json", json.dumps(summary, indent=1) + "\n")
    write_whole(args.out / f"{name}.md", markdown(summary))
    print(f"results: {args.out / name}.json, .md")
    return 1 if any(r["status"] in ("failed", "timeout") for r in records) else 0


if __name__ == "__main__":
    sys.exit(main())
