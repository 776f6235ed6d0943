"""Load test for ``splice serve`` on loopback: throughput and latency for the base, one adapter, and N adapters.

Bounded and open-loop: ``--requests`` requests per scenario arrive at Poisson
times (``--rate`` per second), at most ``--clients`` in flight, against
``splice serve`` started as its own process on 127.0.0.1. Adapter popularity is
uniform or skewed (Zipf, s = 1.1). The model is the real all-MiniLM-L6-v2
("minilm") by default; its adapters are LoRA r=8 with a 3-label head, randomly
initialised (speed does not depend on training). The base has no head, so the
base scenario calls /v1/embeddings (the same one forward, mean-pooled); adapter
scenarios call /v1/classify.

    python benchmarks/serve_load.py                      # CPU, small counts
    python benchmarks/serve_load.py --device cuda --requests 2000 --rate 400 --clients 64

``--workload generate`` measures streamed completions instead (:mod:`serve_generate`):
SmolLM2 by default, adapters of four methods, the continuous-batching scheduler
against the one-``generate``-per-batch engine (``--no-continuous``) in the same run.

    python benchmarks/serve_load.py --workload generate  # CPU, about 4 minutes
    python benchmarks/serve_load.py --workload generate --quick --model PATH  # seconds, for the test

Prints a table and writes JSON (``--out``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch
from transformers import AutoModel

import splice
from splice import heads
from splice.assets import model_path


def texts(count: int, seed: int) -> list[str]:
    """Real tweets if the demo data is installed, else short synthetic sentences."""
    try:
        from splice.assets import tweet_sentiment

        pool = [text for text, _ in tweet_sentiment()[:2000]]
    except splice.SpliceError:
        words = "the a service was great terrible slow fast movie food phone okay never again love it".split()
        rng = random.Random(seed)
        pool = [" ".join(rng.choices(words, k=rng.randint(5, 20))) for _ in range(500)]
    rng = random.Random(seed)
    return [rng.choice(pool) for _ in range(count)]


def make_adapters(folder: Path, model_dir: Path, count: int) -> list[str]:
    """``count`` LoRA adapters with classification heads, saved under ``folder``."""
    model = splice.attach(AutoModel.from_pretrained(model_dir))
    names = []
    for i in range(count):
        name = f"task{i}"
        model.add(name, splice.LoRA(r=8, targets=["q", "v"]), head=heads.Classification(num_labels=3))
        with torch.no_grad():  # LoRA's B starts at zero: give it values so the adapter really computes
            for param in model.adapters[name].parameters():
                param.add_(torch.randn_like(param) * 0.02)
        model.save(name, folder / name)
        names.append(name)
    return names


def popularity(names: list[str], skewed: bool, rng: random.Random):
    weights = [1 / (rank + 1) ** 1.1 for rank in range(len(names))] if skewed else [1.0] * len(names)
    return lambda: rng.choices(names, weights)[0]


async def run_scenario(url: str, pick, requests: int, clients: int, rate: float, seed: int) -> dict:
    """Open loop: arrivals at Poisson times whatever the answers do, at most ``clients`` requests in flight.

    A request's latency runs from its arrival, so time spent waiting for a free client counts.
    """
    inputs, rng = texts(requests, seed), random.Random(seed)
    arrivals, at = [], 0.0
    for _ in range(requests):
        at += rng.expovariate(rate)
        arrivals.append(at)
    latencies, statuses, gate = [], [], asyncio.Semaphore(clients)

    async def one(http: httpx.AsyncClient, i: int, began: float) -> None:
        await asyncio.sleep(max(0.0, began + arrivals[i] - time.perf_counter()))
        adapter = pick()
        body = {"model": "", "input": [inputs[i]]} if adapter == "" else {"adapter": adapter, "inputs": [inputs[i]]}
        async with gate:
            response = await http.post("/v1/embeddings" if adapter == "" else "/v1/classify", json=body)
        statuses.append(response.status_code)
        if response.status_code == 200:
            latencies.append(time.perf_counter() - began - arrivals[i])

    async with httpx.AsyncClient(base_url=url, timeout=120, limits=httpx.Limits(max_connections=clients)) as http:
        began = time.perf_counter()
        await asyncio.gather(*(one(http, i, began) for i in range(requests)))
        wall = time.perf_counter() - began
    latencies.sort()
    quantile = (lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000) if latencies else None
    return {"requests": requests, "ok": statuses.count(200), "rejected_429": statuses.count(429),
            "other_errors": len(statuses) - statuses.count(200) - statuses.count(429), "seconds": wall,
            "throughput_rps": statuses.count(200) / wall, "p50_ms": quantile(0.50), "p99_ms": quantile(0.99),
            "mean_ms": statistics.fmean(latencies) * 1000 if latencies else None}


def batches_run(url: str) -> int:
    """Forwards the server has run so far, from its /metrics."""
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        if line.startswith('splice_batch_size_count{kind="encode"}'):
            return int(float(line.split()[-1]))
    return 0


@contextlib.contextmanager
def server(args: argparse.Namespace, adapters: Path, *extra: str):
    """``splice serve`` in its own process (so the load generator does not share its interpreter); yields the URL."""
    command = [sys.executable, "-m", "splice", "serve", "--model", args.model, "--adapters", str(adapters),
               "--port", "0", "--device", args.device, "--max-batch-size", str(args.max_batch_size),
               "--max-wait-ms", str(args.max_wait_ms), "--max-queue", str(4 * args.requests),
               "--device-slots", str(args.adapters), "--request-timeout", "3600",  # a saturated engine queues
               "--quiet", *extra]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        if not line.startswith("splice serve: "):
            raise SystemExit(f"the server did not start: {line!r}")
        yield line.split()[2]
    finally:
        process.terminate()
        process.wait(timeout=60)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", choices=["classify", "generate"], default="classify")
    parser.add_argument("--quick", action="store_true", help="generate: a few short requests (for the test)")
    parser.add_argument("--model", default=None, help="default: minilm (classify), smollm2 (generate)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--adapters", type=int, default=8, help="N in the N-adapter scenario")
    parser.add_argument("--adapter-counts", type=int, nargs="+", default=[1, 8, 32],
                        help="generate: the scenarios' adapter counts (default: 1 8 32)")
    parser.add_argument("--lengths", type=int, nargs="+", default=None,
                        help="generate: max_tokens is drawn uniformly from these (default: 8 16 16 32 64 96)")
    parser.add_argument("--popularity", choices=["uniform", "skewed"], default="uniform")
    parser.add_argument("--requests", type=int, default=200, help="requests per scenario")
    parser.add_argument("--clients", type=int, default=None, help="default: 8 (classify), 32 (generate)")
    parser.add_argument("--rate", type=float, default=None,
                        help="arrivals per second, all clients together (default: 40 classify, 1.5 generate)")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="serve_load.json")
    args = parser.parse_args(argv)
    generate = args.workload == "generate"
    args.model = args.model or ("smollm2" if generate else "minilm")
    args.clients = args.clients or (32 if generate else 8)
    args.rate = args.rate or (1.5 if generate else 40.0)
    if generate:
        sys.path.insert(0, str(Path(__file__).resolve().parent))  # its sibling, also when imported by the test
        from serve_generate import compare

        return compare(args, server)

    results = []
    with tempfile.TemporaryDirectory() as scratch:
        names = make_adapters(Path(scratch), model_path(args.model), args.adapters)
        rng = random.Random(args.seed)
        scenarios = [("base", lambda: ""), ("1 adapter", lambda: names[0]),
                     (f"{args.adapters} adapters, {args.popularity}",
                      popularity(names, args.popularity == "skewed", rng))]
        with server(args, Path(scratch)) as url:
            asyncio.run(run_scenario(url, lambda: names[0], 16, 4, 1000.0, args.seed))  # warm-up
            for label, pick in scenarios:
                before = batches_run(url)
                result = asyncio.run(run_scenario(url, pick, args.requests, args.clients, args.rate, args.seed))
                result.update(scenario=label, mean_batch_rows=result["ok"] / max(batches_run(url) - before, 1))
                results.append(result)

    base_rps = results[0]["throughput_rps"]
    print(f"splice serve load test: {args.model} on {args.device}, {args.clients} clients, Poisson {args.rate:g}/s, "
          f"{args.requests} requests per scenario, max batch {args.max_batch_size}, max wait {args.max_wait_ms:g} ms")
    print(f"{'scenario':<28}{'ok':>6}{'429':>6}{'req/s':>9}{'vs base':>9}{'p50 ms':>9}{'p99 ms':>9}{'rows/batch':>12}")
    for r in results:
        print(f"{r['scenario']:<28}{r['ok']:>6}{r['rejected_429']:>6}{r['throughput_rps']:>9.1f}"
              f"{r['throughput_rps'] / base_rps:>9.2f}{r['p50_ms']:>9.1f}{r['p99_ms']:>9.1f}"
              f"{r['mean_batch_rows']:>12.1f}")
    Path(args.out).write_text(json.dumps({"settings": vars(args), "results": results}, indent=2) + "\n")
    print(f"wrote {args.out}")
    return {"settings": vars(args), "results": results}


if __name__ == "__main__":
    main()
