"""Does chunked prefill pay? Running rows' time between tokens while a long prompt arrives, chunked or whole.

``--rows`` streamed completions decode on ``splice serve``'s engine (in process, base
model rows) when a request with a prompt of ``--prompt-tokens`` tokens arrives. With
``--prefill-tokens`` at least that long, the engine prefills the prompt in one forward
and every running row waits for it; with a smaller value it prefills it in chunks of
that many tokens, one decode step of the running rows between two chunks. The arms
alternate (``--repeats`` times each) on one model, so machine load hits them alike.

Per arm: the running rows' gap between two tokens while the long prompt is prefilling
(p50, p99, max: the stall a reader of those streams sees), the long request's time to
first token, and the whole run's completion tokens per second.

    python benchmarks/serve_prefill.py                    # SmolLM2 on CPU, about 2 minutes
    python benchmarks/serve_prefill.py --quick --model PATH  # seconds, for the test
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import splice
from splice.assets import model_path
from splice.serve.engine import Engine
from splice.serve.jobs import GenerateJob


def one_run(model, tokenizer, args: argparse.Namespace, prefill_tokens: int) -> dict:
    """The running rows and the long prompt through a fresh engine that prefills ``prefill_tokens`` a turn."""
    engine = Engine(model, tokenizer, cache_mb=4096, prefill_tokens=prefill_tokens, max_batch_size=args.rows + 1)
    engine.start()
    arrivals: list[list[float]] = [[] for _ in range(args.rows)]
    started = threading.Event()  # set by the worker thread once every row has streamed a token
    try:
        running = []
        for i in range(args.rows):
            def sink(choice: int, text: str, mine: list[float] = arrivals[i]) -> None:
                mine.append(time.perf_counter())
                if all(arrivals):
                    started.set()
            running.append(engine.submit(GenerateJob("__base__", prompts=[f"Story {i}: once upon a time"],
                                                     max_tokens=args.decode_tokens, temperature=1.0, seed=i,
                                                     sink=sink)))
        started.wait(600)  # every row streams: now the long prompt arrives
        first: list[float] = []
        ids = tokenizer(" ".join(["word"] * args.prompt_tokens))["input_ids"][:args.prompt_tokens]
        long = GenerateJob("__base__", prompts=[tokenizer.decode(ids)], ids=[ids], max_tokens=2, temperature=0,
                           sink=lambda choice, text: first.append(time.perf_counter()))
        arrived = time.perf_counter()
        engine.submit(long)
        long.future.result(600)
        answers = [job.future.result(600) for job in running]
    finally:
        engine.stop()
    prefilled = first[0] if first else time.perf_counter()
    gaps = sorted(b - a for times in arrivals for a, b in zip(times, times[1:]) if b > arrived and a < prefilled)
    finished = max(times[-1] for times in arrivals if times)
    tokens = sum(choice["completion_tokens"] for answer in answers for choice in answer)
    return {"prefill_tokens": prefill_tokens, "gap_p50_ms": _ms(gaps, 0.5), "gap_p99_ms": _ms(gaps, 0.99),
            "gap_max_ms": gaps[-1] * 1000 if gaps else None, "long_ttft_ms": (prefilled - arrived) * 1000,
            "running_tokens_per_s": tokens / (finished - min(times[0] for times in arrivals))}


def _ms(values: list[float], q: float) -> float | None:
    return values[min(len(values) - 1, int(q * len(values)))] * 1000 if values else None


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--quick", action="store_true", help="a short prompt and few tokens (for the test)")
    parser.add_argument("--rows", type=int, default=8, help="completions decoding when the long prompt arrives")
    parser.add_argument("--prompt-tokens", type=int, default=1024)
    parser.add_argument("--decode-tokens", type=int, default=48, help="max_tokens of each running row")
    parser.add_argument("--chunks", type=int, nargs="+", default=[128, 256], help="the chunked arms' chunk sizes")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--out", default="serve_prefill.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.rows, args.prompt_tokens, args.decode_tokens, args.chunks, args.repeats = 2, 40, 12, [8], 1
    torch.set_num_threads(args.threads)
    folder = model_path(args.model)
    model = splice.attach(AutoModelForCausalLM.from_pretrained(folder)).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    arms = [args.prompt_tokens, *args.chunks]  # the first prefills the whole prompt in one forward
    runs = [one_run(model, tokenizer, args, arm) for _ in range(args.repeats) for arm in arms]
    results = []
    for arm in arms:
        mine = [r for r in runs if r["prefill_tokens"] == arm]
        worst = max(mine, key=lambda r: r["gap_p99_ms"] or 0)  # the repeat with the longer stall
        results.append({**worst, "arm": "whole" if arm == args.prompt_tokens else f"chunks of {arm}",
                        "runs": mine})
    print(f"chunked prefill: {args.model} on CPU ({args.threads} thread), {args.rows} rows decoding, a prompt of "
          f"{args.prompt_tokens} tokens arrives; worst of {args.repeats} alternating runs per arm")
    print(f"{'arm':<16}{'gap p50':>9}{'gap p99':>9}{'gap max':>9}{'long TTFT':>11}{'tok/s':>8}   (ms)")
    for r in results:
        print(f"{r['arm']:<16}" + "".join(f"{r[k]:>9.0f}" if r[k] is not None else f"{'-':>9}"
                                          for k in ("gap_p50_ms", "gap_p99_ms", "gap_max_ms"))
              + f"{r['long_ttft_ms']:>11.0f}{r['running_tokens_per_s']:>8.1f}")
    written = {"settings": vars(args), "results": results}
    Path(args.out).write_text(json.dumps(written, indent=2) + "\n")
    print(f"wrote {args.out}")
    return written


if __name__ == "__main__":
    main()
