"""Prometheus metrics: names, types, values and the exposition format of /metrics."""

from __future__ import annotations

import asyncio
import gc
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import prometheus_client
import pytest
from prometheus_client.parser import text_string_to_metric_families

from telephony.demo import run_offline_call
from telephony.metrics import LOOP_LAG_INTERVAL_S, MAX_END_REASONS, Metrics
from telephony.session.registry import CallRegistry
from telephony.sim.deepgram_server import Script, ScriptedTurn
from telephony.store.health import StoreHealth
from telephony.transcript import Transcript
from tests.conftest import NUMBERS_YAML, RunningApp

pytestmark = pytest.mark.clock(4)  # timers run 4x real time (tests/fast_clock.py)

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
    health: StoreHealth = field(default_factory=StoreHealth)


@dataclass
class LiveFakeCall:
    """What the calls collector reads of a live call: its engine's counts (none yet)."""

    engine: None = None


def families(text: str) -> dict[str, prometheus_client.Metric]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_exposition_names_types_and_values() -> None:
    store = FakeStore(queue_depth=7, written=120, dropped=3, retries=5, failed=1)
    calls = CallRegistry()
    calls.live.update({"CA1": LiveFakeCall(), "CA2": LiveFakeCall()})  # type: ignore[dict-item]
    body, content_type = Metrics.for_app(store, calls).exposition()

    assert content_type == prometheus_client.exposition.CONTENT_TYPE_PLAIN_0_0_4
    assert content_type.startswith("text/plain; version=0.0.4")
    text = body.decode()
    assert "# TYPE telephony_store_rows_dropped_total counter" in text
    parsed = families(text)
    assert {name for name in parsed if not name.endswith("_created")} == {
        "telephony_store_queue_depth",
        "telephony_store_failing",
        "telephony_store_database_replaced",
        "telephony_store_errors",
        "telephony_calls_active",
        *STORE_COUNTERS,
        "telephony_deepgram_keepalives",
        "telephony_calls_ended",
        "telephony_turn_first_audio_seconds",
        "telephony_turn_reply_played_seconds",
        "telephony_deepgram_reconnects",
        "telephony_barge_ins",
        "telephony_backchannels",
        "telephony_barge_in_decision_seconds",
        "telephony_caller_audio_dropped_seconds",
        "telephony_llm_fallbacks",
        "telephony_gc_pause_seconds",
        "telephony_event_loop_lag_seconds",
        "telephony_audit_rows_lost",
        "telephony_logins_refused",
    }
    assert parsed["telephony_turn_first_audio_seconds"].type == "histogram"
    reconnects = parsed["telephony_deepgram_reconnects"]
    assert {s.labels["endpoint"] for s in reconnects.samples if s.name.endswith("_total")} == {
        "flux",
        "speak",
        "agent",
        "listen",
    }  # every endpoint shows 0 before its first reconnect
    fallbacks = parsed["telephony_llm_fallbacks"]
    assert {s.labels["reason"] for s in fallbacks.samples if s.name.endswith("_total")} == {
        "timeout",
        "rate-limited",
        "server-error",
        "client-error",
        "connection",
        "stream",
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
    calls.live["CA1"] = LiveFakeCall()  # type: ignore[assignment]
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
    store = running_app.app.state.services.transcripts
    assert parsed["telephony_calls_active"].samples[0].value == 0
    assert parsed["telephony_store_queue_depth"].samples[0].value == store.queue_depth
    assert parsed["telephony_store_rows_written"].samples[0].value == store.written


class FakeCall:
    """What Metrics.call_ended reads of a call."""

    def __init__(self, reason: str) -> None:
        self.summary = SimpleNamespace(end_reason=reason)
        self.engine = None


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def test_turn_latency_histograms_from_the_transcript() -> None:
    metrics = Metrics()
    transcript = Transcript()
    metrics.watch_call(transcript, "flux")
    greeting = transcript.open_turn("bot", "Hi.", 0, 500)
    greeting.meta["first_audio_played_ms"] = 100  # no eot_ms: not an answer, not counted
    transcript.close_turn(greeting)
    transcript.add_turn("caller", "hours?", 1000, 1800)
    reply = transcript.open_turn("bot", "Nine to five.", 2100, 3000)
    reply.meta.update(eot_ms=1800, first_audio_played_ms=2150, finished_playing_ms=4300)
    transcript.close_turn(reply)
    cut = transcript.open_turn("bot", "Long answer.", 5000, 6000, interrupted=True)
    cut.meta.update(eot_ms=4500, first_audio_played_ms=5400)  # barged in: never finished
    transcript.close_turn(cut)

    name = "telephony_turn_first_audio_seconds"
    assert sample(metrics, name + "_count", mode="flux") == 2
    assert sample(metrics, name + "_sum", mode="flux") == pytest.approx(0.35 + 0.9)
    assert sample(metrics, name + "_bucket", mode="flux", le="0.4") == 1
    assert sample(metrics, name + "_bucket", mode="flux", le="1.0") == 2
    played = "telephony_turn_reply_played_seconds"
    assert sample(metrics, played + "_count", mode="flux") == 1
    assert sample(metrics, played + "_sum", mode="flux") == pytest.approx(2.5)
    assert sample(metrics, name + "_count", mode="agent") == 0


def test_barge_ins_reconnects_and_dropped_audio_from_events() -> None:
    metrics = Metrics()
    transcript = Transcript()
    metrics.watch_call(transcript, "flux")
    transcript.event(0, "flux-connection", reason="start")  # the first socket: no reconnect
    transcript.event(0, "speak-connection", reason="start")  # every link's first socket alike
    transcript.event(2000, "barge-in")
    transcript.event(3000, "flux-connection", reason="socket closed", dropped_ms=0)
    transcript.event(9000, "flux-connection", reason="socket closed", dropped_ms=400)
    transcript.event(9500, "flux-connection", reason="socket closed", dropped_ms=1000)
    transcript.event(9600, "speak-connection", reason="timeout")
    transcript.event(9700, "dtmf", digit="1")  # not counted anywhere
    transcript.event(9800, "barge-in", decided_by="words", decided_after_ms=250)  # smart
    transcript.add_turn("caller", "mm-hmm", 9900, 10_100, meta={"backchannel": True})
    transcript.add_turn("caller", "what?", 10_200, 10_400, meta={"trigger": "model"})

    assert sample(metrics, "telephony_barge_ins_total") == 2
    assert sample(metrics, "telephony_barge_in_decision_seconds_count") == 1
    assert sample(metrics, "telephony_barge_in_decision_seconds_sum") == pytest.approx(0.25)
    assert sample(metrics, "telephony_backchannels_total") == 1
    reconnects = "telephony_deepgram_reconnects_total"
    assert sample(metrics, reconnects, endpoint="flux") == 3
    assert sample(metrics, reconnects, endpoint="speak") == 1
    assert sample(metrics, reconnects, endpoint="agent") == 0
    # dropped_ms is a running total per socket: 400 then 1000 is 1 s dropped, not 1.4 s.
    assert sample(metrics, "telephony_caller_audio_dropped_seconds_total") == pytest.approx(1.0)


def test_calls_ended_by_reason_with_bounded_labels() -> None:
    metrics = Metrics()
    metrics.call_ended(FakeCall("stop"))
    metrics.call_ended(FakeCall("stop"))
    metrics.call_ended(FakeCall("Flux failed: 3 reconnects in 10 s"))
    for i in range(MAX_END_REASONS + 5):
        metrics.call_ended(FakeCall(f"odd reason {i}"))
    ended = "telephony_calls_ended_total"
    assert sample(metrics, ended, reason="stop") == 2
    assert sample(metrics, ended, reason="flux failed") == 1  # the detail after ':' is dropped
    labels = {
        s.labels["reason"] for f in metrics.registry.collect() for s in f.samples if s.name == ended
    }
    assert len(labels) == MAX_END_REASONS + 1 and "other" in labels
    assert sample(metrics, ended, reason="other") == 7  # 2 + 50 + 5 distinct: 7 overflow


async def test_a_call_with_a_barge_in_shows_in_the_metrics(tmp_path: Path) -> None:
    numbers = tmp_path / "numbers.yaml"
    numbers.write_text(NUMBERS_YAML)
    result = await run_offline_call(
        number="+15550001000",
        script=Script(
            turns=[
                # The greeting (~0.6 s of audio) is well over before the caller speaks,
                # on a stalled host too: the one barge-in is the second turn's.
                ScriptedTurn(start_ms=1500, end_ms=2300, text="What are your hours?"),
                ScriptedTurn(start_ms=3100, end_ms=3700, text="Sorry, bye."),
            ]
        ),
        config_path=numbers,
        deepgram_options={"speak_ms_per_char": 30},
        max_call_ms=8000,
    )
    parsed = {s.name: s for f in families(result.metrics).values() for s in f.samples}
    turns = result.summary.transcript.turns
    answered = [t for t in turns if {"eot_ms", "first_audio_played_ms"} <= t.meta.keys()]
    assert answered  # a reply cut off before its first audio played has no first-audio time
    assert parsed["telephony_turn_first_audio_seconds_count"].value == len(answered)
    assert parsed["telephony_barge_ins_total"].value == 1
    ended = [s for f in families(result.metrics).values() for s in f.samples]
    # Labelled by outcome (telephony/outcome.py): the bot said goodbye and hung up.
    assert any(
        s.name == "telephony_calls_ended_total"
        and s.labels == {"reason": "bot-hangup"}
        and s.value == 1
        for s in ended
    )
    assert parsed["telephony_calls_active"].value == 0


def test_garbage_collections_are_timed_by_generation_until_unwatched() -> None:
    metrics = Metrics.for_app(FakeStore(), CallRegistry())

    def count(generation: int) -> float:
        value = metrics.registry.get_sample_value(
            "telephony_gc_pause_seconds_count", {"generation": str(generation)}
        )
        return value or 0.0

    def total(generation: int) -> float:
        value = metrics.registry.get_sample_value(
            "telephony_gc_pause_seconds_sum", {"generation": str(generation)}
        )
        return value or 0.0

    unwatch = metrics.watch_gc()
    try:
        gc.collect(1)
        gc.collect(2)
        assert count(1) >= 1 and count(2) >= 1
        assert total(2) > 0  # a full collection takes measurable time
    finally:
        unwatch()
    before = count(2)
    gc.collect(2)
    assert count(2) == before


@pytest.mark.clock(1)
async def test_loop_lag_shows_a_blocked_loop_and_stops_when_told() -> None:
    metrics = Metrics()
    stop = metrics.watch_loop()

    def lag(suffix: str, **labels: str) -> float:
        name = f"telephony_event_loop_lag_seconds_{suffix}"
        return metrics.registry.get_sample_value(name, labels) or 0.0

    await asyncio.sleep(LOOP_LAG_INTERVAL_S * 1.5)  # one tick, on time
    assert lag("count") == 1 and lag("bucket", le="0.02") == 1
    time.sleep(LOOP_LAG_INTERVAL_S * 1.5)  # noqa: ASYNC251 (the point: the loop blocked)
    await asyncio.sleep(0.01)
    assert lag("count") == 2
    assert lag("bucket", le="0.02") == 1  # the late tick waited for the block: > 20 ms
    stop()
    await asyncio.sleep(LOOP_LAG_INTERVAL_S * 2.5)
    assert lag("count") == 2
