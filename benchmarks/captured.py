"""Decode-like batches through a forward captured whole: CUDA graphs (``--graphs``) and ``torch.compile``
(``--compile``) arms for ``multi_adapter.py`` (splice only).

The base is captured (or compiled) from the bare model. The adapted model is captured
*once*, after ``model.reserve(...)`` keeps every routing tensor in place; each routed arm
(one adapter on every row, then each mix) calls ``model.route(names)`` — which writes that
batch's routing into the captured tensors — and replays the same graph (or calls the same
compiled forward). The routing is part of each timed call, as it is of serving a batch.
Before any timing, every captured arm's output is compared with the same batch run eagerly;
a mismatch stops the run. For ``--compile``, graph breaks and the graphs compiled for the
routed forward after its first call are reported (0 and 0: one graph served every batch).
"""

from __future__ import annotations

import time
from typing import Callable

import torch


def tolerance(dtype: torch.dtype) -> float:
    return 1e-4 if dtype == torch.float32 else 5e-2  # as check_rows: bf16 hidden states reach tens


def compare(arm: str, got: torch.Tensor, expected: torch.Tensor) -> float:
    """Largest difference of a captured arm from the eager run; raises if beyond the dtype's tolerance."""
    diff = (got.float() - expected.float()).abs().max().item()
    limit = tolerance(expected.dtype)
    if not diff <= limit:
        raise AssertionError(f"{arm}: captured output differs from the eager one by {diff:.2e} (> {limit:g})")
    return diff


def routed_batches(routes: dict[str, list[str]], first: str, rows: int) -> dict[str, list[str]]:
    return {"one": [first] * rows, **routes}


def expected_output(engine, inputs, arm: str, route: list[str]) -> torch.Tensor:
    return engine.one(inputs, route[0]) if arm == "one" else engine.mixed(inputs, route)


def route_ms(model, route: list[str], repeats: int = 200) -> float:
    """Median host time of ``model.route`` for one batch (it precedes every routed replay)."""
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.route(route)
        samples.append((time.perf_counter() - start) * 1e3)
    return sorted(samples)[len(samples) // 2]


def graphed_arms(engine, inputs, routes, first: str) -> tuple[dict, dict, Callable[[], dict]]:
    """CUDA graphs: ``base-graph`` (the bare model) and ``<arm>-graph`` (one routed graph, replayed per batch)."""
    model = engine.model
    rows = inputs["input_ids"].shape[0]
    batches = routed_batches(routes, first, rows)
    model.reserve(len(model.adapters))  # every resident adapter, not only this batch's
    base_graph, base_out = capture(lambda: engine.bare(**inputs)[0])
    model.route(batches["one"])
    routed_graph, routed_out = capture(lambda: model.base(**inputs)[0])
    base_graph.replay()
    checks = {"base-graph": compare("base-graph", base_out, engine.base(inputs))}
    arms = {"base-graph": base_graph.replay}
    for arm, route in batches.items():
        expected = expected_output(engine, inputs, arm, route)
        model.route(route)
        routed_graph.replay()
        checks[f"{arm}-graph"] = compare(f"{arm}-graph", routed_out, expected)
        arms[f"{arm}-graph"] = lambda r=route: (model.route(r), routed_graph.replay())
    mix = list(routes.values())[-1]
    return arms, checks, lambda: {"route_ms": route_ms(model, mix), "route_distinct": len(set(mix))}


def capture(forward: Callable[[], torch.Tensor]) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
    """A CUDA graph of ``forward`` (warmed on a side stream first, as capture requires) and its output tensor."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            forward()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = forward()
    return graph, out


def compiled_arms(engine, inputs, routes, first: str) -> tuple[dict, dict, Callable[[], dict]]:
    """torch.compile: ``mode="reduce-overhead"`` (CUDA graphs) on a GPU, inductor's default on the CPU."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    model = engine.model
    mode = "reduce-overhead" if inputs["input_ids"].is_cuda else None
    rows = inputs["input_ids"].shape[0]
    batches = routed_batches(routes, first, rows)
    model.reserve(len(model.adapters))
    torch._dynamo.reset()  # a fresh cache per engine (the same model class every time: no recompile limit)
    breaks = sum(counters["graph_break"].values())
    bare = torch.compile(engine.bare, mode=mode)
    routed = torch.compile(model.base, mode=mode)  # breaks are counted, not fatal (tests: fullgraph on the CPU)
    start = time.perf_counter()
    checks = {"base-compiled": compare("base-compiled", bare(**inputs)[0].clone(), engine.base(inputs))}
    model.route(batches["one"])
    routed(**inputs)
    compile_s = time.perf_counter() - start
    graphs = counters["stats"]["unique_graphs"]
    arms = {"base-compiled": lambda: bare(**inputs)}
    for arm, route in batches.items():
        expected = expected_output(engine, inputs, arm, route)
        model.route(route)
        checks[f"{arm}-compiled"] = compare(f"{arm}-compiled", routed(**inputs)[0].clone(), expected)
        arms[f"{arm}-compiled"] = lambda r=route: (model.route(r), routed(**inputs))

    def report() -> dict:
        return {"mode": mode or "default", "compile_s": compile_s,
                "recompiled_graphs": counters["stats"]["unique_graphs"] - graphs,
                "graph_breaks": sum(counters["graph_break"].values()) - breaks}

    return arms, checks, report
