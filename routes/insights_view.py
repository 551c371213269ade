"""Post-call insights on the staff pages: rows' summaries, the call page's block, the per-turn
sentiment markers and the list's topic/intent filter choices.

Kept apart from routes/staff.py so the list and call page handlers only call in here.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from telephony.store.insights import DONE, insights_of, labels_seen

SENTIMENT_WORDS = {"positive": "positive", "negative": "negative", "neutral": "neutral"}


async def attach(db: AsyncEngine, rows: list[dict[str, Any]]) -> None:
    """Each row gets `insights`: its `done` insights row, or None."""
    found = await insights_of(db, [r["sid"] for r in rows])
    for row in rows:
        got = found.get(row["sid"])
        row["insights"] = got if got is not None and got["status"] == DONE else None


async def of_call(db: AsyncEngine, sid: str) -> dict[str, Any] | None:
    """The call's insights row whatever its status (the page says pending or failed too)."""
    return (await insights_of(db, [sid])).get(sid)


def turn_sentiments(insights: dict[str, Any] | None) -> dict[int, dict[str, Any]]:
    """Turn idx -> {"sentiment", "score"} for the timeline's markers (done insights only)."""
    if not insights or insights["status"] != DONE:
        return {}
    return {
        int(t["idx"]): t
        for t in insights.get("turn_sentiments") or ()
        if t.get("sentiment") in SENTIMENT_WORDS
    }


async def filter_choices(db: AsyncEngine) -> dict[str, list[str]]:
    return {"topics": await labels_seen(db, "topic"), "intents": await labels_seen(db, "intent")}
