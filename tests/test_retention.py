"""Retention: expired calls go with their turns, events and recordings; one audit row per run.

Runs on SQLite and PostgreSQL (the store tests' `db` fixture; PostgreSQL must be up), plus the
`telephony retention run` command against a SQLite file.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from telephony.config import load_config
from telephony.store import audit
from telephony.store.engine import make_engine
from telephony.store.migrate import upgrade
from telephony.store.retention import AUDIT_ACTION, AUDIT_USER, run_retention
from telephony.store.schema import calls, events, turns
from telephony.store.transcripts import TranscriptStore
from telephony.transcript import Event, Turn
from tests import test_store

db = test_store.db  # the store tests' fixture: SQLite and PostgreSQL

REPO = Path(__file__).resolve().parent.parent
DAY = 86_400.0
NOW = 1_800_000_000.0

NUMBERS = """\
numbers:
  "+15550001000": short
  "+15550002000": long
profiles:
  short:
    mode: flux
    retention_days: 7
    responder: {type: scripted, rules: [], fallback: "Hi."}
  long:
    mode: flux
    retention_days: 90
    responder: {type: scripted, rules: [], fallback: "Hi."}
"""

# sid -> (profile, age in days, has a recording file)
CALLS = {
    "CAshort_old": ("short", 8, True),  # 7 days: expired
    "CAshort_new": ("short", 6, True),
    "CAlong_mid": ("long", 40, True),  # 90 days: kept (the default 30 would not keep it)
    "CAlong_old": ("long", 91, False),  # expired, never recorded
    "CAgone_old": ("removed", 31, True),  # profile no longer in the YAML: 30 days
    "CAgone_new": ("removed", 29, False),
    "CAmissing": ("short", 10, False),  # linked recording already deleted by hand
}
EXPIRED = {"CAshort_old", "CAlong_old", "CAgone_old", "CAmissing"}


def profiles(tmp_path: Path):
    path = tmp_path / "numbers.yaml"
    path.write_text(NUMBERS)
    return load_config(path).profiles


def recording_files(recordings: Path) -> dict[str, Path]:
    recordings.mkdir(parents=True, exist_ok=True)
    files = {sid: recordings / f"{sid}.wav" for sid, (_, _, rec) in CALLS.items() if rec}
    for path in files.values():
        path.write_bytes(b"RIFF")
    return files


async def populate(engine: AsyncEngine, recordings: Path) -> dict[str, Path]:
    """Every call with two turns and an event, through the real store; returns the WAVs."""
    files = recording_files(recordings)
    store = TranscriptStore(engine, flush_interval=0.01)
    await store.start()
    for sid, (profile, age, _) in CALLS.items():
        linked = files.get(sid) or (recordings / f"{sid}.wav" if sid == "CAmissing" else None)
        store.call_started(
            sid,
            profile=profile,
            mode="flux",
            started_at=NOW - age * DAY,
            recording_path=str(linked) if linked else None,
        )
        store.turn(sid, Turn(index=0, role="bot", text="Hi.", start_ms=0, end_ms=500))
        store.turn(sid, Turn(index=1, role="caller", text="Bye.", start_ms=900, end_ms=1500))
        store.event(sid, Event(ms=1500, kind="hangup"))
    await store.stop()
    return files


async def sids(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as conn:
        return set((await conn.execute(select(calls.c.sid))).scalars())


async def children(engine: AsyncEngine, table) -> dict[str, int]:
    q = select(table.c.call_sid, func.count()).group_by(table.c.call_sid)
    async with engine.connect() as conn:
        return {sid: n for sid, n in await conn.execute(q)}


async def test_expired_calls_go_with_turns_events_and_recordings(db, tmp_path: Path) -> None:
    files = await populate(db.engine, tmp_path / "recordings")
    result = await run_retention(db.engine, profiles(tmp_path), now=NOW)

    assert set(result.calls) == EXPIRED
    kept = set(CALLS) - EXPIRED
    assert await sids(db.engine) == kept
    assert set(await children(db.engine, turns)) == kept
    assert set(await children(db.engine, events)) == kept
    assert (result.turns, result.events) == (2 * len(EXPIRED), len(EXPIRED))
    assert (result.recordings, result.recordings_missing, result.kept) == (2, 1, 3)
    for sid, path in files.items():
        assert path.exists() == (sid in kept), sid

    rows = await audit.recent(db.engine)
    assert len(rows) == 1
    row = rows[0]
    assert (row["user_name"], row["action"], row["target"]) == (AUDIT_USER, AUDIT_ACTION, "")
    detail = row["detail"]
    assert set(detail["sids"]) == EXPIRED and detail["dry_run"] is False
    assert (detail["calls"], detail["turns"], detail["events"], detail["recordings"]) == (
        4,
        8,
        4,
        2,
    )
    assert result.summary() == (
        "retention: deleted 4 calls (8 turns, 4 events, 2 recordings; "
        "1 recordings already gone), kept 3"
    )

    # A second run finds nothing more, and says so in the audit log too.
    again = await run_retention(db.engine, profiles(tmp_path), now=NOW)
    assert again.calls == [] and again.kept == 3
    assert len(await audit.recent(db.engine)) == 2


async def test_dry_run_deletes_nothing_but_is_audited(db, tmp_path: Path) -> None:
    files = await populate(db.engine, tmp_path / "recordings")
    result = await run_retention(db.engine, profiles(tmp_path), now=NOW, dry_run=True)

    assert set(result.calls) == EXPIRED
    assert (result.turns, result.events, result.recordings) == (8, 4, 2)
    assert await sids(db.engine) == set(CALLS)
    assert sum((await children(db.engine, turns)).values()) == 2 * len(CALLS)
    assert all(path.exists() for path in files.values())
    [row] = await audit.recent(db.engine)
    assert row["action"] == AUDIT_ACTION and row["target"] == "dry run"
    assert row["detail"]["dry_run"] is True and set(row["detail"]["sids"]) == EXPIRED
    assert result.summary().startswith("retention (dry run): would delete 4 calls")


async def test_default_days_for_calls_of_removed_profiles(db, tmp_path: Path) -> None:
    await populate(db.engine, tmp_path / "recordings")
    result = await run_retention(db.engine, profiles(tmp_path), now=NOW, default_days=100)
    # The removed profile's 31-day-old call is kept at 100 days; the others follow their own.
    assert set(result.calls) == {"CAshort_old", "CAlong_old", "CAmissing"}


async def test_a_recording_that_cannot_be_deleted_keeps_its_call(db, tmp_path: Path) -> None:
    files = await populate(db.engine, tmp_path / "recordings")
    stuck = files["CAshort_old"]
    stuck.unlink()
    stuck.mkdir()  # unlink() of a directory fails: the call must stay, to be retried
    result = await run_retention(db.engine, profiles(tmp_path), now=NOW)
    assert set(result.calls) == EXPIRED - {"CAshort_old"}
    assert result.recording_errors == 1
    assert "CAshort_old" in await sids(db.engine)


def test_cli_retention_run(tmp_path: Path) -> None:
    database = f"sqlite+aiosqlite:///{tmp_path}/cli.db"
    numbers = tmp_path / "numbers.yaml"
    numbers.write_text(NUMBERS)

    async def prepare() -> dict[str, Path]:
        engine = make_engine(database)
        try:
            await upgrade(engine)
            # The command uses the real clock: shift the ages onto it.
            files = await populate(engine, tmp_path / "recordings")
            async with engine.begin() as conn:
                shift = time.time() - NOW
                await conn.execute(calls.update().values(started_at=calls.c.started_at + shift))
            return files
        finally:
            await engine.dispose()

    files = asyncio.run(prepare())
    env = {**os.environ, "TELEPHONY_DATABASE_URL": database, "TELEPHONY_CONFIG": str(numbers)}
    cmd = [sys.executable, "-m", "telephony.cli", "retention", "run"]

    dry = subprocess.run(
        [*cmd, "--dry-run"], env=env, cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert dry.returncode == 0, dry.stderr
    *listed, summary = dry.stdout.strip().splitlines()
    assert set(listed) == EXPIRED
    assert summary.startswith("retention (dry run): would delete 4 calls")

    out = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines() == [
        "retention: deleted 4 calls (8 turns, 4 events, 2 recordings; "
        "1 recordings already gone), kept 3"
    ]
    assert not files["CAshort_old"].exists() and files["CAshort_new"].exists()

    async def check() -> tuple[set[str], list[dict]]:
        engine = make_engine(database)
        try:
            return await sids(engine), await audit.recent(engine)
        finally:
            await engine.dispose()

    remaining, audit_rows = asyncio.run(check())
    assert remaining == set(CALLS) - EXPIRED
    assert [r["target"] for r in audit_rows] == ["", "dry run"]  # newest first
