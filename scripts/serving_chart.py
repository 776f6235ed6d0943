"""Draw the serving benchmark (``benchmarks/serve_load.py --workload generate``'s JSON) as an SVG for the docs.

    python benchmarks/serve_load.py --workload generate --out benchmarks/results/serve_generate_cpu.json
    python scripts/serving_chart.py [--results FILE] [--out docs/images/serving.svg]

Two panels, completion tokens per second and p99 time to first token, with one bar per engine (continuous
batching, one ``generate`` per batch) for each adapter count the run measured. Drawn from scripts/chart_svg.py's
pieces, so the same results give the same bytes: tests/test_docs.py checks that the committed chart is what this
script draws from :data:`RESULTS` today, and the docs' hook (docs/hooks/serving_benchmark.py) writes
:func:`caption` of the same file under the chart.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from chart_svg import document, group, line, rect, text, write

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "serve_generate_cpu.json"
CHART = ROOT / "docs" / "images" / "serving.svg"
PANELS = (("tokens_per_s", "completion tokens/s", "higher is better"),
          ("ttft_p99_ms", "time to first token, p99", "lower is better"))
COLOURS = {"continuous": "#3f7fbf", "per-batch": "#999"}
OTHER_COLOURS = ("#d08a2e", "#5a9e5a", "#a05a9e")  # engines a later benchmark may add
WIDTH, PANEL_WIDTH, PANEL_HEIGHT, TOP, BOTTOM, LEFT, GAP = 760, 300, 220, 70, 40, 60, 20


def caption(results: dict) -> str:
    """One sentence: what was measured, on which machine, with which model and load."""
    settings, where = results["settings"], results.get("machine") or {}
    machine = where.get("name") or settings["device"]
    loads = [f"{where[key]:.1f} {when}" for key, when in (("load_average", "before the run"),
                                                             ("load_average_after", "after"))
             if where.get(key) is not None]
    busy = f", load average {' and '.join(loads)}" if loads else ""
    prompts = ", --quick: 1–3-word prompts and 2–8 new tokens" if settings.get("quick") else ""
    return (f"{Path(settings['model']).name} on {machine}{busy}; streamed completions arriving at Poisson times, "
            f"{settings['rate']:g} per second, {settings['requests']} requests per point, at most "
            f"{settings['clients']} in flight, batches of up to {settings['max_batch_size']} rows{prompts}.")


def nice_step(top: float) -> float:
    """A 1, 2 or 5 × 10^k tick step giving at most five ticks up to ``top``."""
    magnitude = 10 ** math.floor(math.log10(top / 5)) if top > 0 else 1
    return next(magnitude * m for m in (1, 2, 5, 10) if top / (magnitude * m) <= 5)


def unit(rows: list[dict], key: str) -> tuple[str, int]:
    """What a panel shows ``key`` in, and the divisor: seconds once milliseconds run to five digits."""
    if not key.endswith("_ms"):
        return "", 1
    longest = max((row[key] for row in rows if row[key] is not None), default=0)
    return (", s", 1000) if longest >= 10_000 else (", ms", 1)


def panel(rows: list[dict], key: str, title: str, hint: str, left: float, engines: list[str],
          counts: list[int]) -> list[str]:
    """One bar chart of ``key``: a cluster per adapter count, a bar per engine in it (a missing value: no bar)."""
    suffix, per = unit(rows, key)
    highest = max((row[key] / per for row in rows if row[key] is not None), default=0) or 1
    step = nice_step(highest)
    top = step * math.ceil(highest / step)
    base = TOP + PANEL_HEIGHT

    def y(value: float) -> float:
        return base - value / top * PANEL_HEIGHT

    parts = [text(left, TOP - 12, f"{title}{suffix} ({hint})")]
    for i in range(round(top / step) + 1):
        tick = i * step
        parts.append(line(left, y(tick), left + PANEL_WIDTH, y(tick), "#ddd")
                     + text(left - 6, y(tick) + 4, f"{tick:g}", text_anchor="end"))
    cluster = PANEL_WIDTH / len(counts)
    bar = cluster * 0.8 / len(engines)
    for c, count in enumerate(counts):
        parts.append(text(left + (c + 0.5) * cluster, base + 16, f"{count} adapter{'s' * (count != 1)}",
                          text_anchor="middle"))
    for e, engine in enumerate(engines):
        bars = []
        for c, count in enumerate(counts):
            value = next((row[key] for row in rows if row["engine"] == engine and row["adapters"] == count), None)
            if value is None:
                continue
            value /= per
            x = left + c * cluster + cluster * 0.1 + e * bar
            bars.append(rect(x, y(value), bar - 2, base - y(value), colour(engine, engines)))
            bars.append(text(x + (bar - 2) / 2, y(value) - 4, f"{value:.0f}" if value >= 10 else f"{value:.2g}",
                             text_anchor="middle", font_size=10))
        parts.append(group(bars, data_engine=engine, data_value=key))
    return parts


def colour(engine: str, engines: list[str]) -> str:
    return COLOURS.get(engine) or OTHER_COLOURS[engines.index(engine) % len(OTHER_COLOURS)]


def draw(results: dict) -> str:
    rows = results["results"]
    engines = list(dict.fromkeys(row["engine"] for row in rows))
    counts = sorted({row["adapters"] for row in rows})
    parts = [text(LEFT, 20, "splice serve, streamed completions: continuous batching vs one generate per batch",
                  font_size=14)]
    for e, engine in enumerate(engines):  # the legend
        at = LEFT + e * 150
        parts.append(rect(at, 32, 12, 12, colour(engine, engines)) + text(at + 18, 42, engine))
    for p, (key, title, hint) in enumerate(PANELS):
        parts += panel(rows, key, title, hint, LEFT + p * (PANEL_WIDTH + LEFT + GAP), engines, counts)
    return document(WIDTH, TOP + PANEL_HEIGHT + BOTTOM, parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS, help="a serve_load.py --workload generate JSON")
    parser.add_argument("--out", type=Path, default=CHART)
    args = parser.parse_args()
    results = json.loads(args.results.read_text())
    write(args.out, draw(results))
    print(args.out)
    print(caption(results))


if __name__ == "__main__":
    main()
