"""Prometheus metrics: names, types, values and the exposition format of /metrics."""

from __future__ import annotations

from dataclasses import dataclass

import prometheus_client
from prometheus_client.parser import text_string_to_metric_families

from telephony.metrics import Metrics
from telephony.session.registry import CallRegistry
from tests.conftest import RunningApp

STORE_COUNTERS = {
    "telephony_store_rows_written": "written",
    "telephony_store_rows_dropped": "dropped",
    "telephony_store_write_retries": "retries",
    "telephony_store_rows_rejected": "failed",
}


@dataclass
class FakeStore:
    """The counters a TranscriptStore keeps."""

    queue_depth: int = 0
    written: int = 0
    dropped: int = 0
    retries: int = 0
    failed: int = 0


def families(text: str) -> dict[str, prometheus_client.Metric]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_exposition_names_types_and_values() -> None:
    store = FakeStore(queue_depth=7, written=120, dropped=3, retries=5, failed=1)
    calls = CallRegistry()
    calls.live.update({"CA1": object(), "CA2": object()})  # type: ignore[dict-item]
    body, content_type = Metrics.for_app(store, calls).exposition()

    assert content_type == prometheus_client.exposition.CONTENT_TYPE_PLAIN_0_0_4
    assert content_type.startswith("text/plain; version=0.0.4")
    text = body.decode()
    assert "# TYPE telephony_store_rows_dropped_total counter" in text
    parsed = families(text)
    assert set(parsed) == {
        "telephony_store_queue_depth",
        "telephony_calls_active",
        *STORE_COUNTERS,
    }
    for name, family in parsed.items():
        assert family.documentation, f"{name} has no HELP"
    depth = parsed["telephony_store_queue_depth"]
    assert depth.type == "gauge"
    assert [(s.name, s.labels, s.value) for s in depth.samples] == [
        ("telephony_store_queue_depth", {}, 7)
    ]
    active = parsed["telephony_calls_active"]
    assert active.type == "gauge"
    assert [(s.name, s.value) for s in active.samples] == [("telephony_calls_active", 2)]
    for name, attribute in STORE_COUNTERS.items():
        family = parsed[name]
        assert family.type == "counter"
        assert [(s.name, s.labels, s.value) for s in family.samples] == [
            (name + "_total", {}, getattr(store, attribute))
        ]


def test_values_are_read_live_at_scrape_time() -> None:
    store = FakeStore()
    calls = CallRegistry()
    metrics = Metrics.for_app(store, calls)

    def scrape() -> dict[str, float]:
        text = metrics.exposition()[0].decode()
        return {s.name: s.value for f in families(text).values() for s in f.samples}

    assert scrape()["telephony_store_rows_written_total"] == 0
    store.written, store.queue_depth = 42, 9
    calls.live["CA1"] = object()  # type: ignore[assignment]
    after = scrape()
    assert after["telephony_store_rows_written_total"] == 42
    assert after["telephony_store_queue_depth"] == 9
    assert after["telephony_calls_active"] == 1


def test_each_app_has_its_own_registry() -> None:
    # Two apps in one process: no "Duplicated timeseries" error, nothing in the global registry.
    first = Metrics.for_app(FakeStore(written=1), CallRegistry())
    second = Metrics.for_app(FakeStore(written=2), CallRegistry())
    assert first.registry is not second.registry
    assert first.registry.get_sample_value("telephony_store_rows_written_total") == 1
    assert second.registry.get_sample_value("telephony_store_rows_written_total") == 2
    assert prometheus_client.REGISTRY.get_sample_value("telephony_store_queue_depth") is None


def test_openmetrics_when_the_scraper_asks_for_it() -> None:
    metrics = Metrics.for_app(FakeStore(), CallRegistry())
    body, content_type = metrics.exposition("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert body.decode().endswith("# EOF\n")


async def test_metrics_endpoint(running_app: RunningApp) -> None:
    async with running_app.http() as http:
        response = await http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    parsed = families(response.text)
    store = running_app.app.state.transcripts
    assert parsed["telephony_calls_active"].samples[0].value == 0
    assert parsed["telephony_store_queue_depth"].samples[0].value == store.queue_depth
    assert parsed["telephony_store_rows_written"].samples[0].value == store.written
