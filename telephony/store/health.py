"""The transcript store's health: fault episodes, and the identity of its SQLite file.

Calls never wait for the store (telephony/store/transcripts.py), so a store fault is invisible
to callers; it must not be invisible to the operator. A *fault episode* starts at the first
failed store operation (a batch write, the heartbeat) and ends at the next success of each
operation that failed: one ERROR line when it starts, one WARNING when it ends, never one per
failed write. While it lasts the instance is not ready (``/readyz``), so a load balancer sends
new calls elsewhere; calls in progress go on. Prometheus sees it on ``/metrics``.

A SQLite database file deleted or replaced under the running process is worse than an error:
SQLite goes on writing into the open, unlinked file, and everything it writes vanishes at exit.
``FileIdentity`` remembers the device and inode of the file opened at start and compares the
path's (checked off the audio path, by the store's keeper). Once it differs the store stops
writing, keeps its rows in memory, and reports a fault until the process is restarted.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field

from sqlalchemy import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from telephony.store.engine import make_engine
from telephony.store.migrate import upgrade

log = logging.getLogger("telephony.store.transcripts")

REPLACED = "database file deleted or replaced"


def describe(exc: BaseException) -> str:
    """A store error for logs and /readyz: the driver's message only. SQLAlchemy's own text
    carries the statement's parameters (phone numbers, what callers said)."""
    orig = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    text = str(orig).splitlines()[0][:200] if str(orig) else ""
    return f"{type(orig).__name__}: {text}" if text else type(orig).__name__


@dataclass(slots=True)
class StoreHealth:
    """Which store operations are failing now, and the counts /metrics reads."""

    failing: dict[str, str] = field(default_factory=dict)  # operation -> its last error
    replaced: bool = False
    errors: int = 0  # failed store operations, every one (telephony_store_errors_total)
    episodes: int = 0  # fault episodes started
    since: float = 0.0  # monotonic start of the current episode

    @property
    def problem(self) -> str | None:
        """Why the store is unhealthy now, or None."""
        if self.replaced:
            return REPLACED
        for operation, error in self.failing.items():
            return f"{operation} failing: {error}"
        return None

    def failed(self, operation: str, exc: BaseException, pending: int) -> None:
        self.errors += 1
        first = self.problem is None
        self.failing[operation] = describe(exc)
        if first:
            self.episodes += 1
            self.since = time.monotonic()
            log.error(
                "transcript store failing (%s: %s): not ready; %d rows kept and retried",
                operation,
                self.failing[operation],
                pending,
            )

    def succeeded(self, operation: str) -> None:
        if self.failing.pop(operation, None) is not None and self.problem is None:
            log.warning(
                "transcript store recovered after %.1f s (%d failed attempts so far)",
                time.monotonic() - self.since,
                self.errors,
            )

    def file_replaced(self, path: str, pending: int) -> None:
        if self.replaced:
            return
        self.errors += 1
        if self.problem is None:
            self.episodes += 1
            self.since = time.monotonic()
        self.replaced = True
        log.error(
            "transcript store: %s (%s) while running: writes stop, %d rows kept in memory "
            "and written at shutdown; restart the instance (restore the file first to keep "
            "its calls and users)",
            REPLACED,
            path,
            pending,
        )


def sqlite_path(database_url: str) -> str | None:
    """The file of a SQLite URL; None for other databases and in-memory ones."""
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    if url.database.startswith("file:"):  # a URI filename: not watched
        return None
    return os.path.abspath(os.path.expanduser(url.database))


@dataclass(frozen=True, slots=True)
class FileIdentity:
    """A file as the kernel knows it: what stays the same while it is the same file."""

    path: str
    device: int
    inode: int

    @classmethod
    def of(cls, path: str) -> FileIdentity | None:
        """Blocking (a stat): call it in a thread from the event loop."""
        try:
            st = os.stat(path)
        except OSError:
            return None
        return cls(path, st.st_dev, st.st_ino)

    def still_there(self) -> bool:
        """Blocking: is the path still this file (not deleted, not replaced)?"""
        return FileIdentity.of(self.path) == self


async def reopen(engine: AsyncEngine, *, owned: bool) -> AsyncEngine:
    """A new engine on the same URL, its schema created if the file at the path is new; for
    the rows held since the file was deleted or replaced. (The old one is disposed if owned.)"""
    url = engine.url.render_as_string(hide_password=False)
    if owned:
        await engine.dispose()
    fresh = make_engine(url)
    try:
        await upgrade(fresh)
    except Exception as exc:  # the writer's attempts log and count what cannot be written
        log.error("transcript store: no database for the held rows: %s", describe(exc))
    return fresh
