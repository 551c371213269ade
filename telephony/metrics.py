"""Prometheus metrics: the one home for everything the service exports on ``GET /metrics``.

Each app owns a ``Metrics`` with its own ``CollectorRegistry`` (never the process-global
default), so several apps in one process (tests, the offline demo) never collide.

Two kinds of metric live here:

- **Read at scrape time** from live objects by a custom collector (the transcript store's
  counters and queue depth, the number of live calls). The objects already keep these numbers,
  so the call path pays nothing: nothing is incremented twice and nothing runs per frame.
- **Recorded as they happen**, at event time, never per audio frame: each call's transcript
  gets a ``CallMetrics`` listener (``Metrics.watch_call``) that turns the events the call
  records anyway (barge-ins, Deepgram reconnects with their dropped audio) and its closed bot
  turns (latencies on the call clock, from Twilio's mark echoes) into counters and histograms;
  ``Metrics.call_ended`` counts the end reason when the call is over. Keep names prefixed
  ``telephony_`` and times in seconds, as Prometheus expects.

Per-turn latency is what the caller perceived, on the call's own clock (Twilio's
``media.timestamp``): from the caller's end of speech to the moment the first bot audio began to
play (the first segment's mark echo minus its length), and to the moment the whole reply had
played (its last mark echo). The same figures are kept on each bot turn's ``meta``
(``eot_ms``, ``first_audio_played_ms``, ``finished_playing_ms``), so the store and the staff UI
see them too.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from telephony.responder.fallback import SWITCH_REASONS
from telephony.transcript import is_reconnect

__all__ = [
    "CallMetrics",
    "CallsCollector",
    "LiveCalls",
    "Metrics",
    "StoreCollector",
    "StoreStats",
    "reason_label",
]


class StoreStats(Protocol):
    """What the store collector reads (``telephony.store.transcripts.TranscriptStore``)."""

    @property
    def queue_depth(self) -> int: ...

    written: int
    dropped: int
    retries: int
    failed: int

    @property
    def health(self) -> StoreHealthStats: ...


class StoreHealthStats(Protocol):
    """The store's fault episodes (``telephony.store.health.StoreHealth``)."""

    @property
    def problem(self) -> str | None: ...

    replaced: bool
    errors: int


class EngineCounts(Protocol):
    """What the calls collector reads of an engine (``telephony.session.engine.Engine``)."""

    @property
    def keepalives_sent(self) -> int: ...


class LiveCall(Protocol):
    @property
    def engine(self) -> EngineCounts | None: ...


class LiveCalls(Protocol):
    """What the calls collector reads (``telephony.session.registry.CallRegistry``)."""

    @property
    def live(self) -> Mapping[str, LiveCall]: ...


def keepalives_of(call: LiveCall) -> int:
    """JSON KeepAlives the call's engine has sent to Deepgram (Voice Agent, Nova; Flux: none)."""
    engine = call.engine
    return engine.keepalives_sent if engine is not None else 0


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
        failing = GaugeMetricFamily(
            "telephony_store_failing",
            "1 while the transcript store is failing (writes or heartbeat failing, or its "
            "database file gone): the instance reports not ready; calls go on.",
        )
        replaced = GaugeMetricFamily(
            "telephony_store_database_replaced",
            "1 once the SQLite database file was deleted or replaced under the running "
            "process: restart it.",
        )
        errors = CounterMetricFamily(
            "telephony_store_errors",
            "Failed transcript store operations (batch writes, heartbeats, a replaced file).",
        )
        if store is not None:
            failing.add_metric([], int(store.health.problem is not None))
            replaced.add_metric([], int(store.health.replaced))
            errors.add_metric([], store.health.errors)
        yield from (failing, replaced, errors)
        for name, attribute, doc in STORE_COUNTERS:
            counter = CounterMetricFamily(name, doc)  # the sample is `name` (ends in _total)
            if store is not None:
                counter.add_metric([], getattr(store, attribute))
            yield counter


KEEPALIVES_HELP = (
    "JSON KeepAlive messages sent to Deepgram (Voice Agent and Nova, only while no audio flows; "
    "Flux is kept alive by WebSocket pings)."
)


class CallsCollector(Collector):
    """Live calls on this instance, from the app's ``CallRegistry`` (its ``live`` dict), and
    the KeepAlives their engines sent: the live calls' own counters plus those of calls that
    have ended (``Metrics.call_ended`` adds them up)."""

    def __init__(self, calls: LiveCalls, metrics: Metrics | None = None) -> None:
        self.calls = calls
        self.metrics = metrics

    def describe(self) -> Iterable[Metric]:
        yield GaugeMetricFamily("telephony_calls_active", "Calls in progress on this instance.")
        yield CounterMetricFamily("telephony_deepgram_keepalives", KEEPALIVES_HELP)

    def collect(self) -> Iterable[Metric]:
        live = self.calls.live
        yield GaugeMetricFamily(
            "telephony_calls_active", "Calls in progress on this instance.", value=len(live)
        )
        ended = self.metrics.keepalives_of_ended_calls if self.metrics is not None else 0
        total = ended + sum(keepalives_of(call) for call in list(live.values()))
        yield CounterMetricFamily("telephony_deepgram_keepalives", KEEPALIVES_HELP, value=total)


def reason_label(reason: str) -> str:
    """A call's end reason as a label: the part before any ':' (details vary per call)."""
    return reason.split(":", 1)[0].strip().lower()[:60] or "unknown"


# Seconds. Replies are LLM + TTS round trips (hundreds of ms to a few s); whole replies last
# seconds to tens of seconds.
FIRST_AUDIO_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0)
REPLY_PLAYED_BUCKETS = (0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 60.0)
# A pause past 5 ms shows in pacing jitter; past the playout lead (120 ms) callers could hear it.
# Smart barge-in: StartOfTurn -> the decision to clear (telephony/session/barge_in.py).
BARGE_IN_DECISION_BUCKETS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 2.0)
GC_PAUSE_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0)
# How late the loop runs a timer due every LOOP_LAG_INTERVAL_S. The loop's timers have 1 ms
# resolution (uvloop), so the first bucket is an idle loop.
LOOP_LAG_BUCKETS = (0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0)
LOOP_LAG_INTERVAL_S = 0.1
DEEPGRAM_ENDPOINTS = ("flux", "speak", "agent", "listen")
MAX_END_REASONS = 50  # distinct end-reason labels; further ones count as "other"
# transcript event kind -> the Deepgram endpoint that reconnected
# (every link's connections, the first one with reason "start": telephony/session/link.py)
RECONNECT_EVENTS = {f"{endpoint}-connection": endpoint for endpoint in DEEPGRAM_ENDPOINTS}


class CallMetrics:
    """One call's transcript listener: counts at event time, never per frame."""

    __slots__ = ("_dropped_ms", "_first_audio", "_metrics", "_reply_played")

    def __init__(self, metrics: Metrics, mode: str) -> None:
        self._metrics = metrics
        self._first_audio = metrics.turn_first_audio.labels(mode)
        self._reply_played = metrics.turn_reply_played.labels(mode)
        self._dropped_ms: dict[tuple[str, Any], int] = {}  # events report running totals

    def on_turn(self, turn: Any) -> None:
        if turn.role != "bot":
            if turn.meta and turn.meta.get("backchannel"):
                self._metrics.backchannels.inc()
            return
        meta = turn.meta
        eot = meta.get("eot_ms")
        if eot is None:  # a greeting or nudge: no caller turn to answer
            return
        first = meta.get("first_audio_played_ms")
        if first is not None:
            self._first_audio.observe(max(0, first - eot) / 1000)
        done = meta.get("finished_playing_ms")
        if done is not None:
            self._reply_played.observe(max(0, done - eot) / 1000)

    def on_event(self, event: Any) -> None:
        kind = event.kind
        if kind == "barge-in":
            self._metrics.barge_ins.inc()
            decided_after = event.data.get("decided_after_ms")
            if decided_after is not None:
                self._metrics.barge_in_decision.observe(decided_after / 1000)
            return
        if kind == "llm-fallback":
            self._metrics.llm_fallbacks.labels(event.data["reason"]).inc()
            return
        endpoint = RECONNECT_EVENTS.get(kind)
        if endpoint is None:
            return
        data = event.data
        if is_reconnect(data):
            self._metrics.deepgram_reconnects.labels(endpoint).inc()
        dropped = data.get("dropped_ms")
        if dropped:
            key = (kind, data.get("track"))
            new = dropped - self._dropped_ms.get(key, 0)
            self._dropped_ms[key] = dropped
            if new > 0:
                self._metrics.dropped_audio.inc(new / 1000)


# The labels of telephony_logins_refused (routes/login_limiter.py's Refusal, and "busy").
LOGIN_REFUSALS = ("account", "client", "global", "busy")


class Metrics:
    """Every metric of one app, in the app's own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry = registry or CollectorRegistry()
        self.calls_ended = Counter(
            "telephony_calls_ended",
            "Calls ended on this instance, by end reason (stop: the caller hung up).",
            ["reason"],
            registry=registry,
        )
        self.turn_first_audio = Histogram(
            "telephony_turn_first_audio_seconds",
            "Per bot turn, on the call clock: the caller's end of speech -> the first bot audio "
            "began to play (from Twilio's mark echo).",
            ["mode"],
            buckets=FIRST_AUDIO_BUCKETS,
            registry=registry,
        )
        self.turn_reply_played = Histogram(
            "telephony_turn_reply_played_seconds",
            "Per bot turn that played to the end, on the call clock: the caller's end of speech "
            "-> the reply finished playing (its last mark echo).",
            ["mode"],
            buckets=REPLY_PLAYED_BUCKETS,
            registry=registry,
        )
        self.deepgram_reconnects = Counter(
            "telephony_deepgram_reconnects",
            "Deepgram sockets replaced after a failure, by endpoint.",
            ["endpoint"],
            registry=registry,
        )
        for endpoint in DEEPGRAM_ENDPOINTS:
            self.deepgram_reconnects.labels(endpoint)
        self.barge_ins = Counter(
            "telephony_barge_ins",
            "Caller speech that interrupted the bot (Twilio clear sent).",
            registry=registry,
        )
        self.backchannels = Counter(
            "telephony_backchannels",
            "Caller backchannels over the bot (barge_in mode smart): it kept talking and did not "
            "answer them.",
            registry=registry,
        )
        self.barge_in_decision = Histogram(
            "telephony_barge_in_decision_seconds",
            "Smart barge-in: Flux's StartOfTurn -> the decision to clear the bot.",
            buckets=BARGE_IN_DECISION_BUCKETS,
            registry=registry,
        )
        self.llm_fallbacks = Counter(
            "telephony_llm_fallbacks",
            "Flux mode: turns an LLM backend failed before its first token, so the next backend "
            "of the profile's responder answered, by why it failed.",
            ["reason"],
            registry=registry,
        )
        for switch_reason in SWITCH_REASONS:
            self.llm_fallbacks.labels(switch_reason)
        self.dropped_audio = Counter(
            "telephony_caller_audio_dropped_seconds",
            "Caller audio dropped because a Deepgram socket was down longer than the reconnect "
            "buffer holds.",
            registry=registry,
        )
        self.gc_pauses = Histogram(
            "telephony_gc_pause_seconds",
            "Garbage collections, by generation: each stops the event loop, and every call's "
            "audio, for its duration.",
            ["generation"],
            buckets=GC_PAUSE_BUCKETS,
            registry=registry,
        )
        self.loop_lag = Histogram(
            "telephony_event_loop_lag_seconds",
            "How late the event loop ran a timer due every 100 ms: how long any call's audio "
            "or reply waited for the loop at that moment (a busy loop, a collection, a stall).",
            buckets=LOOP_LAG_BUCKETS,
            registry=registry,
        )
        self.audit_rows_lost = Counter(
            "telephony_audit_rows_lost",
            "Audit rows (logins, logouts) that could not be written after retries; each is "
            "logged at ERROR instead.",
            registry=registry,
        )
        self.logins_refused = Counter(
            "telephony_logins_refused",
            "Staff logins refused before the password was checked, by reason: account, client "
            "or global (attempt budgets), busy (password hashing queue full).",
            ["reason"],
            registry=registry,
        )
        for reason in LOGIN_REFUSALS:
            self.logins_refused.labels(reason)
        self.keepalives_of_ended_calls = 0
        self._reasons: set[str] = set()

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
        self.registry.register(CallsCollector(calls, self))

    def watch_gc(self) -> Callable[[], None]:
        """Time every garbage collection of this process until the returned function is
        called (the app's shutdown). A collection is a few hundred a minute, not per frame."""
        started = 0.0
        pauses = [self.gc_pauses.labels(str(generation)) for generation in range(3)]

        def on_gc(phase: str, info: dict[str, Any]) -> None:
            nonlocal started
            if phase == "start":
                started = time.perf_counter()
            else:
                pauses[info["generation"]].observe(time.perf_counter() - started)

        gc.callbacks.append(on_gc)
        return lambda: gc.callbacks.remove(on_gc)

    def watch_loop(self) -> Callable[[], None]:
        """Time how late the running loop fires a timer every LOOP_LAG_INTERVAL_S until the
        returned function is called: one timer chained on itself, no task."""
        loop = asyncio.get_running_loop()
        observe = self.loop_lag.observe
        handle: asyncio.TimerHandle | None = None

        def tick(due: float) -> None:
            nonlocal handle
            now = loop.time()
            observe(max(0.0, now - due))
            handle = loop.call_at(now + LOOP_LAG_INTERVAL_S, tick, now + LOOP_LAG_INTERVAL_S)

        start = loop.time() + LOOP_LAG_INTERVAL_S
        handle = loop.call_at(start, tick, start)
        return lambda: handle.cancel() if handle is not None else None

    def watch_call(self, transcript: Any, mode: str) -> CallMetrics:
        """Count one call's barge-ins, reconnects and turn latencies from its transcript."""
        listener = CallMetrics(self, mode)
        transcript.listeners.append(listener)
        return listener

    def call_ended(self, call: Any) -> None:
        """A call is over (after it left the registry's live calls): its end reason, and its
        KeepAlives move from the live sum to the ended calls' total."""
        label = reason_label(call.summary.end_reason)
        if label not in self._reasons:
            if len(self._reasons) >= MAX_END_REASONS:
                label = "other"
            else:
                self._reasons.add(label)
        self.calls_ended.labels(label).inc()
        self.keepalives_of_ended_calls += keepalives_of(call)

    def exposition(self, accept: str = "") -> tuple[bytes, str]:
        """The scrape body and its content type, negotiated from the Accept header: the
        Prometheus text format (0.0.4) by default, OpenMetrics when the scraper asks for it."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type
