"""Alembic environment: runs on the connection handed over in ``config.attributes``.

``telephony.store.migrate.upgrade`` opens an async engine and passes its sync connection here.
Without one (the ``alembic`` CLI), ``sqlalchemy.url`` from the config is used.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import Connection

from telephony.store.engine import make_engine
from telephony.store.schema import metadata

config = context.config


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


async def _run_with_url(url: str) -> None:
    engine = make_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_run)
    finally:
        await engine.dispose()


if context.is_offline_mode():
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=metadata)
    with context.begin_transaction():
        context.run_migrations()
elif (conn := config.attributes.get("connection")) is not None:
    _run(conn)
else:
    asyncio.run(_run_with_url(config.get_main_option("sqlalchemy.url") or ""))
