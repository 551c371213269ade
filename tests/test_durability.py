"""Transcript durability: what survives a crash, and what happens while the database is down.

- A real `telephony serve` process is killed with SIGKILL in the middle of a call: every turn
  the caller had seen finish (its reply heard) more than the commit window before the kill is
  in the SQLite file, intact, and the file passes an integrity check after journal recovery.
- With the database unreachable mid-call the call goes on unaffected, the rows wait in the
  store's bounded buffer and are retried (visible on /metrics), and all of them arrive once the
  database is back. When the buffer overflows the loss is counted and logged, never silent.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sqlite3
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.ext.asyncio import create_async_engine

from telephony.sim.deepgram.tts import tts_text
from telephony.sim.deepgram_server import FakeDeepgram, Script, ScriptedTurn
from telephony.sim.twilio_caller import CallResult, FakeTwilioCaller, silence
from telephony.sim.twilio_rest import FakeTwilioRest
from telephony.transcript import Event
from tests.conftest import AUTH_TOKEN, DEEPGRAM_KEY, RunningApp, finished
from tests.serve_process import (
    Server,
    capture_call_results,
    eventually,
    scripted_yaml,
    serve_process,
)

MS_PER_CHAR = 30  # fake Aura: 30 ms of speech per character keeps the call short
COMMIT_WINDOW_S = 1.0  # the store's promise: a finished turn is committed within ~1 s
MARGIN_S = 0.5  # slack on top of the promise, for a loaded test machine

# --- helpers ------------------------------------------------------------------------------------


@pytest.fixture
def live_results(monkeypatch: pytest.MonkeyPatch) -> list[CallResult]:
    """The fake caller's results, readable while their call is still going."""
    return capture_call_results(monkeypatch)


def scrape(text: str) -> dict[str, float]:
    """Prometheus text exposition -> {sample name: value} (unlabelled samples only)."""
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if not sample.labels
    }


async def metrics(app: RunningApp) -> dict[str, float]:
    async with app.http() as http:
        response = await http.get("/metrics")
    assert response.status_code == 200
    return scrape(response.text)


# --- 1. SIGKILL mid-call ------------------------------------------------------------------------

CRASH_YAML = scripted_yaml({"one": "Reply one.", "two": "Reply two.", "three": "Reply three."})

# Caller turns on the caller's audio clock. Each finished exchange adds two transcript turns
# (caller, then the bot's reply); the greeting is turn 0. The last turn is long: the process is
# killed while the caller is still saying it.
CRASH_TURNS = [
    ScriptedTurn(start_ms=800, end_ms=1200, text="turn one"),
    ScriptedTurn(start_ms=2000, end_ms=2400, text="turn two"),
    ScriptedTurn(start_ms=3200, end_ms=3600, text="turn three"),
    ScriptedTurn(start_ms=5600, end_ms=9000, text="turn four is a long one"),
]
REPLIES = ["Hi.", "Reply one.", "Reply two.", "Reply three."]
# What the transcript holds, by idx: bot greeting, then (caller, bot) per exchange.
EXPECTED_TURNS = [("bot", REPLIES[0])] + [
    pair
    for turn, reply in zip(CRASH_TURNS, REPLIES[1:], strict=False)
    for pair in (("caller", turn.text), ("bot", reply))
]
KILL_AFTER_COMMITTED = 5  # greeting + two exchanges in the file before we pull the plug
KILL_DURING = CRASH_TURNS[3]


def read_turns(db: Path) -> list[tuple[int, str, str, str | None]] | None:
    """The committed turns, read-only (a shared lock for the read, never a write)."""
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    except sqlite3.OperationalError:
        return None
    try:
        rows = conn.execute("SELECT idx, role, text, heard FROM turns ORDER BY idx").fetchall()
    except sqlite3.OperationalError:  # the schema is not there yet
        return None
    finally:
        conn.close()
    return rows


@dataclass
class Observed:
    """What the caller saw, with the monotonic time the test first saw it."""

    reply_heard_at: dict[int, float] = field(default_factory=dict)  # reply number -> time

    def update(self, result: CallResult) -> None:
        now = time.monotonic()
        for mark in result.marks:
            # Marks are r<reply>:s<segment>. Every reply here is one sentence (one segment),
            # so its mark's echo means the whole reply was heard.
            number, _, segment = mark.name.removeprefix("r").partition(":s")
            assert segment == "0", f"a reply of several segments: {mark.name}"
            if not mark.cleared:
                self.reply_heard_at.setdefault(int(number), now)

    def finished_turns_before(self, t: float) -> int:
        """How many transcript turns had surely finished at time t: reply k heard means turns
        0..2k are done (the greeting, and every caller turn and reply up to the k-th)."""
        heard = [k for k, at in self.reply_heard_at.items() if at <= t]
        return 2 * max(heard) + 1 if heard else 0


@pytest.fixture
async def crash_fakes() -> AsyncIterator[tuple[FakeDeepgram, FakeTwilioRest]]:
    script = Script(turns=CRASH_TURNS)
    async with (
        FakeDeepgram(api_key=DEEPGRAM_KEY, script=script, speak_ms_per_char=MS_PER_CHAR) as dg,
        FakeTwilioRest(auth_token=AUTH_TOKEN) as rest,
    ):
        yield dg, rest


@pytest.fixture
async def server(
    tmp_path: Path, crash_fakes: tuple[FakeDeepgram, FakeTwilioRest]
) -> AsyncIterator[Server]:
    """`telephony serve` as a real subprocess, pointed at the in-process fakes."""
    deepgram, rest = crash_fakes
    async with serve_process(tmp_path, CRASH_YAML, deepgram, rest) as running:
        yield running


async def test_sigkill_mid_call_loses_at_most_the_turn_in_progress(
    server: Server, live_results: list[CallResult]
) -> None:
    caller = FakeTwilioCaller(server.url, auth_token=AUTH_TOKEN)
    dial = asyncio.create_task(
        caller.dial("+15550001000", audio=silence(15_000), tail_ms=None, max_call_ms=15_000)
    )
    observed = Observed()
    try:
        # The file, read from outside, gets the finished turns while the call is live...
        async def committed() -> bool:
            assert not dial.done(), f"call ended early:\n{server.output()}"
            if live_results:
                observed.update(live_results[0])
            rows = await asyncio.to_thread(read_turns, server.db)
            return rows is not None and len(rows) >= KILL_AFTER_COMMITTED

        await eventually(committed, within=30, what="turns committed during the call")

        # ...then wait until the caller is part-way through a later turn, and pull the plug.
        result = live_results[0]

        async def mid_turn() -> bool:
            assert not dial.done(), f"call ended early:\n{server.output()}"
            observed.update(result)
            return result.sent_frames * 20 >= KILL_DURING.start_ms + 200

        await eventually(mid_turn, within=30, what="the caller to start its last turn")
        observed.update(result)
        caller_ms_at_kill = result.sent_frames * 20
        os.kill(server.proc.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        assert await asyncio.wait_for(server.proc.wait(), 10) == -signal.SIGKILL
        result = await asyncio.wait_for(dial, 10)  # the line drops with the server
    finally:
        if not dial.done():
            dial.cancel()
    assert result.closed_by == "server"
    assert caller_ms_at_kill < KILL_DURING.end_ms, "the last turn had finished: kill came late"

    # What must have survived: every turn the caller saw finish a commit window before the
    # kill. The ordering of the waits above makes this at least greeting + two exchanges.
    must_survive = observed.finished_turns_before(killed_at - COMMIT_WINDOW_S - MARGIN_S)
    assert must_survive >= KILL_AFTER_COMMITTED, observed

    # A rollback journal, no WAL and so no mapped -shm file (telephony/store/schema.py): a
    # transaction cut by the kill is rolled back from the journal at the next open.
    assert not server.db.with_name(server.db.name + "-shm").exists()
    conn = sqlite3.connect(server.db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        call = conn.execute("SELECT sid, profile, mode, ended_at FROM calls").fetchall()
        assert call == [(result.call_sid, "support", "flux", None)]  # it never ended
        turns = conn.execute(
            "SELECT idx, role, text, heard, interrupted FROM turns WHERE call_sid = ? ORDER BY 1",
            (result.call_sid,),
        ).fetchall()
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    finally:
        conn.close()
    conn = sqlite3.connect(server.db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        again = conn.execute(
            "SELECT idx, role, text, heard, interrupted FROM turns ORDER BY idx"
        ).fetchall()
    finally:
        conn.close()
    assert again == turns

    # Committed turns are a gap-free prefix of the finished conversation, each exactly as
    # spoken and heard: nothing half-written, nothing invented (the caller's last turn was
    # still being spoken, so it is not in EXPECTED_TURNS), and nothing lost but what finished
    # within the commit window before the kill.
    stored = [(idx, role, text) for idx, role, text, _, _ in turns]
    conversation = [(i, role, text) for i, (role, text) in enumerate(EXPECTED_TURNS)]
    assert stored == conversation[: len(stored)], stored
    assert len(stored) >= must_survive, f"lost finished turns: {stored}"
    for _, role, text, heard, interrupted in turns:
        if role == "bot":
            assert heard == text and not interrupted


# --- 2. the database goes away mid-call -------------------------------------------------------


class Outage:
    """Takes the running app's transcript database away and brings it back, through the
    store's public seam (`engine`, re-read by the writer on every attempt)."""

    def __init__(self, app: RunningApp, tmp_path: Path) -> None:
        self.store = app.app.state.services.transcripts
        self.good = self.store.engine
        # A database that cannot be opened: its directory does not exist.
        self.dead = create_async_engine(f"sqlite+aiosqlite:///{tmp_path}/gone/away.db")
        self.store.min_backoff, self.store.max_backoff = 0.05, 0.2  # the test is short

    def down(self) -> None:
        self.store.engine = self.dead

    def up(self) -> None:
        self.store.engine = self.good


@pytest.fixture
async def outage(running_app: RunningApp, tmp_path: Path) -> AsyncIterator[Outage]:
    outage = Outage(running_app, tmp_path)
    try:
        yield outage
    finally:
        outage.up()  # even after a failure: the app's shutdown flushes to the real database
        await outage.dead.dispose()


async def test_database_down_mid_call_rows_retried_and_nothing_lost(
    running_app: RunningApp,
    fake_deepgram: FakeDeepgram,
    fake_rest: FakeTwilioRest,
    outage: Outage,
) -> None:
    store = running_app.app.state.services.transcripts
    fake_deepgram.set_script(
        None,
        Script(
            turns=[
                ScriptedTurn(start_ms=1800, end_ms=2400, text="What are your hours?"),
                ScriptedTurn(start_ms=5000, end_ms=5400, text="Okay bye."),
            ]
        ),
    )
    hangup = asyncio.Event()

    async def on_rest(call_sid: str, form: dict[str, str]) -> None:
        hangup.set()  # Twilio ends the media stream when the call is hung up

    fake_rest.on_request = on_rest
    caller = FakeTwilioCaller(running_app.url, auth_token=AUTH_TOKEN)
    sid = "CAdbdown"
    dial = asyncio.create_task(
        caller.dial(
            "+15550001000",
            call_sid=sid,
            audio=silence(15_000),
            tail_ms=None,
            hangup=hangup,
            max_call_ms=15_000,
        )
    )
    try:
        # The database goes away as soon as the call is live (the greeting is still playing).
        async def live() -> bool:
            return sid in running_app.app.state.services.registry.live

        await eventually(live, within=10, what="the call to start")
        outage.down()

        async def outage_visible() -> bool:
            scraped = await metrics(running_app)
            return scraped["telephony_store_write_retries_total"] > 0 and (
                scraped["telephony_store_queue_depth"] > 0
            )

        await eventually(outage_visible, within=10, what="the outage on /metrics")
        written_before = store.written  # a write already under way has finished by now
        result = await asyncio.wait_for(dial, 30)
    finally:
        if not dial.done():
            dial.cancel()
    summary = await finished(running_app, sid)

    # The call itself was unaffected: both replies heard, the hang-up made after the goodbye.
    assert summary.end_reason == "bot-hangup"
    heard = tts_text(result.heard, 60)  # the conftest FakeDeepgram speaks 60 ms per char
    assert "Sorry, could you say that again?" in heard and heard.endswith("Goodbye!")
    assert [r.form for r in fake_rest.requests] == [{"Status": "completed"}]

    # Every row of the rest of the call is waiting, retried, not dropped and not written.
    turns = summary.transcript.turns
    assert [t.role for t in turns] == ["bot", "caller", "bot", "caller", "bot"]
    scraped = await metrics(running_app)
    assert scraped["telephony_store_queue_depth"] >= len(turns) + 1  # + call_ended
    assert scraped["telephony_store_write_retries_total"] > 0
    assert scraped["telephony_store_rows_dropped_total"] == 0
    assert scraped["telephony_store_rows_written_total"] == written_before
    assert scraped["telephony_calls_active"] == 0
    async with outage.good.connect() as conn:  # the real database has none of it yet
        stored_turns = (
            await conn.exec_driver_sql("SELECT count(*) FROM turns WHERE call_sid = ?", (sid,))
        ).scalar_one()
    assert stored_turns == 0

    # The database comes back: the buffer drains and everything arrives.
    outage.up()

    async def drained() -> bool:
        return (await metrics(running_app))["telephony_store_queue_depth"] == 0

    await eventually(drained, within=15, what="the queue to drain")
    scraped = await metrics(running_app)
    assert scraped["telephony_store_rows_dropped_total"] == 0
    assert scraped["telephony_store_rows_written_total"] == store.written > written_before
    stored = await store.get_call(sid)
    assert stored is not None
    assert stored["ended_at"] is not None and stored["end_reason"] == "bot-hangup"
    assert [(t["idx"], t["role"], t["text"], t["heard"]) for t in stored["turns"]] == [
        (t.index, t.role, t.text, t.heard) for t in turns
    ]
    assert sorted(e["kind"] for e in stored["events"]) == sorted(
        e.kind for e in summary.transcript.events
    )


async def test_queue_overflow_is_counted_and_logged(
    running_app: RunningApp, outage: Outage, caplog: pytest.LogCaptureFixture
) -> None:
    store = running_app.app.state.services.transcripts
    outage.down()  # the writer can drain nothing: the bounded queue fills up
    sid = "CAflood"
    extra = 3
    accepted = 0
    with caplog.at_level(logging.ERROR, logger="telephony.store.transcripts"):
        # The call path's own entry point, as fast as it can go (it never blocks or waits).
        while store.dropped < extra and accepted < 1_000_000:
            store.event(sid, Event(accepted, "dtmf", {"digit": "1"}))
            accepted += 1
        accepted -= extra
    assert store.dropped == extra, "a full queue must count what it refuses"
    assert any(
        r.levelno == logging.ERROR and "queue full" in r.getMessage() for r in caplog.records
    )
    scraped = await metrics(running_app)
    assert scraped["telephony_store_rows_dropped_total"] == extra
    assert scraped["telephony_store_queue_depth"] == accepted

    outage.up()

    async def drained() -> bool:
        return (await metrics(running_app))["telephony_store_queue_depth"] == 0

    await eventually(drained, within=30, what="the queue to drain")
    stored = await store.get_call(sid)
    assert stored is not None and len(stored["events"]) == accepted  # the rest all arrived
    assert (await metrics(running_app))["telephony_store_rows_dropped_total"] == extra
