"""The store keeps SQLite usable and says what is wrong with it.

telephony/store/bounded_wait.py: a caller stops waiting for a database operation at its
deadline, and the operation is never cancelled (a transaction cancelled mid-flight could leave
SQLite locked for good: every later store write failed "database is locked").
telephony/store/keeper.py: a failure caused by a deleted database file is reported as that.
telephony/store/schema.py: a connection opened read-only during a fault does not outlive it,
and apps starting together on one SQLite file migrate it one at a time.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from telephony.session.stream_claim import claim_stream
from telephony.store.bounded_wait import unwaited, wait_at_most
from telephony.store.engine import make_engine
from telephony.store.health import FileIdentity, StoreHealth
from telephony.store.keeper import Keeper
from telephony.store.migrate import upgrade
from telephony.store.stream_claims import carry

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.unit


async def test_the_caller_times_out_and_the_operation_runs_to_its_end() -> None:
    release, steps = asyncio.Event(), []

    async def operation() -> str:
        try:
            await release.wait()
            steps.append("done")
            return "result"
        except asyncio.CancelledError:
            steps.append("cancelled")
            raise

    with pytest.raises(TimeoutError):
        await wait_at_most(operation(), 0.05)
    assert unwaited() == 1
    release.set()
    for _ in range(10):
        await asyncio.sleep(0)
    assert steps == ["done"] and unwaited() == 0
    assert await wait_at_most(asyncio.sleep(0, "fast"), 1.0) == "fast"


async def test_a_cancelled_caller_leaves_the_operation_running() -> None:
    release, steps = asyncio.Event(), []

    async def operation() -> None:
        await release.wait()
        steps.append("done")

    caller = asyncio.create_task(wait_at_most(operation(), None))
    await asyncio.sleep(0.01)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    release.set()
    for _ in range(10):
        await asyncio.sleep(0)
    assert steps == ["done"]


async def test_a_claim_that_times_out_on_a_locked_database_is_still_recorded_and_unlocks(
    tmp_path: Path,
) -> None:
    """The claim gives up waiting after its timeout; the claim itself completes once the lock
    is gone, and the database is writable afterwards (it used to be cancelled instead)."""
    path = tmp_path / "claims.db"
    engine = make_engine(f"sqlite+aiosqlite:///{path}")
    await upgrade(engine)
    services: Any = SimpleNamespace(
        db=engine,
        transcripts=SimpleNamespace(instance=None),
        settings=SimpleNamespace(stream_claim_timeout_s=0.2),
    )
    outside = sqlite3.connect(path, isolation_level=None)
    try:
        outside.execute("BEGIN IMMEDIATE")  # someone else holds the write lock
        assert await claim_stream(services, "CA1", "") is None  # not decided in time
        outside.execute("COMMIT")
        for _ in range(100):  # the claim goes on in the background
            if outside.execute("SELECT carried_by FROM stream_claims").fetchall():
                break
            await asyncio.sleep(0.05)
        assert len(outside.execute("SELECT carried_by FROM stream_claims").fetchall()) == 1
        assert await carry(engine, "CA2", "", "me")  # and nothing holds the lock
        outside.execute("BEGIN IMMEDIATE")
        outside.execute("COMMIT")
    finally:
        outside.close()
        await engine.dispose()


# --- a failure's cause -----------------------------------------------------------------------


async def test_a_write_failing_because_the_file_was_deleted_is_reported_as_the_deletion(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A deleted SQLite file fails writes as "attempt to write a readonly database": that used
    to be logged as a generic store failure first, and /readyz went 503 for it, before the
    keeper's next file check named the real cause (two ERRORs; a flaky test)."""
    path = tmp_path / "gone.db"
    path.write_bytes(b"")
    health = StoreHealth()
    store: Any = SimpleNamespace(health=health, queue_depth=3)
    keeper = Keeper(store, FileIdentity.of(str(path)))
    path.unlink()
    with caplog.at_level(logging.ERROR):
        await keeper.failed("write", sqlite3.OperationalError("attempt to write a readonly db"))
    assert health.replaced and health.failing == {}
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "deleted or replaced" in errors[0], errors
    # A failure with the file in place is a fault episode, as before.
    path.write_bytes(b"")
    other = StoreHealth()
    kept = Keeper(SimpleNamespace(health=other, queue_depth=0), FileIdentity.of(str(path)))
    await kept.failed("write", sqlite3.OperationalError("database is locked"))
    assert not other.replaced and "write" in other.failing


@pytest.mark.process  # chattr
async def test_a_connection_opened_read_only_during_a_fault_is_dropped_after_it(
    tmp_path: Path,
) -> None:
    """SQLite opens a file it cannot write read-only, and the pooled connection stayed so
    after the fault: writes on it kept failing (after a storage fault the store "recovered",
    then failed again on the heartbeat's turn with that connection)."""
    path = tmp_path / "calls.db"
    engine = make_engine(f"sqlite+aiosqlite:///{path}", pool_size=1, max_overflow=0)
    try:
        await upgrade(engine)
        await engine.dispose()  # the next connection is opened during the fault
        chattr = await asyncio.to_thread(
            subprocess.run, ["chattr", "+i", str(path)], capture_output=True
        )
        if chattr.returncode != 0:
            pytest.skip("chattr +i is not possible here")
        try:
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))  # opened read-only, back to the pool
        finally:
            await asyncio.to_thread(subprocess.run, ["chattr", "-i", str(path)], check=True)
        with pytest.raises(OperationalError, match="readonly database"):
            await carry(engine, "CA1", "", "me")  # the read-only connection's one failure
        assert await carry(engine, "CA1", "", "me")  # a fresh connection: writable
    finally:
        await engine.dispose()


# --- migrations started together ---------------------------------------------------------------

MIGRATE = """
import sys
from telephony.store.migrate import upgrade_blocking
upgrade_blocking(f"sqlite+aiosqlite:///{sys.argv[1]}")
"""


async def test_apps_starting_together_in_one_process_migrate_one_at_a_time(
    tmp_path: Path,
) -> None:
    """Four offline calls (each its own app) starting at once on one SQLite file: Alembic's
    command API, run concurrently, failed (KeyError, "table calls already exists")."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}"
    results = await asyncio.gather(*(upgrade(url) for _ in range(6)), return_exceptions=True)
    assert [r for r in results if isinstance(r, BaseException)] == []


@pytest.mark.process
async def test_instances_starting_together_on_one_sqlite_file_all_start(tmp_path: Path) -> None:
    """Across processes the migration holds SQLite's write lock: the others wait, then find
    the schema at head (before: 5 of 12 starters failed, "table calls already exists")."""
    db = tmp_path / "shared.db"
    starters = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", MIGRATE, str(db), cwd=REPO, stderr=asyncio.subprocess.PIPE
        )
        for _ in range(4)
    ]
    outcomes = [(await p.wait(), (await p.stderr.read()).decode()[-300:]) for p in starters]  # type: ignore[union-attr]
    assert all(code == 0 for code, _ in outcomes), outcomes
