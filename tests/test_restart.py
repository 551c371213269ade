"""Calls left open by a crashed instance are closed as `restart`; status callbacks never make
a calls row; migration 0004 maps the old free-text end reasons (issue 19).

Store tests run on SQLite (a file) and real PostgreSQL, each with two or more store instances
sharing the database (test_store's ``db`` fixture). The last test kills a real `telephony
serve` with SIGKILL and starts it again.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, insert, select, text

from telephony.sim.deepgram_server import FakeDeepgram, Script, ScriptedTurn
from telephony.sim.twilio_caller import FakeTwilioCaller, silence
from telephony.sim.twilio_rest import FakeTwilioRest
from telephony.store import instances as inst
from telephony.store import transcripts as transcripts_module
from telephony.store import writer as writer_module
from telephony.store.instances import Instance, heartbeat, sweep
from telephony.store.migrate import alembic_config, upgrade
from telephony.store.schema import calls, events, instances
from telephony.store.transcripts import TranscriptStore
from telephony.transcript import Event, Turn
from tests import test_store
from tests.conftest import AUTH_TOKEN, DEEPGRAM_KEY
from tests.serve_process import NUMBER, eventually, scripted_yaml, serve_process
from tests.test_store import Db

pytestmark = pytest.mark.clock(4)  # timers run 4x real time (tests/fast_clock.py)

db = test_store.db  # each test on SQLite and PostgreSQL, a fresh migrated database

FAST = {"flush_interval": 0.02, "heartbeat_s": 0.1, "stale_after_s": 0.6}


async def row(db: Db, sid: str) -> dict[str, Any] | None:
    async with db.engine.connect() as conn:
        found = (await conn.execute(select(calls).where(calls.c.sid == sid))).first()
    return None if found is None else dict(found._mapping)


def crash(store: TranscriptStore) -> None:
    """kill -9, as far as the store can tell: its tasks stop; no flush, no goodbye."""
    for task in (store._task, store._keeper):
        if task is not None:
            task.cancel()


async def test_a_crashed_instance_calls_are_closed_and_a_live_instance_calls_are_not(
    db: Db,
) -> None:
    crashed = TranscriptStore(db.engine, instance=Instance(), **FAST)
    live = TranscriptStore(db.engine, instance=Instance(), **FAST)
    await crashed.start()
    await live.start()
    started = time.time() - 20
    crashed.call_started("CAdead", profile="support", started_at=started)
    crashed.turn("CAdead", Turn(0, "caller", "hello", 300, 4_200))
    crashed.event("CAdead", Event(5_000, "dtmf", {"digit": "1"}))
    live.call_started("CAlive", profile="support", started_at=started)

    async def both_written() -> bool:
        dead, alive = await row(db, "CAdead"), await row(db, "CAlive")
        return bool(dead and alive and crashed.written >= 3)

    await eventually(both_written, within=5, what="both calls stored")
    assert (await row(db, "CAdead") or {})["instance_id"] == crashed.instance.id  # type: ignore[union-attr]
    crash(crashed)
    killed_at = time.time()

    async def closed() -> dict[str, Any] | None:
        found = await row(db, "CAdead")
        return found if found and found["ended_at"] is not None else None

    dead = await eventually(closed, within=10, what="the dead instance's call to be closed")
    assert dead["end_reason"] == "restart"
    assert dead["duration_ms"] == 5_000  # its last stored event, on the call clock
    # Ended at the dead instance's last heartbeat: it carried the call at least until then.
    assert killed_at - 1 <= dead["ended_at"] <= killed_at + 0.2
    assert crashed.instance.id in dead["end_detail"] and live.instance.id in dead["end_detail"]

    await asyncio.sleep(3 * FAST["heartbeat_s"])  # more sweeps: the live call stays live
    alive = await row(db, "CAlive")
    assert alive is not None and alive["ended_at"] is None and alive["end_reason"] == ""
    async with db.engine.connect() as conn:
        ids = set((await conn.execute(select(instances.c.id))).scalars())
    assert ids == {live.instance.id}  # the dead one's heartbeat row is gone
    await live.stop()


async def test_a_named_instance_closes_its_previous_incarnation_calls_at_start(db: Db) -> None:
    """TELEPHONY_INSTANCE_ID: after kill -9 and a restart, no wait for a stale heartbeat."""
    before = TranscriptStore(db.engine, instance=Instance(name="app1"), flush_interval=0.02)
    sibling = TranscriptStore(db.engine, instance=Instance(name="app2"), flush_interval=0.02)
    for store in (before, sibling):
        await store.start()
    before.call_started("CAold", started_at=time.time() - 5)
    sibling.call_started("CAsibling", started_at=time.time() - 5)
    await eventually(
        lambda: asyncio.sleep(0, before.written and sibling.written), within=5, what="rows"
    )
    crash(before)

    again = TranscriptStore(db.engine, instance=Instance(name="app1"), flush_interval=0.02)
    await again.start()  # the first sweep runs before start() returns
    old = await row(db, "CAold")
    assert old is not None and old["end_reason"] == "restart" and old["ended_at"] is not None
    sib = await row(db, "CAsibling")
    assert sib is not None and sib["ended_at"] is None  # another name, alive: left alone

    again.call_started("CAnew", started_at=time.time())  # its own calls are never swept
    await again.stop()
    assert (await row(db, "CAnew") or {}).get("ended_at") is None
    await sibling.stop()


async def test_calls_without_a_live_instance_are_swept_by_age(db: Db) -> None:
    now = 1_800_000_000.0
    rows = [
        # Written before revision 0004 (no instance): closed only past UNOWNED_AFTER_S.
        {"sid": "CAancient", "started_at": now - inst.UNOWNED_AFTER_S - 1},
        {"sid": "CArecent", "started_at": now - 600},
        # An instance with no heartbeat row at all: gone once the call is older than stale.
        {"sid": "CAorphan", "started_at": now - 60, "instance_id": "vanished"},
        {"sid": "CAyoung", "started_at": now - 5, "instance_id": "vanished"},
        # This instance's own open call.
        {"sid": "CAmine", "started_at": now - 60, "instance_id": "me"},
    ]
    async with db.engine.begin() as conn:
        await conn.execute(insert(calls), [{"instance_id": "", **r} for r in rows])
        await conn.execute(insert(events), [{"call_sid": "CAancient", "ms": 61_000, "kind": "x"}])
    me = Instance(id="me", started_at=now)
    closed = await sweep(db.engine, me, now)
    assert sorted(closed) == ["CAancient", "CAorphan"]
    ancient = await row(db, "CAancient")
    assert ancient is not None and ancient["duration_ms"] == 61_000
    assert ancient["ended_at"] == now - inst.UNOWNED_AFTER_S - 1 + 61
    assert await sweep(db.engine, me, now) == []  # idempotent
    for sid in ("CArecent", "CAyoung", "CAmine"):
        assert (await row(db, sid) or {}).get("ended_at") is None, sid


async def test_a_heartbeat_and_a_sweep_leave_no_cyclic_garbage(db: Db) -> None:
    """Every instance beats and sweeps every few seconds beside its live calls: a statement
    that leaves objects in reference loops feeds the cyclic collector, whose collections
    stall every call (tests/test_call_memory.py)."""
    now = 1_800_000_000.0
    me = Instance(id="me", started_at=now)
    await heartbeat(db.engine, me, now)  # first use: the dialect's caches
    await sweep(db.engine, me, now)
    gc.collect()
    gc.disable()
    try:
        for n in range(1, 4):
            await heartbeat(db.engine, me, now + n)
            await sweep(db.engine, me, now + n)
        left = gc.collect()
    finally:
        gc.enable()
    assert left == 0


# --- status callbacks -------------------------------------------------------------------------


async def test_status_for_a_call_never_carried_makes_no_row(
    db: Db, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(transcripts_module, "STATUS_WAIT_S", 0.3)
    monkeypatch.setattr(writer_module, "STATUS_RETRY_S", 0.05)
    store = TranscriptStore(db.engine, flush_interval=0.02)
    await store.start()
    store.status("CAghost", Event(0, "call-status", {"CallStatus": "completed"}))
    # Another instance's call: its row appears a moment after the callback arrived here.
    store.status("CAlate", Event(0, "stream-status", {"StreamEvent": "stream-started"}))
    await asyncio.sleep(0.15)
    other = TranscriptStore(db.engine, flush_interval=0.02)
    await other.start()
    other.call_started("CAlate", started_at=1.0)
    await other.stop()
    await eventually(lambda: asyncio.sleep(0, store.unknown_status), within=5, what="give-up")
    await store.stop()
    assert await row(db, "CAghost") is None
    late = await store.get_call("CAlate")
    assert late is not None and [e["kind"] for e in late["events"]] == ["stream-status"]
    assert (store.unknown_status, store.dropped, store.written) == (1, 0, 1)


async def test_refused_never_overwrites_a_call_row(db: Db) -> None:
    store = TranscriptStore(db.engine, flush_interval=0.02)
    await store.start()
    store.call_started("CAlive", started_at=1.0)
    store.call_refused("CAlive", "stream token already used")  # a replay while it is live
    store.call_refused("CAnew", "unknown profile 'x'", profile="x", at=5.0)
    await store.stop()
    live, new = await row(db, "CAlive"), await row(db, "CAnew")
    assert live is not None and live["ended_at"] is None and live["end_reason"] == ""
    assert new is not None
    assert (new["end_reason"], new["end_detail"], new["started_at"], new["ended_at"]) == (
        "refused",
        "unknown profile 'x'",
        5.0,
        5.0,
    )


# --- migration 0004 -------------------------------------------------------------------------


def _downgrade_sync(connection: Connection, revision: str) -> None:
    from alembic import command

    cfg = alembic_config()
    cfg.attributes["connection"] = connection
    command.downgrade(cfg, revision)


OLD_ROWS = {  # sid: (old end_reason, event kinds, ended?) -> expected end_reason
    "CAc": ("stop", ["dtmf"], True, "caller-hangup"),
    "CAb": ("stop", ["barge-in", "hangup"], True, "bot-hangup"),
    "CAt": ("stop", ["transfer", "handover"], True, "transferred"),
    "CAf": ("stop", ["upstream-failed"], True, "failover"),
    "CAd": ("server draining", ["drain"], True, "drained"),
    "CAm": ("max call duration", ["time-limit"], True, "max-duration"),
    "CAs": ("twilio closed the socket", [], True, "error"),
    "CAe": ("engine failed: boom", [], True, "error"),
    "CAn": ("", [], True, "error"),
    "CAk": ("bot-hangup", [], True, "bot-hangup"),  # already an outcome: kept
    "CAl": ("", [], False, ""),  # live: untouched
}


async def test_migration_0004_maps_old_reasons_and_back(db: Db) -> None:
    async with db.engine.begin() as conn:
        await conn.run_sync(_downgrade_sync, "0003_revoked_sessions")
        for i, (sid, (reason, kinds, ended, _)) in enumerate(OLD_ROWS.items()):
            await conn.execute(
                text(
                    "INSERT INTO calls (sid, started_at, ended_at, end_reason) "
                    "VALUES (:sid, :at, :ended, :reason)"
                ),
                {
                    "sid": sid,
                    "at": float(i),
                    "ended": float(i) + 1 if ended else None,
                    "reason": reason,
                },
            )
            for kind in kinds:
                await conn.execute(
                    text("INSERT INTO events (call_sid, ms, kind) VALUES (:sid, 0, :kind)"),
                    {"sid": sid, "kind": kind},
                )
    await upgrade(db.engine)
    for sid, (reason, _, _, expected) in OLD_ROWS.items():
        found = await row(db, sid)
        assert found is not None
        detail = reason if reason != expected else ""
        assert (found["end_reason"], found["end_detail"]) == (expected, detail), sid
        assert found["instance_id"] == ""

    async with db.engine.begin() as conn:
        await conn.run_sync(_downgrade_sync, "0003_revoked_sessions")
        back = dict((await conn.execute(text("SELECT sid, end_reason FROM calls"))).all())
    assert back == {sid: v[0] or v[3] for sid, v in OLD_ROWS.items()}  # the old text again
    await upgrade(db.engine)


# --- a real process, killed and started again ---------------------------------------------------


@pytest.fixture
async def fakes() -> Any:
    script = Script(turns=[ScriptedTurn(start_ms=1000, end_ms=1600, text="hello there")])
    async with (
        FakeDeepgram(api_key=DEEPGRAM_KEY, script=script) as dg,
        FakeTwilioRest(auth_token=AUTH_TOKEN) as rest,
    ):
        yield dg, rest


async def test_kill_9_then_restart_closes_the_call_it_left_open(
    tmp_path: Path, fakes: tuple[FakeDeepgram, FakeTwilioRest]
) -> None:
    deepgram, rest = fakes
    yaml = scripted_yaml({"hello": "Hi, how can I help?"})

    def read(sql: str) -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(tmp_path / "serve.db")
        try:
            return conn.execute(sql).fetchall()
        finally:
            conn.close()

    async with serve_process(tmp_path, yaml, deepgram, rest, TELEPHONY_INSTANCE_ID="app1") as one:
        caller = FakeTwilioCaller(one.url, auth_token=AUTH_TOKEN)
        dial = asyncio.create_task(
            caller.dial(NUMBER, audio=silence(20_000), tail_ms=None, max_call_ms=20_000)
        )
        try:

            async def stored() -> list[tuple[Any, ...]]:
                turns = await asyncio.to_thread(read, "SELECT count(*) FROM turns")
                return (
                    await asyncio.to_thread(read, "SELECT sid FROM calls")
                    if turns[0][0] >= 2
                    else []
                )

            [(sid,)] = await eventually(stored, within=30, what="a live call stored")
            os.kill(one.proc.pid, signal.SIGKILL)
            assert await asyncio.wait_for(one.proc.wait(), 10) == -signal.SIGKILL
            await asyncio.wait_for(dial, 10)  # the line drops with the server
        finally:
            if not dial.done():
                dial.cancel()
    assert read("SELECT ended_at FROM calls") == [(None,)]  # shows as live: until the next start

    async with serve_process(tmp_path, yaml, deepgram, rest, TELEPHONY_INSTANCE_ID="app1"):
        # Read while the new process runs: its start-up closed the call.
        assert read("SELECT sid, end_reason FROM calls") == [(sid, "restart")]
    [(ended_at, detail, duration_ms, owner)] = read(
        "SELECT ended_at, end_detail, duration_ms, instance_id FROM calls"
    )
    assert ended_at is not None and owner and owner in detail  # the process that was killed
    assert duration_ms >= 1600  # the caller's turn, at least, was stored
