"""The markdown page of a ``gpu_suite.py`` run: the steps, then each step's own results as tables."""

from __future__ import annotations


def markdown(summary: dict) -> str:
    """One page from the suite's JSON summary (``gpu_suite.main`` writes both from the same dict)."""
    versions = ", ".join(f"{name} {v}" for name, v in summary["versions"].items())
    lines = [f"# GPU suite: {summary['card']}, {summary['date']}", "",
             f"{'`--quick` (tiny models): a check of the plumbing, not a measurement. ' if summary['quick'] else ''}"
             f"{versions}. Budget {summary['budget_s']:g} s, took {summary['seconds']:g} s.", "",
             *table(["step", "status", "seconds", "limit", "command or reason"],
                    [[r["name"], r["status"], r.get("seconds", ""), r.get("limit", ""),
                      r.get("reason") or f"`{r['command']}`"] for r in summary["steps"]])]
    notes = [f"- {note}" for note in summary["not_run"]]
    notes += [f"- {r['name']}: {note}" for r in summary["steps"] for note in r.get("notes", [])]
    if notes:
        lines += ["", "Not run:", *notes]
    for record in summary["steps"]:
        result = record.get("result")
        if record["status"] in ("failed", "timeout"):
            lines += ["", f"## {record['name']}: {record['status']}", "", "```", record["output_tail"][-1500:], "```"]
        if result:
            lines += ["", *SECTIONS[record["name"]](result)]
    return "\n".join(lines) + "\n"


def table(header: list[str], rows: list[list]) -> list[str]:
    cell = lambda v: f"{v:.3g}" if isinstance(v, float) else str(v)  # noqa: E731
    return [f"| {' | '.join(header)} |", f"|{'---|' * len(header)}",
            *(f"| {' | '.join(cell(v) for v in row)} |" for row in rows)]


def gpu_checks(result: dict) -> list[str]:
    failed = sum(not c["ok"] for c in result["checks"])
    return [f"## GPU checks: {len(result['checks']) - failed} passed, {failed} failed", "",
            f"torch {result['torch']}, triton {result['triton']}.", "",
            *table(["check", "result", "detail"],
                   [[c["name"], "ok" if c["ok"] else "FAIL", c["detail"]] for c in result["checks"]])]


def multi_adapter(result: dict) -> list[str]:
    meta = result["meta"]
    lines = ["## Multi-adapter inference", "",
             f"{meta['size']} Llama, {meta['dtype']}, prefill {meta['prefill']}, decode {meta['decode']}x1, "
             f"medians of {meta['rounds']} rounds, kernels: {meta['kernels']}.", "",
             *table(["engine", "transformers", "method", "shape", "arm", "distinct", "ms", "÷ base", "÷ one",
                     "max diff"],
                    [[r["engine"], r["transformers"], r["method"], r["shape"], r["arm"], r["distinct"] or "",
                      r["ms"], r["ratio_base"], r["ratio_one"], "" if r["max_diff"] is None else r["max_diff"]]
                     for r in result["results"]])]
    splice = result.get("splice")
    if splice:
        lines += ["", f"splice: switch the active adapter {splice['switch_ms']:.3f} ms; load a "
                      f"{splice['adapter_bytes'] / 1e6:.2f} MB adapter from disk {splice['load_ms']:.1f} ms "
                      f"+ bank slots {splice['slot_ms']:.1f} ms ({splice['resident_adapters']} resident)."]
    for note in result.get("captured", []):
        lines += ["", "splice captured decode: " + ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                                                          for k, v in note.items())]
    return lines


def train_step(result: dict) -> list[str]:
    meta = result["meta"]
    return ["## Training step", "",
            f"{meta['size']} Llama, {meta['dtype']}, batch {meta['batch']}, medians of {meta['rounds']} steps; "
            f"peak memory: {meta['memory']}.", "",
            *table(["engine", "transformers", "method", "ckpt", "adapter", "trainable", "ms/step", "peak MiB"],
                   [[f"{r['engine']} {r['version']}", r["transformers"], r["method"], r["checkpointing"],
                     r["adapter_dtype"].removeprefix("torch."), f"{r['trainable']:,}", r["ms"], r["peak_mib"]]
                    for r in result["rows"]]),
            "",
            *table(["splice ÷", "transformers", "method", "ckpt", "time", "memory", "max Δ loss"],
                   [[c["peer"], c["transformers"], c["method"], c["checkpointing"], c["time"],
                     "–" if c["memory"] is None else c["memory"], c["loss_gap"]] for c in result["comparisons"]])]


SECTIONS = {"gpu_check": gpu_checks, "multi_adapter": multi_adapter, "train_step": train_step}
