"""One answer per call and one carrier per stream, shared by every instance on the database.

Twilio signs a webhook's URL and form but nothing that expires, so a signed webhook can be
replayed; Twilio itself also retries one (same CallSid) on a timeout or a 5xx. And the media
socket's upgrade signature signs only the URL, the same for every call: no per-call proof.

* ``record_answer`` (the webhook, which may wait on the database): the first answer for a
  call SID is stored; a later webhook for it, on any instance, gets that same answer (with
  the same one-time stream token), never a new token, so a genuine retry still connects; once
  the stream has started, a repeat cannot be a retry and is refused (routes/call_answers.py).
* ``carry`` (after a stream's `start`, off its audio path): the first instance to claim a
  stream (call SID and part: "" for the webhook's stream, the continuation for a transfer's
  transcription) carries it; a claim by another instance fails, and that stream is closed.

Rows are dropped ``KEEP_S`` after they were made, by the next answer recorded.
"""

from __future__ import annotations

import time

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncEngine

from telephony.store.schema import dialect_insert, stream_claims

KEEP_S = 7 * 24 * 3600.0  # far beyond any call; a replay of an older webhook is answered anew
WEBHOOK_PART = ""  # the stream the webhook answered (a continuation names its own part)


async def record_answer(
    engine: AsyncEngine, call_sid: str, answer: str, now: float | None = None
) -> tuple[str, bool]:
    """Store `answer` as the call's webhook answer unless one is stored: the stored one, and
    whether its stream has started (then a repeat cannot be Twilio's retry)."""
    now = time.time() if now is None else now
    table = stream_claims
    stmt = dialect_insert(engine.dialect.name, table).values(
        call_sid=call_sid, part=WEBHOOK_PART, answer=answer, created_at=now
    )
    # A stream carried before its answer was stored (the database was slow at the webhook)
    # keeps its carrier and gets the answer; a stored answer is never replaced.
    stmt = stmt.on_conflict_do_update(
        index_elements=["call_sid", "part"],
        set_={"answer": stmt.excluded.answer},
        where=table.c.answer.is_(None),
    )
    async with engine.begin() as conn:
        await conn.execute(delete(table).where(table.c.created_at < now - KEEP_S))
        await conn.execute(stmt)
        row = (
            await conn.execute(
                select(table.c.answer, table.c.carried_by).where(
                    table.c.call_sid == call_sid, table.c.part == WEBHOOK_PART
                )
            )
        ).one()
    return (row.answer if row.answer is not None else answer), row.carried_by != ""


async def carry(
    engine: AsyncEngine, call_sid: str, part: str, instance_id: str, now: float | None = None
) -> bool:
    """Claim the stream for this instance: True if it is (now) ours, False if another's."""
    now = time.time() if now is None else now
    table = stream_claims
    stmt = dialect_insert(engine.dialect.name, table).values(
        call_sid=call_sid, part=part, carried_by=instance_id, created_at=now
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=["call_sid", "part"],
        set_={"carried_by": instance_id},
        where=table.c.carried_by.in_(["", instance_id]),
    )
    async with engine.begin() as conn:
        await conn.execute(stmt)
        owner = await conn.scalar(
            select(table.c.carried_by).where(table.c.call_sid == call_sid, table.c.part == part)
        )
    return owner == instance_id
