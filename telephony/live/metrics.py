"""The live bus in /metrics, read from its counters at every scrape (nothing per event)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from telephony.live.bus import LiveBus

# (the counter's name, the BusCounts field, its help)
COUNTERS = (
    ("telephony_live_events_published", "published", "Live events this instance published."),
    (
        "telephony_live_events_heard",
        "heard",
        "Live events heard from other instances (PostgreSQL LISTEN/NOTIFY).",
    ),
)
# Lost events, by where: the send queue was full, a send to the database failed, or a
# browser stream fell behind (it is told to refetch).
DROPPED = (("queue", "dropped"), ("send", "send_failed"), ("subscriber", "subscriber_dropped"))


class LiveCollector(Collector):
    def __init__(self, bus: LiveBus) -> None:
        self.bus = bus

    def describe(self) -> Iterable[Metric]:
        return self._families(None)

    def collect(self) -> Iterable[Metric]:
        return self._families(self.bus)

    @staticmethod
    def _families(bus: LiveBus | None) -> Iterator[Metric]:
        for name, field, doc in COUNTERS:
            counter = CounterMetricFamily(name, doc)
            if bus is not None:
                counter.add_metric([], getattr(bus.counts, field))
            yield counter
        dropped = CounterMetricFamily(
            "telephony_live_events_dropped",
            "Live events lost: the send queue full, a failed send, or a browser stream behind "
            "(which refetches). Never on the audio path.",
            labels=["where"],
        )
        streams = GaugeMetricFamily(
            "telephony_live_streams", "Browser event streams (/live/events) open on this instance."
        )
        if bus is not None:
            for label, field in DROPPED:
                dropped.add_metric([label], getattr(bus.counts, field))
            streams.add_metric([], bus.subscribers)
        yield dropped
        yield streams
