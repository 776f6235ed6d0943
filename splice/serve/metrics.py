"""Prometheus metrics in the text exposition format (version 0.0.4), written here: no client library needed.

Three kinds, each with optional labels: :class:`Counter` (only goes up),
:class:`Gauge` (set, or read from a callback when scraped) and :class:`Histogram`
(cumulative buckets, sum and count). :class:`Metrics` holds the server's set and
renders them all for ``GET /metrics``. Every update takes a lock: the HTTP threads
and the engine's worker update the same series.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: tuple[str, ...], values: tuple[str, ...], extra: str = "") -> str:
    parts = [f'{n}="{_escape(str(v))}"' for n, v in zip(names, values)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class _Metric:
    kind = ""

    def __init__(self, name: str, help: str, labels: Iterable[str] = ()):
        self.name, self.help, self.label_names = name, help, tuple(labels)
        self._lock = threading.Lock()

    def _key(self, labels: dict[str, str]) -> tuple[str, ...]:
        if set(labels) != set(self.label_names):
            raise ValueError(f"{self.name} takes labels {self.label_names}, got {tuple(labels)}")
        return tuple(str(labels[n]) for n in self.label_names)

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]


class Counter(_Metric):
    """A count that only goes up (requests, tokens)."""

    kind = "counter"

    def __init__(self, name: str, help: str, labels: Iterable[str] = ()):
        super().__init__(name, help, labels)
        self._values: dict[tuple[str, ...], float] = {}

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: str) -> float:
        with self._lock:
            return self._values.get(self._key(labels), 0.0)

    def render(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        return self.header() + [f"{self.name}{_labels(self.label_names, k)} {_number(v)}" for k, v in items]


class Gauge(_Metric):
    """A value that goes up and down; ``read`` (label values -> value) is called at scrape time instead."""

    kind = "gauge"

    def __init__(self, name: str, help: str, labels: Iterable[str] = (),
                 read: Callable[[], dict[tuple[str, ...], float]] | None = None):
        super().__init__(name, help, labels)
        self._values: dict[tuple[str, ...], float] = {}
        self._read = read

    def set(self, value: float, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = value

    def render(self) -> list[str]:
        if self._read is not None:
            values = self._read()
        else:
            with self._lock:
                values = dict(self._values)
        return self.header() + [f"{self.name}{_labels(self.label_names, k)} {_number(v)}"
                                for k, v in sorted(values.items())]


class Histogram(_Metric):
    """Observations counted into cumulative buckets (``le``), with their sum and count."""

    kind = "histogram"

    def __init__(self, name: str, help: str, buckets: Iterable[float], labels: Iterable[str] = ()):
        super().__init__(name, help, labels)
        self.buckets = tuple(sorted(buckets)) + (math.inf,)
        self._series: dict[tuple[str, ...], list[float]] = {}  # per-bucket counts, then sum, then count

    def observe(self, value: float, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            series = self._series.setdefault(key, [0.0] * (len(self.buckets) + 2))
            for i, bound in enumerate(self.buckets):
                if value <= bound:
                    series[i] += 1
            series[-2] += value
            series[-1] += 1

    def count(self, **labels: str) -> int:
        with self._lock:
            return int(self._series.get(self._key(labels), [0.0])[-1])

    def render(self) -> list[str]:
        lines = self.header()
        with self._lock:
            items = sorted((k, list(v)) for k, v in self._series.items())
        for key, series in items:
            for bound, count in zip(self.buckets, series):
                le = 'le="' + _number(bound) + '"'
                lines.append(f"{self.name}_bucket{_labels(self.label_names, key, le)} {_number(count)}")
            lines.append(f"{self.name}_sum{_labels(self.label_names, key)} {_number(series[-2])}")
            lines.append(f"{self.name}_count{_labels(self.label_names, key)} {_number(series[-1])}")
        return lines


class Metrics:
    """The server's metrics. ``queue_depth`` and ``resident`` are read from the engine when scraped."""

    def __init__(self, queue_depth: Callable[[], int] = lambda: 0,
                 resident: Callable[[], dict[str, int]] = dict):
        self.requests = Counter("splice_requests_total", "Requests answered, by endpoint, adapter and HTTP status.",
                                ("endpoint", "adapter", "status"))
        self.queue_depth = Gauge("splice_queue_depth", "Requests accepted and not yet answered.",
                                 read=lambda: {(): float(queue_depth())})
        self.batch_rows = Histogram("splice_batch_size", "Rows per forward (or generate) the engine ran.",
                                    BATCH_BUCKETS, ("kind",))
        self.latency = Histogram("splice_request_latency_seconds", "Time from acceptance to answer, per adapter.",
                                 LATENCY_BUCKETS, ("adapter",))
        self.resident = Gauge("splice_resident_adapters", "Adapters held, by tier (device: on the model; "
                              "memory: off the model, in host memory).", ("tier",),
                              read=lambda: {(tier,): float(n) for tier, n in resident().items()})
        self.tokens = Counter("splice_tokens_generated_total", "Tokens generated, per adapter.", ("adapter",))
        self.loads = Counter("splice_adapter_loads_total", "Adapter loads from disk or the registry, by result.",
                             ("result",))

    def all(self) -> list[_Metric]:
        return [self.requests, self.queue_depth, self.batch_rows, self.latency, self.resident, self.tokens,
                self.loads]

    def render(self) -> str:
        """Every metric in the Prometheus text format."""
        return "\n".join(line for metric in self.all() for line in metric.render()) + "\n"
