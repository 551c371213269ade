"""The SQLite database and the call recordings are readable by this service's user only:
directories we create 0700, files 0600, whatever the umask."""

from __future__ import annotations

import concurrent.futures
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from telephony.store.engine import make_engine
from telephony.store.migrate import upgrade
from telephony.store.recording import CallRecorder


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def base(tmp_path: Path) -> Iterator[Path]:
    """An existing directory anyone may read, under the usual umask (group and others may
    read what is created): what made the files world-readable."""
    path = tmp_path / "base"
    path.mkdir()
    path.chmod(0o755)
    old = os.umask(0o022)
    try:
        yield path
    finally:
        os.umask(old)


async def test_sqlite_database_and_its_directory_are_private(base: Path) -> None:
    db = base / "data" / "sub" / "telephony.db"
    engine = make_engine(f"sqlite+aiosqlite:///{db}")
    try:
        await upgrade(engine)
        assert mode(base) == 0o755  # an existing directory is left alone
        assert mode(base / "data") == mode(db.parent) == 0o700
        for path in (db, db.with_name("telephony.db-wal"), db.with_name("telephony.db-shm")):
            if path.exists():  # -wal and -shm while a connection is open
                assert mode(path) == 0o600, path
    finally:
        await engine.dispose()


async def test_recordings_and_their_spools_are_private(base: Path) -> None:
    directory = base / "data" / "recordings"
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        rec = CallRecorder("CAprivate", directory, executor=pool, flush_ms=20)
        for n in range(10):
            rec.caller(n * 20, bytes([n]) * 160)
        pool.submit(lambda: None).result(timeout=10)
        spools = sorted(directory.glob("*.part"))
        assert spools and all(mode(p) == 0o600 for p in spools)
        path = await rec.finish()
    finally:
        pool.shutdown(wait=True)
    assert path is not None and path.exists()
    assert mode(path) == 0o600
    assert mode(directory) == mode(directory.parent) == 0o700
    assert mode(base) == 0o755
