"""The ``generate`` workload of ``serve_load.py``: streamed completions under Poisson arrivals, two engines.

For 1, 8 and 32 adapters (cycling LoRA, bottleneck, IA3 and prefix tuning, randomly
perturbed: speed does not depend on training), ``--requests`` completions arrive at
Poisson times (``--rate`` per second, open loop, at most ``--clients`` in flight),
each for a uniformly chosen adapter, with a prompt of 4-48 words (``--quick``: 1-3) and ``max_tokens``
drawn from short and long lengths, sampled at temperature 1, streamed. The same
arrivals go to ``splice serve`` with continuous batching (the default) and with
``--no-continuous`` (one ``generate`` per batch, the engine before it): both servers
run at once, idle but for the scenario in hand, which alternates between them.

Per engine and scenario: completion tokens per second over the whole run, time to
first token (TTFT, from the request's arrival, so queueing counts) and the time per
token after the first (p50 and p99 over requests), and the requests the server held
(running or queued) when the last one arrived: the default rate is above what the
per-batch engine sustains on a CPU, so its queue grows all run while the continuous
engine's holds about what it runs. The per-batch engine pads every row of a batch to
its longest (``max_tokens`` up to 96 against a mean of 39 by default, ``--lengths``), which bounds what
continuous batching can win at saturation to about that ratio on a CPU, where a
decode step costs in proportion to its rows.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import tempfile
import time
from pathlib import Path

import httpx
import torch
from transformers import AutoModelForCausalLM

import splice
from splice.assets import model_path

METHODS = (lambda: splice.LoRA(r=8), lambda: splice.Bottleneck(r=16), lambda: splice.IA3(),
           lambda: splice.PrefixTuning(length=8))
ENGINES = (("continuous", ()), ("per-batch", ("--no-continuous",)))
WORDS = "the a service was great terrible slow fast movie food phone okay never again love it why how".split()


def make_adapters(folder: Path, model_dir: Path, count: int) -> list[str]:
    """``count`` adapters cycling :data:`METHODS`, saved under ``folder``."""
    model = splice.attach(AutoModelForCausalLM.from_pretrained(model_dir))
    names = []
    for i in range(count):
        name = f"gen{i}"
        model.add(name, METHODS[i % len(METHODS)]())
        with torch.no_grad():
            for param in model.adapters[name].parameters():
                param.add_(torch.randn_like(param) * 0.01)
        model.save(name, folder / name)
        model.delete(name)
        names.append(name)
    return names


LENGTHS = (8, 16, 16, 32, 64, 96)  # max_tokens drawn uniformly from these: mean 39, longest 96


def workload(requests: int, rate: float, seed: int, quick: bool, lengths: tuple[int, ...] = LENGTHS) -> list[dict]:
    """Arrival times, prompts and lengths: the same for both engines."""
    rng = random.Random(seed)
    lengths, words = ((2, 4, 8), (1, 3)) if quick else (lengths, (4, 48))
    at, items = 0.0, []
    for _ in range(requests):
        at += rng.expovariate(rate)
        items.append({"at": at, "prompt": " ".join(rng.choices(WORDS, k=rng.randint(*words))),
                      "max_tokens": rng.choice(lengths), "draw": rng.random()})
    return items


async def run_scenario(url: str, names: list[str], items: list[dict], clients: int) -> dict:
    ttft, per_token, tokens, statuses, gate = [], [], [], [], asyncio.Semaphore(clients)

    async def one(http: httpx.AsyncClient, item: dict, began: float) -> None:
        await asyncio.sleep(max(0.0, began + item["at"] - time.perf_counter()))
        body = {"model": names[int(item["draw"] * len(names))], "prompt": item["prompt"],
                "max_tokens": item["max_tokens"], "temperature": 1.0, "stream": True,
                "stream_options": {"include_usage": True}}
        first = last = None
        count = 0
        async with gate, http.stream("POST", "/v1/completions", json=body) as response:
            statuses.append(response.status_code)
            async for line in response.aiter_lines():
                if not line.startswith("data: {"):
                    continue
                chunk = json.loads(line[6:])
                if chunk.get("choices") and chunk["choices"][0].get("text"):
                    last = time.perf_counter()
                    first = first or last
                if chunk.get("usage"):
                    count = chunk["usage"]["completion_tokens"]
        if response.status_code == 200 and first is not None:
            ttft.append(first - began - item["at"])
            tokens.append(count)
            if count > 1:
                per_token.append((last - first) / (count - 1))

    async with httpx.AsyncClient(base_url=url, timeout=3600, limits=httpx.Limits(max_connections=clients + 1)) as http:
        began = time.perf_counter()
        watch = asyncio.create_task(queue_at(http, began + items[-1]["at"]))
        await asyncio.gather(*(one(http, item, began) for item in items))
        wall = time.perf_counter() - began
        queued = await watch
    return {"requests": len(items), "ok": statuses.count(200), "tokens": sum(tokens), "seconds": wall,
            "tokens_per_s": sum(tokens) / wall, "ttft_p50_ms": _ms(ttft, 0.5), "ttft_p99_ms": _ms(ttft, 0.99),
            "token_p50_ms": _ms(per_token, 0.5), "token_p99_ms": _ms(per_token, 0.99),
            "queue_at_last_arrival": queued}


async def queue_at(http: httpx.AsyncClient, when: float) -> int | None:
    """The server's requests accepted and not yet answered at ``when`` (the last arrival), from its /metrics: an
    engine that keeps up holds about what it runs at once; one that saturates holds a queue that grew all run."""
    await asyncio.sleep(max(0.0, when - time.perf_counter()))
    for line in (await http.get("/metrics")).text.splitlines():
        if line.startswith("splice_queue_depth"):
            return int(float(line.split()[-1]))
    return None


def machine(device: str) -> dict:
    """Where the figures were measured: the card, or the CPU's model and cores, and how busy the machine was."""
    if device.startswith("cuda"):
        name = torch.cuda.get_device_name()
    else:
        cpuinfo = Path("/proc/cpuinfo")
        models = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                  if line.startswith("model name")] if cpuinfo.is_file() else []
        name = f"{models[0] if models else platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    return {"name": name, "torch_threads": torch.get_num_threads(),
            "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}


def _ms(values: list[float], q: float) -> float | None:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] * 1000 if values else None


def compare(args: argparse.Namespace, server) -> dict:
    """Both engines over every scenario; prints the table, writes ``args.out``, returns what it wrote."""
    counts = (1, 2) if args.quick else tuple(args.adapter_counts)
    args.adapters = max(counts)
    items = workload(args.requests, args.rate, args.seed, args.quick, tuple(args.lengths or LENGTHS))
    results, where = [], machine(args.device)  # before the run adds its own load
    with tempfile.TemporaryDirectory() as scratch:
        names = make_adapters(Path(scratch), model_path(args.model), args.adapters)
        with contextlib.ExitStack() as servers:  # both up at once: their scenarios alternate, so load hits both
            urls = {engine: servers.enter_context(server(args, Path(scratch), *extra))
                    for engine, extra in ENGINES}
            for url in urls.values():
                asyncio.run(run_scenario(url, names[:1], items[:2], args.clients))  # warm-up
            for count in counts:
                for engine, url in urls.items():
                    result = asyncio.run(run_scenario(url, names[:count], items, args.clients))
                    results.append({"engine": engine, "adapters": count, **result})
        results.sort(key=lambda r: [e for e, _ in ENGINES].index(r["engine"]))  # the table and JSON as before
    print(f"splice serve completions: {args.model} on {args.device}, Poisson {args.rate:g}/s, {args.requests} "
          f"requests per scenario, at most {args.clients} in flight, max batch {args.max_batch_size}")
    print(f"{'engine':<12}{'adapters':>9}{'ok':>5}{'tok/s':>8}{'TTFT p50':>10}{'TTFT p99':>10}"
          f"{'tok p50':>9}{'tok p99':>9}{'held':>6}   (ms)")
    for r in results:
        print(f"{r['engine']:<12}{r['adapters']:>9}{r['ok']:>5}{r['tokens_per_s']:>8.1f}"
              + "".join(f"{r[k]:>10.0f}" if r[k] is not None else f"{'-':>10}"
                        for k in ("ttft_p50_ms", "ttft_p99_ms"))
              + "".join(f"{r[k]:>9.0f}" if r[k] is not None else f"{'-':>9}" for k in ("token_p50_ms", "token_p99_ms"))
              + f"{r['queue_at_last_arrival'] if r['queue_at_last_arrival'] is not None else '-':>6}")
    ratios = {}
    for count in counts:
        new, old = (next(r for r in results if r["engine"] == e and r["adapters"] == count)
                    for e in ("continuous", "per-batch"))
        ratios[count] = new["tokens_per_s"] / old["tokens_per_s"] if old["tokens_per_s"] else None
        print(f"{count} adapters: continuous / per-batch tokens/s = {ratios[count]:.2f}x")
    where["load_average_after"] = machine(args.device)["load_average"]  # other jobs may come and go meanwhile
    written = {"settings": vars(args), "machine": where, "results": results, "speedup": ratios}
    Path(args.out).write_text(json.dumps(written, indent=2) + "\n")
    print(f"wrote {args.out}")
    return written
