"""The server's Prometheus metrics, kept and written by ``prometheus_client``.

:class:`Metrics` holds the server's series in a registry of its own (two apps in
one process, as in tests, do not collide) and renders them for ``GET /metrics``.
With ``PROMETHEUS_MULTIPROC_DIR`` set before the server starts (the client's
multiprocess mode), every process (each worker, each Ray Serve replica) writes
its values to files in that folder and ``/metrics``, answered by any of them,
sums every process's counts; ``mark_process_dead`` tidies a stopped replica's
gauges. The thin :class:`Counter`, :class:`Gauge` and :class:`Histogram` keep the
calls the engine makes (``inc(amount, **labels)``, ``observe``, ``count``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable

from ..errors import SpliceError

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


def _client():
    try:
        import prometheus_client
    except ImportError:
        raise SpliceError("splice serve's /metrics needs prometheus_client: pip install 'splice[serve]'.") from None
    return prometheus_client


class _Metric:
    """One prometheus_client metric with its label names, in ``registry`` (a new one of its own if none)."""

    kind = ""

    def __init__(self, name: str, help: str, labels: Iterable[str] = (), registry=None, **options):
        client = _client()
        self.name, self.label_names = name, tuple(labels)
        self.registry = registry if registry is not None else client.CollectorRegistry()
        self._metric = getattr(client, self.kind)(name, help, self.label_names, registry=self.registry, **options)

    def _series(self, labels: dict[str, str]):
        if set(labels) != set(self.label_names):
            raise ValueError(f"{self.name} takes labels {self.label_names}, got {tuple(labels)}")
        return self._metric.labels(**{n: str(v) for n, v in labels.items()}) if self.label_names else self._metric

    def _sample(self, suffix: str, labels: dict[str, str]) -> float:
        wanted = {n: str(v) for n, v in labels.items()}
        for family in self._metric.collect():
            for sample in family.samples:
                if sample.name == self.name + suffix and sample.labels == wanted:
                    return sample.value
        return 0.0

    def render(self) -> list[str]:
        """This metric's lines in the text exposition format."""
        return _client().generate_latest(self._metric).decode().splitlines()


class Counter(_Metric):
    """A count that only goes up (requests, tokens); its name ends in ``_total``."""

    kind = "Counter"

    def __init__(self, name: str, help: str, labels: Iterable[str] = (), registry=None,
                 then: Callable[[], None] | None = None):
        super().__init__(name, help, labels, registry)
        self._then = then  # called after each increment

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        self._series(labels).inc(amount)
        if self._then is not None:
            self._then()

    def value(self, **labels: str) -> float:
        return self._sample("" if self.name.endswith("_total") else "_total", labels)


class Gauge(_Metric):
    """A value that goes up and down; across processes the live ones' values are summed."""

    kind = "Gauge"

    def __init__(self, name: str, help: str, labels: Iterable[str] = (), registry=None):
        super().__init__(name, help, labels, registry, multiprocess_mode="livesum")

    def set(self, value: float, **labels: str) -> None:
        self._series(labels).set(value)


class Histogram(_Metric):
    """Observations counted into cumulative buckets (``le``), with their sum and count."""

    kind = "Histogram"

    def __init__(self, name: str, help: str, buckets: Iterable[float], labels: Iterable[str] = (), registry=None):
        super().__init__(name, help, labels, registry, buckets=tuple(buckets))

    def observe(self, value: float, **labels: str) -> None:
        self._series(labels).observe(value)

    def count(self, **labels: str) -> int:
        return int(self._sample("_count", labels))


class Metrics:
    """The server's metrics. ``queue_depth`` and ``resident`` are read from the engine when scraped.

    In multiprocess mode a scrape reaches one process, so the two gauges are also
    refreshed whenever a request is counted: the files then hold every process's
    depth as of its latest answer.
    """

    def __init__(self, queue_depth: Callable[[], int] = lambda: 0,
                 resident: Callable[[], dict[str, int]] = dict):
        self._queue_depth, self._resident = queue_depth, resident
        self.registry = _client().CollectorRegistry()
        each = {"registry": self.registry}
        self.requests = Counter("splice_requests_total", "Requests answered, by endpoint, adapter and HTTP status.",
                                ("endpoint", "adapter", "status"), then=self.refresh, **each)
        self.queue_depth = Gauge("splice_queue_depth", "Requests accepted and not yet answered.", **each)
        self.batch_rows = Histogram("splice_batch_size", "Rows per forward (or generate) the engine ran.",
                                    BATCH_BUCKETS, ("kind",), **each)
        self.latency = Histogram("splice_request_latency_seconds", "Time from acceptance to answer, per adapter.",
                                 LATENCY_BUCKETS, ("adapter",), **each)
        self.resident = Gauge("splice_resident_adapters", "Adapters held, by tier (device: on the model; "
                              "memory: off the model, in host memory).", ("tier",), **each)
        self.tokens = Counter("splice_tokens_generated_total", "Tokens generated, per adapter.", ("adapter",), **each)
        self.loads = Counter("splice_adapter_loads_total", "Adapter loads from disk or the registry, by result.",
                             ("result",), **each)

    def refresh(self) -> None:
        """Read the queue depth and the resident adapters from the engine into their gauges."""
        self.queue_depth.set(float(self._queue_depth()))
        for tier, count in self._resident().items():
            self.resident.set(float(count), tier=tier)

    def render(self) -> str:
        """Every metric in the Prometheus text format: this process's, or every process's in multiprocess mode."""
        client = _client()
        self.refresh()
        if os.environ.get(MULTIPROCESS_DIR):
            from prometheus_client import multiprocess

            registry = client.CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return client.generate_latest(registry).decode()
        return client.generate_latest(self.registry).decode()
