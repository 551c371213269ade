"""Tags on calls, from the admin's set (`qa.tags` in the YAML).

A tag is added only if the current YAML lists it; one removed from the YAML since stays on the
calls that have it (and can still be taken off). Each change is audited in its transaction.
"""

from __future__ import annotations

import time
from collections.abc import Collection

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncEngine

from telephony.store import audit
from telephony.store.qa_errors import QAError
from telephony.store.schema import call_tags, calls, dialect_insert


async def add_tag(
    engine: AsyncEngine, sid: str, tag: str, actor: str, allowed: Collection[str]
) -> bool:
    """Tag the call; False (nothing audited) if it already has the tag."""
    if tag not in allowed:
        raise QAError("not one of the configured tags")
    async with engine.begin() as conn:
        if (await conn.execute(select(calls.c.sid).where(calls.c.sid == sid))).first() is None:
            raise QAError("no such call")
        stmt = dialect_insert(engine.dialect.name, call_tags).values(
            call_sid=sid, tag=tag, added_by=actor, added_at=time.time()
        )
        added = (await conn.execute(stmt.on_conflict_do_nothing())).rowcount > 0
        if added:
            await audit.record_in(conn, actor, "qa.tag.add", sid, {"tag": tag})
    return added


async def remove_tag(engine: AsyncEngine, sid: str, tag: str, actor: str) -> bool:
    """Untag the call; False (nothing audited) if it did not have the tag."""
    async with engine.begin() as conn:
        gone = await conn.execute(
            delete(call_tags).where(call_tags.c.call_sid == sid, call_tags.c.tag == tag)
        )
        if gone.rowcount:
            await audit.record_in(conn, actor, "qa.tag.remove", sid, {"tag": tag})
    return bool(gone.rowcount)


async def tags_of(engine: AsyncEngine, sid: str) -> list[dict[str, object]]:
    """The call's tags by name, with who added each and when."""
    q = select(call_tags).where(call_tags.c.call_sid == sid).order_by(call_tags.c.tag)
    async with engine.connect() as conn:
        return [dict(r._mapping) for r in await conn.execute(q)]
