"""``benchmarks/serve_prefill.py --quick`` on a tiny Llama: every arm runs, the long prompt is answered and the
table and JSON come out. No timing is asserted (the real figures are in the report and docs)."""

from __future__ import annotations

import json

import pytest

from helpers import benchmark_module
from serving import char_tokenizer
from tiny_models import tiny_model


@pytest.fixture(scope="module")
def bench():
    yield from benchmark_module("serve_prefill.py", "serve_prefill_benchmark")


def test_quick_run_measures_whole_and_chunked_prefill(bench, tmp_path, capsys):
    folder = tmp_path / "tiny-llama"
    tiny_model("llama", head="lm").save_pretrained(folder)
    char_tokenizer().save_pretrained(folder)
    out = tmp_path / "serve_prefill.json"
    result = bench.main(["--quick", "--model", str(folder), "--out", str(out)])
    assert json.loads(out.read_text())["results"] == result["results"]
    assert [r["arm"] for r in result["results"]] == ["whole", "chunks of 8"]
    for r in result["results"]:
        assert r["long_ttft_ms"] > 0 and r["running_tokens_per_s"] > 0 and r["gap_max_ms"] >= r["gap_p50_ms"]
    assert "chunked prefill" in capsys.readouterr().out
