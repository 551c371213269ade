"""Prometheus metrics: the one home for everything the service exports on ``GET /metrics``.

Each app owns a ``Metrics`` with its own ``CollectorRegistry`` (never the process-global
default), so several apps in one process (tests, the offline demo) never collide.

Two kinds of metric live here:

- **Read at scrape time** from live objects by a custom collector (the transcript store's
  counters and queue depth, the number of live calls). The objects already keep these numbers,
  so the call path pays nothing: nothing is incremented twice and nothing runs per frame.
- **Recorded as they happen** (for instance per-turn latency): add the instrument as an
  attribute of ``Metrics`` built with ``registry=self.registry``, and have the session code call
  it. Keep names prefixed ``telephony_`` and times in seconds, as Prometheus expects.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sized
from typing import Protocol

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

__all__ = ["CallsCollector", "LiveCalls", "Metrics", "StoreCollector", "StoreStats"]


class StoreStats(Protocol):
    """What the store collector reads (``telephony.store.transcripts.TranscriptStore``)."""

    @property
    def queue_depth(self) -> int: ...

    written: int
    dropped: int
    retries: int
    failed: int


class LiveCalls(Protocol):
    """What the calls collector reads (``telephony.session.registry.CallRegistry``)."""

    @property
    def live(self) -> Sized: ...


# (exposed name, TranscriptStore attribute, help). Counters: they only grow while the store
# lives (a restart resets them, which Prometheus' rate() handles).
STORE_COUNTERS = (
    (
        "telephony_store_rows_written_total",
        "written",
        "Transcript rows committed to the database.",
    ),
    (
        "telephony_store_rows_dropped_total",
        "dropped",
        "Transcript rows lost: refused because the write queue was full, or still unwritten "
        "at shutdown.",
    ),
    (
        "telephony_store_write_retries_total",
        "retries",
        "Failed transcript write attempts that were retried (the database was unavailable).",
    ),
    (
        "telephony_store_rows_rejected_total",
        "failed",
        "Transcript rows the database rejected as invalid (logged, not retried).",
    ),
)


class StoreCollector(Collector):
    """The transcript store's health, read from the live store object at every scrape."""

    def __init__(self, store: StoreStats) -> None:
        self.store = store

    def describe(self) -> Iterable[Metric]:
        # Names and types only, so registering never scrapes.
        return self._families(None)

    def collect(self) -> Iterable[Metric]:
        return self._families(self.store)

    @staticmethod
    def _families(store: StoreStats | None) -> Iterator[Metric]:
        depth = GaugeMetricFamily(
            "telephony_store_queue_depth",
            "Transcript rows waiting to be written (queued plus buffered in the writer).",
        )
        if store is not None:
            depth.add_metric([], store.queue_depth)
        yield depth
        for name, attribute, doc in STORE_COUNTERS:
            counter = CounterMetricFamily(name, doc)  # the sample is `name` (ends in _total)
            if store is not None:
                counter.add_metric([], getattr(store, attribute))
            yield counter


class CallsCollector(Collector):
    """Live calls on this instance, from the app's ``CallRegistry`` (its ``live`` dict)."""

    def __init__(self, calls: LiveCalls) -> None:
        self.calls = calls

    def describe(self) -> Iterable[Metric]:
        yield GaugeMetricFamily("telephony_calls_active", "Calls in progress on this instance.")

    def collect(self) -> Iterable[Metric]:
        yield GaugeMetricFamily(
            "telephony_calls_active",
            "Calls in progress on this instance.",
            value=len(self.calls.live),
        )


class Metrics:
    """Every metric of one app, in the app's own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()

    @classmethod
    def for_app(cls, store: StoreStats, calls: LiveCalls) -> Metrics:
        """Metrics reading ``store`` (a TranscriptStore) and ``calls`` (a CallRegistry)."""
        metrics = cls()
        metrics.watch_store(store)
        metrics.watch_calls(calls)
        return metrics

    def watch_store(self, store: StoreStats) -> None:
        self.registry.register(StoreCollector(store))

    def watch_calls(self, calls: LiveCalls) -> None:
        self.registry.register(CallsCollector(calls))

    def exposition(self, accept: str = "") -> tuple[bytes, str]:
        """The scrape body and its content type, negotiated from the Accept header: the
        Prometheus text format (0.0.4) by default, OpenMetrics when the scraper asks for it."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type
