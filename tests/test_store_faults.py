"""Storage faults never drop a call, and never go unnoticed (issue 21, finding 8).

Each fault hits the real app's database while a call is live; the call completes as if nothing
happened, and the operator sees it: `/readyz` answers 503 while the store is failing (a load
balancer sends new calls elsewhere), `/metrics` counts it, and one ERROR line is logged per
fault episode. Once the fault is gone the rows kept meanwhile are written and the instance is
ready again.

- The SQLite file locked by another process (writes time out), or made unwritable: rows kept
  and retried, none of what callers said in the log.
- The SQLite file deleted, or replaced, under the running process: detected by its inode, the
  store stops writing into the unlinked file and keeps the rows, which reach the file at the
  path when the store stops (the operator restores the file and restarts).
- PostgreSQL: every connection of the app terminated by the server mid-call: the pool
  reconnects and nothing is lost.

The SIGBUS of a truncated shared-memory file and a full disk are in tests/test_store_signals.py
(a real `telephony serve`: a crash must not take pytest down).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy import make_url
from sqlalchemy.exc import OperationalError

from telephony.session.summary import CallSummary
from telephony.sim.deepgram.tts import tts_text
from telephony.sim.deepgram_server import FakeDeepgram, Script, ScriptedTurn
from telephony.sim.twilio_caller import FakeTwilioCaller, silence
from telephony.sim.twilio_rest import FakeTwilioRest
from telephony.store.health import StoreHealth
from telephony.store.migrate import upgrade_blocking
from telephony.store.transcripts import TranscriptStore
from tests.conftest import AUTH_TOKEN, RunningApp, finished
from tests.pg_server import PgServer, fresh_database
from tests.serve_process import eventually
from tests.test_durability import metrics

pytestmark = pytest.mark.clock(4)  # timers run 4x real time (tests/fast_clock.py)

QUESTION = "What are your hours?"
CALLER = "+15550009876"
STORE_LOGGER = "telephony.store.transcripts"


def store_of(app: RunningApp) -> TranscriptStore:
    store: TranscriptStore = app.app.state.services.transcripts
    store.min_backoff, store.max_backoff = 0.05, 0.5  # the test is short
    store.heartbeat_s = 0.5  # the keeper's next sleep is this short (it re-reads it)
    return store


def db_path(app: RunningApp) -> Path:
    database = make_url(app.settings.database_url).database
    assert database is not None
    return Path(database)


async def readyz(app: RunningApp) -> tuple[int, dict[str, bool]]:
    async with app.http() as http:
        response = await http.get("/readyz")
    return response.status_code, response.json()


class Call:
    """One scripted call: greeting, a question (the fallback reply), "bye" (the bot hangs up)."""

    def __init__(self, app: RunningApp, fake_deepgram: FakeDeepgram, rest: FakeTwilioRest):
        self.app = app
        self.sid = f"CA{uuid.uuid4().hex[:16]}"
        fake_deepgram.set_script(
            None,
            Script(
                turns=[
                    ScriptedTurn(start_ms=1800, end_ms=2400, text=QUESTION),
                    # 4.4 s after the reply's end (~4.6 s): on the 4x clock a busy machine's
                    # delay looks 4x longer; 0.4 s, and in CI 1.4 s and once 2.4 s (the reply
                    # started ~2.8 s of call time late while the fault began), let "bye"
                    # talk over it.
                    ScriptedTurn(start_ms=9000, end_ms=9400, text="Okay bye."),
                ]
            ),
        )
        hangup = asyncio.Event()

        async def on_rest(call_sid: str, form: dict[str, str]) -> None:
            hangup.set()  # Twilio ends the media stream when the call is hung up

        rest.on_request = on_rest
        caller = FakeTwilioCaller(app.url, auth_token=AUTH_TOKEN, from_number=CALLER)
        self.dial = asyncio.create_task(
            caller.dial(
                "+15550001000",
                call_sid=self.sid,
                audio=silence(15_000),
                tail_ms=None,
                hangup=hangup,
                max_call_ms=15_000,
            )
        )

    async def live(self) -> None:
        async def live() -> bool:
            return self.sid in self.app.app.state.services.registry.live

        await eventually(live, within=10, what="the call to start")

    async def completed(self) -> CallSummary:
        """The call went on unaffected: both replies heard, hung up after the goodbye."""
        try:
            result = await asyncio.wait_for(self.dial, 30)
        finally:
            self.dial.cancel()
        summary = await finished(self.app, self.sid)
        assert summary.end_reason == "bot-hangup"
        heard = tts_text(result.heard, 60)  # the conftest FakeDeepgram speaks 60 ms per char
        assert "Sorry, could you say that again?" in heard and heard.endswith("Goodbye!")
        return summary


def errors_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == STORE_LOGGER and r.levelno >= logging.ERROR
    ]


@contextlib.contextmanager
def locked(db: Path) -> Iterator[None]:
    """Another process takes the database's write lock and keeps it: every write times out."""
    lock = sqlite3.connect(db, timeout=10, isolation_level=None, check_same_thread=False)
    try:
        lock.execute("BEGIN EXCLUSIVE")
        yield
    finally:
        lock.rollback()
        lock.close()


@contextlib.contextmanager
def unwritable(db: Path) -> Iterator[None]:
    """The file made immutable (tests run as root, whom permissions do not stop)."""
    if subprocess.run(["chattr", "+i", str(db)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not possible here")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(db)], check=True)


async def test_locked_database_mid_call(
    running_app: RunningApp,
    fake_deepgram: FakeDeepgram,
    fake_rest: FakeTwilioRest,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await fault_mid_call(running_app, fake_deepgram, fake_rest, caplog, locked, "locked")


async def test_unwritable_database_mid_call(
    running_app: RunningApp,
    fake_deepgram: FakeDeepgram,
    fake_rest: FakeTwilioRest,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await fault_mid_call(running_app, fake_deepgram, fake_rest, caplog, unwritable, "I/O error")


async def fault_mid_call(
    running_app: RunningApp,
    fake_deepgram: FakeDeepgram,
    fake_rest: FakeTwilioRest,
    caplog: pytest.LogCaptureFixture,
    fault: Callable[[Path], contextlib.AbstractContextManager[None]],
    error: str,
) -> None:
    """The fault starts once the call is live and lasts past its end; then it is lifted."""
    caplog.set_level(logging.DEBUG)
    store = store_of(running_app)
    call = Call(running_app, fake_deepgram, fake_rest)
    await call.live()
    assert await readyz(running_app) == (200, {"ready": True, "draining": False, "store_ok": True})
    held = fault(db_path(running_app))
    # Entered off the loop: taking the lock waits for the app's open transaction (the call's
    # claim, just made) to end, which needs the loop to run.
    await asyncio.to_thread(held.__enter__)
    try:

        async def not_ready() -> bool:
            return (await readyz(running_app))[0] == 503

        await eventually(not_ready, within=20, what="/readyz to answer 503")
        assert await readyz(running_app) == (
            503,
            {"ready": False, "draining": False, "store_ok": False},
        )
        scraped = await metrics(running_app)
        assert scraped["telephony_store_failing"] == 1
        assert scraped["telephony_store_errors_total"] >= 1
        summary = await call.completed()
        assert store.queue_depth > 0  # the call's rows wait in memory
    finally:
        held.__exit__(None, None, None)

    # The fault is gone: the rows kept are written, and the instance is ready again.
    async def recovered() -> bool:
        return (await readyz(running_app))[0] == 200 and store.queue_depth == 0

    await eventually(recovered, within=30, what="the store to recover")
    scraped = await metrics(running_app)
    assert scraped["telephony_store_failing"] == 0
    assert scraped["telephony_store_rows_dropped_total"] == 0
    stored = await store.get_call(call.sid)
    assert stored is not None and stored["end_reason"] == "bot-hangup"
    assert [t["text"] for t in stored["turns"]] == [t.text for t in summary.transcript.turns]

    # One ERROR for the whole episode (not one per failed write), none of the rows in it.
    assert len(errors_logged(caplog)) == 1, errors_logged(caplog)
    assert error in errors_logged(caplog)[0]
    assert any(
        r.name == STORE_LOGGER and r.levelno == logging.WARNING and "recovered" in r.getMessage()
        for r in caplog.records
    )
    for record in caplog.records:
        if record.levelno >= logging.INFO:
            text = record.getMessage()
            assert QUESTION not in text and CALLER not in text, text


@pytest.fixture
def fast_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """The database file is checked every 50 ms (before running_app builds its settings)."""
    monkeypatch.setenv("TELEPHONY_STORE_CHECK_S", "0.05")


@pytest.mark.parametrize("fault", ["deleted", "replaced"])
async def test_database_file_deleted_or_replaced_mid_call(
    fast_check: None,
    running_app: RunningApp,
    fake_deepgram: FakeDeepgram,
    fake_rest: FakeTwilioRest,
    caplog: pytest.LogCaptureFixture,
    fault: str,
) -> None:
    caplog.set_level(logging.INFO)
    store = store_of(running_app)
    db = db_path(running_app)
    call = Call(running_app, fake_deepgram, fake_rest)
    await call.live()

    async def greeting_written() -> bool:
        stored = await store.get_call(call.sid)
        return stored is not None and len(stored["turns"]) >= 1

    await eventually(greeting_written, within=10, what="the greeting in the database")
    if fault == "replaced":  # a copy (a restored backup, say) moved over it: a new inode
        copy = db.with_name("copy.db")
        with sqlite3.connect(db) as src, sqlite3.connect(copy) as dst:
            src.backup(dst)
        os.replace(copy, db)
    else:
        db.unlink()

    async def not_ready() -> bool:
        return (await readyz(running_app))[0] == 503

    await eventually(not_ready, within=10, what="/readyz to answer 503")
    written_at_detection = store.written
    scraped = await metrics(running_app)
    assert scraped["telephony_store_database_replaced"] == 1
    assert scraped["telephony_store_failing"] == 1
    assert scraped["telephony_store_errors_total"] >= 1
    assert any("deleted or replaced" in m for m in errors_logged(caplog))

    summary = await call.completed()
    # Nothing more goes into the unlinked file: the rest of the call is held in memory.
    assert store.written == written_at_detection
    assert store.queue_depth > 0
    assert len(errors_logged(caplog)) == 1, errors_logged(caplog)

    # Stopping (the operator's restart) writes the held rows to the file now at the path.
    await store.stop()
    assert store.dropped == 0
    with sqlite3.connect(db) as conn:
        row = conn.execute("SELECT end_reason FROM calls WHERE sid = ?", (call.sid,)).fetchone()
        texts = [
            text
            for (text,) in conn.execute(
                "SELECT text FROM turns WHERE call_sid = ? ORDER BY idx", (call.sid,)
            )
        ]
    assert row == ("bot-hangup",)
    turns = [t.text for t in summary.transcript.turns]
    assert texts == turns[-len(texts) :] and texts[-1] == "Goodbye!"
    if fault == "replaced":  # the copy's rows are kept too
        assert texts == turns


@pytest.fixture
async def postgres(
    database: str, postgres_server: PgServer, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[str]:
    """A fresh PostgreSQL database for this test, and the app pointed at it; yields its name."""
    async with fresh_database(postgres_server, "faults") as url:
        monkeypatch.setenv("TELEPHONY_DATABASE_URL", url)
        yield url.rsplit("/", 1)[1]


async def test_postgres_connections_terminated_mid_call(
    postgres: str,
    postgres_server: PgServer,
    running_app: RunningApp,
    fake_deepgram: FakeDeepgram,
    fake_rest: FakeTwilioRest,
) -> None:
    store = store_of(running_app)
    call = Call(running_app, fake_deepgram, fake_rest)
    await call.live()

    async def greeting_written() -> bool:
        return store.written >= 2  # call_started and the greeting

    await eventually(greeting_written, within=10, what="the first rows in the database")
    # The server ends every connection the app holds (a failover, an admin, a restart).
    admin = await asyncpg.connect(postgres_server.dsn(), timeout=5)
    try:
        killed = await admin.fetchval(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = $1 AND pid <> pg_backend_pid()) AS t",
            postgres,
        )
    finally:
        await admin.close()
    assert killed >= 1
    summary = await call.completed()

    async def drained() -> bool:
        return store.queue_depth == 0 and (await readyz(running_app))[0] == 200

    await eventually(drained, within=20, what="the store to write everything")
    stored = await store.get_call(call.sid)
    assert stored is not None and stored["end_reason"] == "bot-hangup"
    assert [t["text"] for t in stored["turns"]] == [t.text for t in summary.transcript.turns]
    assert (await metrics(running_app))["telephony_store_rows_dropped_total"] == 0


# --- the parts, alone ----------------------------------------------------------------------------


def test_fault_episode_spans_every_failing_operation(caplog: pytest.LogCaptureFixture) -> None:
    health = StoreHealth()
    caplog.set_level(logging.INFO, logger=STORE_LOGGER)
    params = "('CA1', '+15550009876', 'What are your hours?')"
    failure = OperationalError(
        "INSERT INTO turns VALUES (?)", params, sqlite3.OperationalError("disk I/O error")
    )
    for _ in range(3):
        health.failed("write", failure, pending=7)
    health.failed("heartbeat", failure, pending=7)
    health.succeeded("write")
    assert health.problem == "heartbeat failing: OperationalError: disk I/O error"
    health.succeeded("heartbeat")
    assert health.problem is None
    health.succeeded("heartbeat")  # no episode: nothing to log
    assert (health.errors, health.episodes) == (4, 1)
    logged = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert [level for level, _ in logged] == [logging.ERROR, logging.WARNING]
    assert "disk I/O error" in logged[0][1] and "7 rows kept" in logged[0][1]
    assert all("+1555" not in m and "hours" not in m for _, m in logged)  # no SQL parameters


def test_a_database_left_in_wal_mode_is_switched_to_a_rollback_journal(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    with contextlib.closing(sqlite3.connect(db)) as conn:
        assert conn.execute("PRAGMA journal_mode=WAL").fetchone() == ("wal",)
    upgrade_blocking(f"sqlite+aiosqlite:///{db}")  # what start-up does first
    with contextlib.closing(sqlite3.connect(db)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("delete",)
    assert not db.with_name("old.db-shm").exists()
