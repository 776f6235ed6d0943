"""/metrics through prometheus_client: the same series, and several processes' metrics summed (multiprocess mode)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import multiprocess

from splice.errors import SpliceError
from splice.serve.metrics import Metrics

REPO = Path(__file__).resolve().parents[1]

# One "replica": counts a request, a batch and a latency, then exits; its values stay in the shared folder.
REPLICA = """
from splice.serve.metrics import Metrics
metrics = Metrics(queue_depth=lambda: 2, resident=lambda: {"device": 1, "memory": 0})
metrics.requests.inc(endpoint="/v1/classify", adapter="a0", status="200")
metrics.batch_rows.observe(3, kind="encode")
metrics.latency.observe(0.2, adapter="a0")
metrics.tokens.inc(5, adapter="a0")
print(__import__("os").getpid())
"""
SCRAPE = "from splice.serve.metrics import Metrics; print(Metrics().render())"


def python(code: str, folder: Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PROMETHEUS_MULTIPROC_DIR": str(folder)}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout


def test_two_processes_metrics_are_summed_by_whichever_answers_the_scrape(tmp_path):
    replicas = [int(python(REPLICA, tmp_path)) for _ in range(2)]
    text = python(SCRAPE, tmp_path)  # a third process, as a scrape reaching another replica
    assert 'splice_requests_total{adapter="a0",endpoint="/v1/classify",status="200"} 2.0' in text
    assert 'splice_batch_size_bucket{kind="encode",le="4.0"} 2.0' in text
    assert 'splice_request_latency_seconds_count{adapter="a0"} 2.0' in text
    assert 'splice_tokens_generated_total{adapter="a0"} 10.0' in text
    # Gauges: each replica's latest value (2 queued, 1 adapter on the device), summed with the scraper's (0 queued)
    assert "splice_queue_depth 4.0" in text and 'splice_resident_adapters{tier="device"} 2.0' in text
    for pid in replicas:  # what an operator's shutdown hook does for a stopped replica
        multiprocess.mark_process_dead(pid, str(tmp_path))
    assert "splice_queue_depth 0.0" in python(SCRAPE, tmp_path)


def test_one_process_renders_every_series_with_its_help():
    metrics = Metrics(queue_depth=lambda: 3, resident=lambda: {"device": 2, "memory": 1})
    metrics.requests.inc(endpoint="/health", adapter="", status="200")
    metrics.loads.inc(result="ok")
    text = metrics.render()
    for name in ("splice_requests_total", "splice_queue_depth", "splice_batch_size", "splice_request_latency_seconds",
                 "splice_resident_adapters", "splice_tokens_generated_total", "splice_adapter_loads_total"):
        assert f"# TYPE {name} " in text
    assert "splice_queue_depth 3.0" in text and 'splice_resident_adapters{tier="memory"} 1.0' in text
    assert metrics.requests.value(endpoint="/health", adapter="", status="200") == 1
    assert Metrics().render().count("splice_requests_total{") == 0  # each app has its own registry


def test_missing_prometheus_client_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(SpliceError, match=r"needs prometheus_client: pip install 'splice\[serve\]'"):
        Metrics()
