"""Opening the database: an async SQLAlchemy engine, with SQLite made safe to lose storage
under (private file modes, rollback journal, no memory mapping; see `make_engine`)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from sqlalchemy import event, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from telephony.store.private_files import create_private_file, private_dir


def _json_dumps(value: Any) -> str:
    # Meta/data dicts come from engines; never let an odd value poison a batch.
    return json.dumps(value, default=str, separators=(",", ":"))


def make_engine(database_url: str, **kw: Any) -> AsyncEngine:
    """An async engine; for a SQLite file: parent dir created (0700) and the file (0600),
    rollback journal, no memory mapping, foreign keys on.

    No WAL: its index (the ``-shm`` file) is shared memory, mapped into the process, and a
    mapped file that shrinks under it (truncated, replaced, or a full tmpfs) kills the whole
    process with SIGBUS: every live call dropped. ``locking_mode=EXCLUSIVE`` (WAL with the
    index on the heap) would lock out the app's second engine, its pooled connections and
    every outside reader. With a rollback journal and ``mmap_size=0`` SQLite only reads and
    writes through file descriptors, so a storage fault is an I/O error the store retries."""
    url = make_url(database_url)
    sqlite = url.get_backend_name() == "sqlite"
    if sqlite and url.database and url.database != ":memory:" and "mode=memory" not in str(url):
        path = Path(url.database).expanduser()
        private_dir(path.parent)
        create_private_file(path)  # before SQLite makes it with the umask's mode
    engine = create_async_engine(url, json_serializer=_json_dumps, **kw)
    if sqlite:

        @event.listens_for(engine.sync_engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            # A file left in WAL mode by an older version is switched back. That needs the
            # only connection (as at start-up's migration); if another holds it, later.
            with contextlib.suppress(Exception):
                cur.execute("PRAGMA journal_mode=DELETE")
            cur.execute("PRAGMA mmap_size=0")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=5000")
            cur.close()

        @event.listens_for(engine.sync_engine, "handle_error")
        def _readonly_is_a_lost_connection(context: Any) -> None:
            # SQLite opens a file it cannot write (immutable, read-only mount) read-only, and
            # the connection stays so after the fault is gone: every write on it would fail
            # "attempt to write a readonly database" for as long as the pool keeps it. Treated
            # as a lost connection, it is dropped (with the pool's older ones) at its first
            # failed write, and the retry opens a fresh one.
            if "readonly database" in str(context.original_exception):
                context.is_disconnect = True

    return engine
