"""Reads of calls' transfers: the whisper a transfer's route says, and the staff list's marks.

A transfer is two events of the call (telephony/transcript.py): `transfer` (to whom, when) and,
on a warm transfer, `whisper` (what the person who answered was told, already redacted).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from telephony.store.schema import events
from telephony.transcript import EventKind

KINDS = (EventKind.TRANSFER.value, EventKind.WHISPER.value, EventKind.HANDOVER.value)


async def latest_event(engine: AsyncEngine, sid: str, kind: str) -> dict[str, Any] | None:
    """The data of a call's latest event of this kind (a transfer's whisper), or None."""
    stmt = (
        select(events.c.data)
        .where(events.c.call_sid == sid, events.c.kind == kind)
        .order_by(events.c.ms.desc(), events.c.id.desc())
        .limit(1)
    )
    async with engine.connect() as conn:
        data = (await conn.execute(stmt)).scalar_one_or_none()
    return dict(data) if isinstance(data, dict) else None


async def transfers_of(engine: AsyncEngine, sids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per call SID that was transferred: `to`, `ms` (on the call clock), `whisper` (the text
    or None) and `handover` (its transcription continues). One query for a page of calls."""
    if not sids:
        return {}
    stmt = (
        select(events.c.call_sid, events.c.kind, events.c.ms, events.c.data)
        .where(events.c.call_sid.in_(list(sids)), events.c.kind.in_(KINDS))
        .order_by(events.c.ms, events.c.id)
    )
    found: dict[str, dict[str, Any]] = {}
    async with engine.connect() as conn:
        for sid, kind, ms, data in await conn.execute(stmt):
            data = data if isinstance(data, dict) else {}
            if kind == EventKind.TRANSFER:  # the latest transfer wins (there is one, normally)
                found[sid] = {"to": str(data.get("to", "")), "ms": ms, "whisper": None}
                found[sid]["handover"] = False
            elif sid in found and kind == EventKind.WHISPER:
                found[sid]["whisper"] = str(data.get("text", "")) or None
            elif sid in found:
                found[sid]["handover"] = True
    return found
