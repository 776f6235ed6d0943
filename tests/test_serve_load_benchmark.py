"""``benchmarks/serve_load.py --workload generate --quick`` on a tiny Llama: both engines answer every request and
the table and JSON come out. No timing is asserted (the real figures are in the README)."""

from __future__ import annotations

import json

import pytest

from helpers import benchmark_module
from serving import char_tokenizer
from tiny_models import tiny_model


@pytest.fixture(scope="module")
def bench():
    yield from benchmark_module("serve_load.py", "serve_load_benchmark")


def test_quick_generate_run_compares_both_engines(bench, tmp_path, capsys):
    folder = tmp_path / "tiny-llama"
    tiny_model("llama", head="lm").save_pretrained(folder)
    char_tokenizer().save_pretrained(folder)
    out = tmp_path / "serve_load.json"
    result = bench.main(["--workload", "generate", "--quick", "--model", str(folder), "--device", "cpu",
                         "--requests", "4", "--rate", "50", "--out", str(out)])
    printed = capsys.readouterr().out
    assert json.loads(out.read_text())["results"] == result["results"]
    assert [(r["engine"], r["adapters"]) for r in result["results"]] == [
        ("continuous", 1), ("continuous", 2), ("per-batch", 1), ("per-batch", 2)]
    for r in result["results"]:
        assert r["ok"] == 4 and r["tokens"] > 0 and r["ttft_p99_ms"] >= r["ttft_p50_ms"] > 0
    assert "continuous / per-batch tokens/s" in printed
    where = result["machine"]  # for the chart's caption
    assert where["name"].endswith(" cores") and where["torch_threads"] >= 1
    assert where["load_average"] >= 0 and where["load_average_after"] >= 0
