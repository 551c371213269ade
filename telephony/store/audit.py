"""The audit log: who looked at which transcript, and every admin action.

Writes are awaited (the staff UI is not on the audio path) so a view is never shown without its
audit row: if the row cannot be written the request fails instead. A transient failure (SQLite's
"database is locked" while another writer holds it, a dropped PostgreSQL connection) is retried
a few times first. Logins and logouts use `record_or_log`: refusing a login because its audit
row could not be written would help nobody, so it never raises; a row it cannot write after the
retries goes to the log at ERROR, whole, so it is not lost.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from telephony.store.schema import audit_log

log = logging.getLogger(__name__)

# Pauses between tries of one write (SQLite already waits up to its busy_timeout each try).
RETRY_DELAYS_S = (0.05, 0.2, 0.5)


async def record(
    engine: AsyncEngine,
    user: str,
    action: str,
    target: str = "",
    detail: dict[str, Any] | None = None,
    *,
    at: float | None = None,
) -> None:
    row = {
        "at": time.time() if at is None else at,
        "user_name": user,
        "action": action,
        "target": target,
        "detail": detail,
    }
    for delay in (*RETRY_DELAYS_S, None):
        try:
            async with engine.begin() as conn:
                await conn.execute(insert(audit_log).values(**row))
            return
        except OperationalError:
            if delay is None:
                raise
            await asyncio.sleep(delay)


async def record_in(
    conn: AsyncConnection,
    user: str,
    action: str,
    target: str = "",
    detail: dict[str, Any] | None = None,
) -> None:
    """A row in the caller's transaction: it commits with the change it describes or not at
    all (QA changes, account changes)."""
    row = {"at": time.time(), "user_name": user, "action": action, "target": target}
    await conn.execute(insert(audit_log).values(**row, detail=detail))


async def record_or_log(
    engine: AsyncEngine,
    user: str,
    action: str,
    target: str = "",
    detail: dict[str, Any] | None = None,
) -> bool:
    """`record`, except that it never raises: False (and the row logged at ERROR) if the row
    could not be written."""
    at = time.time()
    try:
        await record(engine, user, action, target, detail, at=at)
    except (SQLAlchemyError, OSError) as exc:
        row = {"at": at, "user_name": user, "action": action, "target": target, "detail": detail}
        log.error("audit row not written (%s): %s", type(exc).__name__, row)
        return False
    return True


async def recent(
    engine: AsyncEngine, *, limit: int = 200, user: str = "", action: str = ""
) -> list[dict[str, Any]]:
    """Newest first, optionally for one user and/or one action."""
    q = select(audit_log).order_by(audit_log.c.at.desc(), audit_log.c.id.desc()).limit(limit)
    if user:
        q = q.where(audit_log.c.user_name == user)
    if action:
        q = q.where(audit_log.c.action == action)
    async with engine.connect() as conn:
        return [dict(r._mapping) for r in await conn.execute(q)]
