"""The Alembic revisions build exactly the tables `telephony/store/schema.py` describes: a
column or index added to one and not the other fails here, on SQLite and on PostgreSQL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection

from telephony.store.engine import make_engine
from telephony.store.migrate import upgrade
from telephony.store.schema import metadata
from tests.pg_server import PgServer, fresh_database

# Full-text search is dialect SQL written in revision 0002 (an FTS5 table on SQLite, a GIN
# expression index on PostgreSQL), not part of the declared tables.
SEARCH_OBJECTS = ("turns_fts", "ix_turns_search", "call_insights_fts", "ix_call_insights_search")


def _declared(obj: Any, name: str | None, kind: str, reflected: bool, compare_to: Any) -> bool:
    return not (name or "").startswith(SEARCH_OBJECTS)


def _differences(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(
        connection, opts={"compare_type": False, "include_object": _declared}
    )
    # Server defaults are written once per revision and compared loosely by Alembic; names
    # of columns, tables, nullability and indexes are what must agree.
    return [
        diff
        for diff in compare_metadata(context, metadata)
        if not (isinstance(diff, list) and diff and diff[0][0] == "modify_default")
    ]


async def _check(url: str) -> None:
    await upgrade(url)
    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            assert await conn.run_sync(_differences) == []
    finally:
        await engine.dispose()


async def test_sqlite_at_head_is_the_declared_schema(tmp_path: Path) -> None:
    await _check(f"sqlite+aiosqlite:///{tmp_path / 'calls.db'}")


@pytest.mark.postgres
async def test_postgresql_at_head_is_the_declared_schema(postgres_server: PgServer) -> None:
    async with fresh_database(postgres_server, "schema") as url:
        await _check(url)
