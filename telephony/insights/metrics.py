"""The insights worker's Prometheus metrics, in the app's registry (telephony/metrics.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

# A request's result: ok | rate_limited (429) | server_error (5xx) | client_error (other 4xx)
# | timeout | error (transport, or an answer we could not read).
RESULTS = ("ok", "rate_limited", "server_error", "client_error", "timeout", "error")


def result_label(status: int | None, timed_out: bool = False) -> str:
    if status is None:
        return "timeout" if timed_out else "error"
    if status == 200:
        return "ok"
    if status == 429:
        return "rate_limited"
    return "server_error" if status >= 500 else "client_error"


class _QueueDepth(Collector):
    def __init__(self, depth: Callable[[], int]) -> None:
        self._depth = depth

    def collect(self) -> Iterable[Metric]:
        yield GaugeMetricFamily(
            "telephony_insights_queue_depth",
            "Ended calls waiting in this instance's insights queue (pending rows beyond it "
            "are picked up by the sweep).",
            value=self._depth(),
        )


class InsightsMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry = registry or CollectorRegistry()
        self.requests = Counter(
            "telephony_insights_requests",
            "Deepgram /v1/read requests, by result.",
            ["result"],
            registry=registry,
        )
        self.latency = Histogram(
            "telephony_insights_request_seconds",
            "Time from sending a /v1/read request to its answer (or failure).",
            buckets=(0.25, 0.5, 1, 2, 5, 10, 20, 30, 60),
            registry=registry,
        )
        self.calls = Counter(
            "telephony_insights_calls",
            "Calls the insights worker finished, by status (done, failed, off).",
            ["status"],
            registry=registry,
        )
        for result in RESULTS:
            self.requests.labels(result)

    def watch_queue(self, depth: Callable[[], int]) -> None:
        self.registry.register(_QueueDepth(depth))
