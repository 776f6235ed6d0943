"""scripts/serving_chart.py: a serve_load.py ``--workload generate`` results file becomes a valid SVG with every
engine's bars in both panels, and a caption naming the model, the machine and the load."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SVG = "{http://www.w3.org/2000/svg}"


def row(engine: str, adapters: int, tokens_per_s: float, ttft_p99_ms: float | None) -> dict:
    return {"engine": engine, "adapters": adapters, "requests": 6, "ok": 6, "tokens": 40, "seconds": 2.0,
            "tokens_per_s": tokens_per_s, "ttft_p50_ms": 40.0, "ttft_p99_ms": ttft_p99_ms,
            "token_p50_ms": 9.0, "token_p99_ms": 20.0}


RESULTS = {
    "settings": {"workload": "generate", "quick": True, "model": "/tmp/x/tiny-llama", "device": "cpu",
                 "adapters": 8, "requests": 6, "clients": 4, "rate": 2.5, "max_batch_size": 32},
    "machine": {"name": "Test CPU <9000>, 2 cores", "torch_threads": 2, "load_average": 3.25,
                "load_average_after": 7.0},
    "results": [row("continuous", 1, 310.0, 95.0), row("continuous", 8, 290.0, 120.0),
                row("per-batch", 1, 120.0, 400.0), row("per-batch", 8, 7.5, None)],  # None: no request answered
    "speedup": {"1": 2.6, "8": 38.7},
}


def draw(tmp_path: Path, results: dict) -> tuple[ET.Element, str]:
    source, chart = tmp_path / "results.json", tmp_path / "docs" / "serving.svg"
    source.write_text(json.dumps(results))
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "serving_chart.py"), "--results", str(source),
                           "--out", str(chart)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert [p.name for p in chart.parent.iterdir()] == ["serving.svg"]  # no partial file left beside it
    return ET.fromstring(chart.read_text()), done.stdout


def test_each_engine_has_its_bars_in_both_panels(tmp_path):
    svg, _ = draw(tmp_path, RESULTS)
    assert svg.tag == f"{SVG}svg"
    series = {(g.get("data-engine"), g.get("data-value")): g for g in svg.iter(f"{SVG}g")}
    assert set(series) == {(engine, key) for engine in ("continuous", "per-batch")
                           for key in ("tokens_per_s", "ttft_p99_ms")}
    labels = {key: [t.text for t in g.iter(f"{SVG}text")] for key, g in series.items()}
    assert labels[("continuous", "tokens_per_s")] == ["310", "290"]
    assert labels[("per-batch", "tokens_per_s")] == ["120", "7.5"]
    assert labels[("per-batch", "ttft_p99_ms")] == ["400"]  # the missing p99 draws no bar, rather than a zero
    heights = [float(r.get("height")) for r in series[("continuous", "tokens_per_s")].iter(f"{SVG}rect")]
    assert heights[0] > heights[1] > 0  # bars scale with their values
    words = [t.text for t in svg.iter(f"{SVG}text")]
    assert "1 adapter" in words and "8 adapters" in words
    assert "time to first token, p99, ms (lower is better)" in words


def test_the_caption_names_model_machine_and_load(tmp_path):
    _, printed = draw(tmp_path, RESULTS)
    assert "tiny-llama on Test CPU <9000>, 2 cores, load average 3.2 before the run and 7.0 after" in printed
    assert "2.5 per second, 6 requests per point, at most 4 in flight" in printed


def test_an_engine_the_benchmark_adds_later_gets_its_own_series(tmp_path):
    results = {**RESULTS, "results": [*RESULTS["results"], row("chunked", 1, 330.0, 80.0)]}
    del results["machine"]  # results written before the benchmark recorded its machine: the device stands in
    svg, printed = draw(tmp_path, results)
    assert {g.get("data-engine") for g in svg.iter(f"{SVG}g")} == {"continuous", "per-batch", "chunked"}
    assert "tiny-llama on cpu;" in printed


def test_minutes_long_waits_are_shown_in_seconds(tmp_path):
    results = {**RESULTS, "results": [row("continuous", 1, 0.4, 302_918.0), row("per-batch", 1, 1.1, 192_754.0)]}
    svg, _ = draw(tmp_path, results)
    words = [t.text for t in svg.iter(f"{SVG}text")]
    assert "time to first token, p99, s (lower is better)" in words and "303" in words and "193" in words
    assert "0.4" in words and "1.1" in words  # small rates keep their decimals
