"""The programmatic Alembic upgrade (no alembic.ini): run at every start, safe when several
instances start at once on one database."""

from __future__ import annotations

import asyncio
import logging
import weakref
from pathlib import Path
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from telephony.store.engine import make_engine

MIGRATIONS_DIR = Path(__file__).parent / "migrations"

# Alembic logs one INFO line per built-in plugin on every upgrade (that is, every start):
# noise before the lines that matter. Its migration lines stay.
logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)


def alembic_config() -> Any:
    """Alembic Config built in code (no alembic.ini)."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return cfg


# Several instances starting at once on one PostgreSQL database take turns migrating: the
# first applies the migrations, the others wait, then find the schema at head. (A transaction
# lock, released when upgrade()'s transaction ends.) Any 64-bit key unique to this schema.
MIGRATION_LOCK_KEY = 0x7E1E_9407_0000_0001


# SQLite: the migration takes the database's write lock first (BEGIN IMMEDIATE), so starters
# in other processes wait for it (busy_timeout) and then find the schema at head; without it
# two of them both created the tables ("table calls already exists"). Within one process,
# Alembic's command API is not safe to run concurrently at all: one migration at a time per
# event loop (`_migrating`).
_migrating: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
    weakref.WeakKeyDictionary()
)


def _upgrade_sync(connection: Connection, revision: str) -> None:
    from alembic import command

    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY})")
    elif connection.dialect.name == "sqlite":
        connection.exec_driver_sql("BEGIN IMMEDIATE")
    cfg = alembic_config()
    cfg.attributes["connection"] = connection
    command.upgrade(cfg, revision)


async def upgrade(database: str | AsyncEngine, revision: str = "head") -> None:
    """Run ``alembic upgrade head`` on a URL (or an existing async engine)."""
    engine = make_engine(database) if isinstance(database, str) else database
    lock = _migrating.setdefault(asyncio.get_running_loop(), asyncio.Lock())
    try:
        async with lock, engine.begin() as conn:
            await conn.run_sync(_upgrade_sync, revision)
    finally:
        if isinstance(database, str):
            await engine.dispose()


def upgrade_blocking(database_url: str) -> None:
    """For CLIs outside an event loop."""
    asyncio.run(upgrade(database_url))
