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

import functools
import time
from typing import Any, NamedTuple

from sqlalchemy import bindparam, delete, or_, select
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
    row = {"call_sid": call_sid, "part": WEBHOOK_PART, "answer": answer, "created_at": now}
    statements = _statements(engine.dialect.name)
    async with engine.begin() as conn:
        await conn.execute(statements.expire, {"before": now - KEEP_S})
        await conn.execute(statements.answer, row)
        found = (await conn.execute(statements.read, row)).one()
    return (found.answer if found.answer is not None else answer), found.carried_by != ""


async def carry(
    engine: AsyncEngine, call_sid: str, part: str, instance_id: str, now: float | None = None
) -> bool:
    """Claim the stream for this instance: True if it is (now) ours, False if another's."""
    now = time.time() if now is None else now
    row = {"call_sid": call_sid, "part": part, "carried_by": instance_id, "created_at": now}
    statements = _statements(engine.dialect.name)
    async with engine.begin() as conn:
        await conn.execute(statements.carry, {**row, "me": instance_id})
        found = (await conn.execute(statements.read, row)).one()
    return found.carried_by == instance_id


class _Statements(NamedTuple):
    expire: Any
    answer: Any
    carry: Any
    read: Any


@functools.cache
def _statements(dialect: str) -> _Statements:
    """Built once, their values bound at each execution. Built per call, each left objects
    in reference loops (the upserts' `excluded` alias, a literal's bind parameter) for the
    cyclic garbage collector to find, and its collections stall every live call."""
    table = stream_claims
    answer = dialect_insert(dialect, table)
    carry = dialect_insert(dialect, table)
    return _Statements(
        expire=delete(table).where(table.c.created_at < bindparam("before")),
        # A stream carried before its answer was stored (the database was slow at the
        # webhook) keeps its carrier and gets the answer; a stored answer is never replaced.
        answer=answer.on_conflict_do_update(
            index_elements=["call_sid", "part"],
            set_={"answer": answer.excluded.answer},
            where=table.c.answer.is_(None),
        ),
        # The stream is ours if nobody carries it yet, or we already do.
        carry=carry.on_conflict_do_update(
            index_elements=["call_sid", "part"],
            set_={"carried_by": carry.excluded.carried_by},
            where=or_(table.c.carried_by == "", table.c.carried_by == bindparam("me")),
        ),
        read=select(table.c.answer, table.c.carried_by).where(
            table.c.call_sid == bindparam("call_sid"), table.c.part == bindparam("part")
        ),
    )
