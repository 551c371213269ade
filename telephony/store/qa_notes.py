"""Supervisors' and staff's notes on a call, or on one of its turns.

Anyone on staff may write a note; editing or deleting one is for its author or a supervisor
(the caller says which with `may_change_others`). A deleted note's row goes, but every add,
edit (old and new text) and deletion (the text it had) is in the audit log, written in the
same transaction as the change.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from telephony.store import audit
from telephony.store.qa_errors import NotAllowed, QAError
from telephony.store.schema import call_notes, calls, turns

MAX_NOTE_CHARS = 4000


def _checked_text(text: str) -> str:
    text = text.strip()
    if not text:
        raise QAError("a note needs some text")
    if len(text) > MAX_NOTE_CHARS:
        raise QAError(f"a note is at most {MAX_NOTE_CHARS} characters")
    return text


async def _check_target(conn: AsyncConnection, sid: str, turn_idx: int | None) -> None:
    if (await conn.execute(select(calls.c.sid).where(calls.c.sid == sid))).first() is None:
        raise QAError("no such call")
    if turn_idx is not None:
        q = select(turns.c.idx).where(turns.c.call_sid == sid, turns.c.idx == turn_idx)
        if (await conn.execute(q)).first() is None:
            raise QAError("no such turn")


async def add_note(
    engine: AsyncEngine, sid: str, author: str, text: str, turn_idx: int | None = None
) -> int:
    """The new note's id; audited as `qa.note.add`."""
    text = _checked_text(text)
    now = time.time()
    async with engine.begin() as conn:
        await _check_target(conn, sid, turn_idx)
        row = {"call_sid": sid, "turn_idx": turn_idx, "author": author, "text": text}
        result = await conn.execute(
            insert(call_notes).values(**row, created_at=now, updated_at=now)
        )
        note_id = int(result.inserted_primary_key[0])  # type: ignore[index]
        detail = {"note": note_id, "turn": turn_idx, "text": text}
        await audit.record_in(conn, author, "qa.note.add", sid, detail)
    return note_id


async def _note(conn: AsyncConnection, note_id: int, actor: str, others: bool) -> Any:
    note = (await conn.execute(select(call_notes).where(call_notes.c.id == note_id))).first()
    if note is None:
        raise QAError("no such note")
    if note.author != actor and not others:
        raise NotAllowed("only its author or a supervisor may change a note")
    return note


async def edit_note(
    engine: AsyncEngine, note_id: int, actor: str, text: str, *, may_change_others: bool
) -> str:
    """New text for a note; its call's SID. Audited as `qa.note.edit` with old and new."""
    text = _checked_text(text)
    async with engine.begin() as conn:
        note = await _note(conn, note_id, actor, may_change_others)
        if note.text != text:
            await conn.execute(
                update(call_notes)
                .where(call_notes.c.id == note_id)
                .values(text=text, updated_at=time.time())
            )
            detail = {"note": note_id, "author": note.author, "old": note.text, "new": text}
            await audit.record_in(conn, actor, "qa.note.edit", note.call_sid, detail)
    return str(note.call_sid)


async def delete_note(
    engine: AsyncEngine, note_id: int, actor: str, *, may_change_others: bool
) -> str:
    """Delete a note; its call's SID. Audited as `qa.note.delete` with the text it had."""
    async with engine.begin() as conn:
        note = await _note(conn, note_id, actor, may_change_others)
        await conn.execute(delete(call_notes).where(call_notes.c.id == note_id))
        detail = {
            "note": note_id,
            "author": note.author,
            "turn": note.turn_idx,
            "text": note.text,
        }
        await audit.record_in(conn, actor, "qa.note.delete", note.call_sid, detail)
    return str(note.call_sid)


async def notes_of(engine: AsyncEngine, sid: str) -> list[dict[str, Any]]:
    """A call's notes, oldest first (call-level ones have `turn_idx` None)."""
    q = select(call_notes).where(call_notes.c.call_sid == sid).order_by(call_notes.c.id)
    async with engine.connect() as conn:
        return [dict(r._mapping) for r in await conn.execute(q)]
