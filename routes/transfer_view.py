"""Transfers on the staff pages: the calls list marks a transferred call (and, while the person
who took it is likely still on the line, keeps it in the live view), and the call page says to
whom it went and what they were told, above the bot's conversation so far.

A transfer without transcription ends our part of the call, so "still with a person" is a
window after the call's end (`RECENT_S`); a transfer whose transcription continues is live.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from telephony.store.transfers import transfers_of
from telephony.transcript import EventKind

RECENT_S = 15 * 60  # a transferred call stays in the live view this long after our part ended


def _recent(call: dict[str, Any], now: float) -> bool:
    ended = call.get("ended_at")
    return ended is None or now - float(ended) < RECENT_S


async def attach(db: AsyncEngine, rows: list[dict[str, Any]], now: float | None = None) -> None:
    """Each row gets `transfer`: {to, ms, whisper, handover, recent}, or None."""
    found = await transfers_of(db, [r["sid"] for r in rows])
    now = time.time() if now is None else now
    for row in rows:
        got = found.get(row["sid"])
        row["transfer"] = {**got, "recent": _recent(row, now)} if got is not None else None


def of_call(call: dict[str, Any], now: float | None = None) -> dict[str, Any] | None:
    """The call page's transfer, from its events (the same shape as a row's)."""
    out: dict[str, Any] | None = None
    for event in call.get("events", ()):
        data = event.get("data") or {}
        if event["kind"] == EventKind.TRANSFER:
            out = {"to": str(data.get("to", "")), "ms": event["ms"], "whisper": None}
            out["handover"] = False
        elif out is not None and event["kind"] == EventKind.WHISPER:
            out["whisper"] = str(data.get("text", "")) or None
        elif out is not None and event["kind"] == EventKind.HANDOVER:
            out["handover"] = True
    if out is not None:
        out["recent"] = _recent(call, time.time() if now is None else now)
    return out
