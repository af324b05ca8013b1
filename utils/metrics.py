"""In-process counters and latency histograms, shown by the `bridge_stats` tool.

Kept deliberately small: a counter is a name plus sorted labels; a histogram keeps count,
sum, min, max and fixed buckets, so memory stays constant however long the bridge runs.
Spans for a user's OpenTelemetry collector come from `tracer()` (the API is a dependency of
mcp; without an SDK configured the spans cost next to nothing). It is imported on first use,
not at start-up: the bridge lists its tools before any span is needed.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

_tracer: Tracer | None = None


def tracer() -> Tracer:
    """The bridge's OpenTelemetry tracer (the API imported on first use)."""
    global _tracer
    if _tracer is None:
        from opentelemetry import trace

        _tracer = trace.get_tracer("lmstudio_bridge")
    return _tracer

_BUCKETS_MS: tuple[float, ...] = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000)

LabelKey = tuple[tuple[str, str], ...]


def _key(labels: Mapping[str, str]) -> LabelKey:
    return tuple(sorted((k, str(v)) for k, v in labels.items()))


@dataclass
class Histogram:
    """Count, sum, min, max and bucket counts of observed values (milliseconds by convention)."""

    count: int = 0
    total: float = 0.0
    low: float = float("inf")
    high: float = 0.0
    buckets: list[int] = field(default_factory=lambda: [0] * (len(_BUCKETS_MS) + 1))

    def observe(self, value: float) -> None:
        self.count += 1
        self.total += value
        self.low = min(self.low, value)
        self.high = max(self.high, value)
        self.buckets[bisect.bisect_left(_BUCKETS_MS, value)] += 1

    def quantile(self, q: float) -> float:
        """Upper bound of the bucket holding the q-quantile (an estimate, as in Prometheus)."""
        if not self.count:
            return 0.0
        rank = q * self.count
        seen = 0
        for index, n in enumerate(self.buckets):
            seen += n
            if seen >= rank:
                return _BUCKETS_MS[index] if index < len(_BUCKETS_MS) else self.high
        return self.high

    def summary(self) -> dict[str, float]:
        if not self.count:
            return {"count": 0}
        return {
            "count": self.count,
            "mean": round(self.total / self.count, 3),
            "min": round(self.low, 3),
            "max": round(self.high, 3),
            "p50_le": self.quantile(0.5),
            "p95_le": self.quantile(0.95),
        }


class Metrics:
    """Thread-safe named counters and histograms with labels."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[str, dict[LabelKey, int]] = {}
        self._histograms: dict[str, dict[LabelKey, Histogram]] = {}

    def inc(self, name: str, amount: int = 1, **labels: str) -> None:
        with self._lock:
            series = self._counters.setdefault(name, {})
            key = _key(labels)
            series[key] = series.get(key, 0) + amount

    def observe(self, name: str, value_ms: float, **labels: str) -> None:
        with self._lock:
            self._histograms.setdefault(name, {}).setdefault(_key(labels), Histogram()).observe(value_ms)

    def counter(self, name: str, **labels: str) -> int:
        with self._lock:
            return self._counters.get(name, {}).get(_key(labels), 0)

    def snapshot(self) -> dict[str, object]:
        """Every series, labels rendered as `name{k=v,...}`, for display."""

        def label(name: str, key: LabelKey) -> str:
            return name + ("{" + ",".join(f"{k}={v}" for k, v in key) + "}" if key else "")

        with self._lock:
            return {
                "counters": {label(n, k): v for n, s in sorted(self._counters.items()) for k, v in s.items()},
                "histograms_ms": {
                    label(n, k): h.summary() for n, s in sorted(self._histograms.items()) for k, h in s.items()
                },
            }
