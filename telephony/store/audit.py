"""The audit log: who looked at which transcript, and every admin action.

Writes are awaited (the staff UI is not on the audio path) so a view is never shown without its
audit row: if the row cannot be written the request fails instead.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from telephony.store.schema import audit_log


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
    async with engine.begin() as conn:
        await conn.execute(insert(audit_log).values(**row))


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
