"""Store: migrations and the write-behind transcript store, on SQLite and real PostgreSQL.

Every test runs on both backends. The PostgreSQL case uses a fresh schema per test (via the
connection's search_path) on the session's server (tests/pg_server.py: TELEPHONY_TEST_DATABASE_URL,
or a throwaway one); if it cannot be had the PostgreSQL cases skip saying why, and CI fails.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import func, inspect, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from telephony.session.summary import CallSummary, StreamStats
from telephony.store.engine import make_engine
from telephony.store.migrate import alembic_config, upgrade
from telephony.store.schema import (
    TABLES,
    revoked_sessions,
    turns,
)
from telephony.store.transcripts import TranscriptStore
from telephony.store.users import add_user, end_session, session_role
from telephony.transcript import Event, Transcript, Turn
from tests.pg_server import PgServer
from tests.serve_process import eventually


@dataclass
class Db:
    backend: str
    engine: AsyncEngine  # migrated, isolated
    bad_engine: AsyncEngine  # points somewhere unusable


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Db]:
    if request.param == "sqlite":
        engine = make_engine(f"sqlite+aiosqlite:///{tmp_path}/data/store.db")
        # Not make_engine: that would create the missing directory.
        bad = create_async_engine(f"sqlite+aiosqlite:///{tmp_path}/no/such/dir/store.db")
        schema = None
    else:
        server: PgServer = request.getfixturevalue("postgres_server")
        schema = f"store_test_{uuid.uuid4().hex[:12]}"
        conn = await asyncpg.connect(server.dsn(), timeout=5)  # unreachable server: the test fails
        try:
            await conn.execute(f'CREATE SCHEMA "{schema}"')
        finally:
            await conn.close()
        settings = {"server_settings": {"search_path": schema}}
        engine = make_engine(server.url(), connect_args=settings)
        bad = make_engine("postgresql+asyncpg://postgres@127.0.0.1:1/test")
    await upgrade(engine)
    try:
        yield Db(request.param, engine, bad)
    finally:
        await engine.dispose()
        await bad.dispose()
        if schema is not None:
            conn = await asyncpg.connect(server.dsn(), timeout=5)
            try:
                await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
            finally:
                await conn.close()


async def count_turns(engine: AsyncEngine, sid: str) -> int:
    async with engine.connect() as conn:
        q = select(func.count()).select_from(turns).where(turns.c.call_sid == sid)
        return (await conn.execute(q)).scalar_one()


def summary(sid: str, started_at: float = 1_700_000_000.0) -> CallSummary:
    return CallSummary(
        call_sid=sid,
        stream_sid="MZ1",
        profile="support",
        from_number="+15551230000",
        to_number="+15550001000",
        started_at=started_at,
        ended_at=started_at + 12.5,
        end_reason="caller-hangup",
        stats=StreamStats(audio_end_ms=12_340),
    )


async def test_upgrade_creates_tables_and_is_idempotent(db: Db) -> None:
    await upgrade(db.engine)  # second run: a no-op, not an error
    async with db.engine.connect() as conn:
        names = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
        version = (await conn.execute(text("SELECT version_num FROM alembic_version"))).all()
        uniques = await conn.run_sync(lambda c: inspect(c).get_pk_constraint("turns"))
    # FTS5 (SQLite search, revision 0002) adds turns_fts and its shadow tables.
    fts = ("turns_fts", "call_insights_fts")  # and revision 0009's for insights
    assert {n for n in names if not n.startswith(fts)} == {*TABLES, "alembic_version"}
    assert version == [(ScriptDirectory.from_config(alembic_config()).get_current_head(),)]
    assert uniques["constrained_columns"] == ["call_sid", "idx"]


async def test_call_round_trips_through_writer(db: Db) -> None:
    store = TranscriptStore(db.engine)
    await store.start()
    store.call_started(
        "CA1",
        from_number="+15551230000",
        to_number="+15550001000",
        profile="support",
        mode="flux",
        started_at=1_700_000_000.0,
    )
    transcript = Transcript()
    store.attach("CA1", transcript)
    transcript.add_turn("caller", "my card number is", 100, 1_900, meta={"eot": 0.91})
    transcript.event(1_950, "barge-in", by="caller")
    bot = transcript.open_turn("bot", "Sure, one moment.", 2_300, 3_800, latency_ms=400)
    bot.heard = "Sure, one"
    bot.interrupted, bot.interrupted_at_ms = True, 3_100
    transcript.close_turn(bot)
    store.event("CA1", Event(3_000, "dtmf", {"digit": "5"}))
    store.call_ended(summary("CA1"))
    await store.stop()

    call = await store.get_call("CA1")
    assert call is not None
    assert call["mode"] == "flux" and call["profile"] == "support"
    assert call["end_reason"] == "caller-hangup" and call["ended_at"] == 1_700_000_012.5
    assert call["duration_ms"] == 12_340 and call["recording_path"] is None
    t0, t1 = call["turns"]
    assert (t0["idx"], t0["role"], t0["text"], t0["start_ms"], t0["end_ms"]) == (
        0,
        "caller",
        "my card number is",
        100,
        1_900,
    )
    assert t0["meta"] == {"eot": 0.91} and t0["interrupted"] is False
    assert (t1["role"], t1["heard"], t1["interrupted"], t1["interrupted_at_ms"]) == (
        "bot",
        "Sure, one",
        True,
        3_100,
    )
    assert t1["latency_ms"] == 400
    assert [(e["ms"], e["kind"], e["data"]) for e in call["events"]] == [
        (1_950, "barge-in", {"by": "caller"}),
        (3_000, "dtmf", {"digit": "5"}),
    ]
    assert [c["sid"] for c in await store.list_calls()] == ["CA1"]
    assert await store.get_call("CA-missing") is None
    assert (store.written, store.dropped, store.failed, store.queue_depth) == (6, 0, 0, 0)


async def test_bot_turn_upsert(db: Db) -> None:
    store = TranscriptStore(db.engine, flush_interval=0.05)
    await store.start()
    store.call_started("CA2", started_at=1.0)
    bot = Turn(3, "bot", "Let me check", 500, 900)
    store.turn("CA2", bot)  # written when it opens...
    await eventually(lambda: count_turns(db.engine, "CA2"), within=5, what="CA2's turns")
    bot.text, bot.end_ms, bot.interrupted, bot.heard = "Let me check that", 1_400, True, "Let me"
    store.turn("CA2", bot)  # ...and again when it closes (separate batch)
    late = Turn(4, "bot", "a", 2_000, 2_100)
    store.turn("CA2", late)
    late.text = "ab"
    store.turn("CA2", late)  # twice in one batch
    await store.stop()

    call = await store.get_call("CA2")
    assert call is not None
    assert [(t["idx"], t["text"], t["end_ms"]) for t in call["turns"]] == [
        (3, "Let me check that", 1_400),
        (4, "ab", 2_100),
    ]
    assert call["turns"][0]["interrupted"] is True and call["turns"][0]["heard"] == "Let me"


async def test_rows_committed_within_a_second_without_stop(db: Db) -> None:
    store = TranscriptStore(db.engine)  # default flush_interval 0.5 s
    await store.start()
    try:
        t0 = time.monotonic()
        store.call_started("CA3", started_at=1.0)
        store.turn("CA3", Turn(0, "caller", "hello", 0, 800))
        await eventually(lambda: count_turns(db.engine, "CA3"), within=3, what="CA3's turns")
        assert time.monotonic() - t0 < 1.5  # loose bound around the ~0.5 s flush interval
    finally:
        await store.stop()


async def test_stop_flushes(db: Db) -> None:
    store = TranscriptStore(db.engine, flush_interval=60.0)  # only stop() will flush
    await store.start()
    store.call_started("CA4", started_at=1.0)
    for i in range(5):
        store.turn("CA4", Turn(i, "caller", f"t{i}", i * 100, i * 100 + 50))
    await asyncio.sleep(0.1)
    assert await count_turns(db.engine, "CA4") == 0
    t0 = time.monotonic()
    await store.stop()
    assert time.monotonic() - t0 < 2.0
    assert await count_turns(db.engine, "CA4") == 5
    assert store.queue_depth == 0 and store.dropped == 0


async def test_full_queue_counts_drops_instead_of_blocking(db: Db) -> None:
    store = TranscriptStore(db.engine, queue_size=3)  # not started: nothing drains
    t0 = time.monotonic()
    store.call_started("CA5", started_at=1.0)
    for i in range(4):
        store.turn("CA5", Turn(i, "caller", "x", 0, 1))
    # A blocking put would wait for a writer that never runs: any bound catches it, and a
    # generous one survives a loaded machine (0.1 s once did not).
    assert time.monotonic() - t0 < 2.0
    assert store.dropped == 2 and store.queue_depth == 3
    await store.start()
    await store.stop()
    assert await count_turns(db.engine, "CA5") == 2
    assert store.dropped == 2 and store.written == 3


async def test_db_unavailable_rows_retried_then_written(db: Db) -> None:
    store = TranscriptStore(db.bad_engine, flush_interval=0.05, min_backoff=0.02, max_backoff=0.1)
    await store.start()
    try:
        store.call_started("CA6", started_at=1.0)
        for i in range(3):
            store.turn("CA6", Turn(i, "caller", f"t{i}", 0, 1))
        store.event("CA6", Event(5, "hangup"))
        await eventually(lambda: asyncio.sleep(0, store.retries >= 2), within=5, what="retries")
        assert store.queue_depth == 5 and store.dropped == 0 and store.written == 0
        store.engine = db.engine  # the database comes back
        await eventually(lambda: count_turns(db.engine, "CA6"), within=5, what="CA6's turns")
        call = await store.get_call("CA6")
        assert call is not None and len(call["turns"]) == 3 and len(call["events"]) == 1
        assert store.written == 5 and store.dropped == 0 and store.queue_depth == 0
    finally:
        await store.stop()


async def test_rejected_row_is_counted_and_the_rest_written(
    db: Db, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    store = TranscriptStore(db.engine, flush_interval=0.05)
    await store.start()
    store.call_started("CA7", started_at=1.0)
    store.turn("CA7", Turn(0, "caller", "ok", 0, 1))
    store.turn("CA7", Turn(1, None, "bad: role is NOT NULL", 0, 1))  # type: ignore[arg-type]
    store.turn("CA7", Turn(2, "bot", "ok too", 2, 3))
    await store.stop()
    call = await store.get_call("CA7")
    assert call is not None and [t["idx"] for t in call["turns"]] == [0, 2]
    assert (store.failed, store.written, store.retries) == (1, 3, 0)
    rejected = [r.getMessage() for r in caplog.records if "rejected" in r.getMessage()]
    assert len(rejected) == 1 and "role" in rejected[0]  # the reason
    assert all("role is NOT" not in r.getMessage() for r in caplog.records)  # no row values


async def test_ended_sessions_stay_ended_until_their_cookies_expire(db: Db) -> None:
    await add_user(db.engine, "bob", "staff", "correct horse battery")
    await end_session(db.engine, "old", expires_at=1000.0, now=500.0)
    await end_session(db.engine, "old", expires_at=1000.0, now=500.0)  # twice: no error
    assert await session_role(db.engine, "bob", "old") is None
    assert await session_role(db.engine, "bob", "fresh") == "staff"
    assert await session_role(db.engine, "nobody", "fresh") is None
    await end_session(db.engine, "new", expires_at=3000.0, now=2000.0)
    async with db.engine.connect() as conn:
        rows = (await conn.execute(select(revoked_sessions.c.nonce))).scalars().all()
    assert rows == ["new"]  # "old" expired at 1000: its cookie fails on its expiry alone


def test_redacted_turn_replaces_pii_and_keeps_spans() -> None:
    from telephony.store.redact import redacted_turn
    from telephony.transcript import Turn

    turn = Turn(3, "caller", "my card is 4111 1111 1111 1111 thanks", 100, 900, meta={"a": 1})
    out = redacted_turn(turn)
    assert out.text == "my card is [REDACTED:card] thanks"
    assert out.meta["redacted"] == [(11, 30, "card")] and out.meta["a"] == 1
    assert turn.text.startswith("my card is 4111")  # the live transcript is not changed
