"""Post-call insights in the store: the `call_insights` row of a call and its topic/intent
labels (`call_insight_labels`).

Life of a row: the transcript writer adds it as `pending` in the same transaction that ends
the call (telephony/store/batch.py), so a crash between the end and the analysis loses
nothing; the worker (telephony/insights/) turns it `done` (results stored), `failed` (the
error, without secrets or transcript) or `off` (the profile no longer asks for insights).
`telephony insights run` re-analyses ended calls from the CLI through the same functions.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from telephony.store.schema import call_insight_labels, call_insights, calls, dialect_insert, turns

PENDING, DONE, FAILED, OFF = "pending", "done", "failed", "off"
ERROR_CHARS = 500


@dataclass(frozen=True, slots=True)
class Insights:
    """What one analysis found (telephony/insights/analyze.py builds it)."""

    summary: str = ""
    sentiment: str = ""
    sentiment_score: float | None = None
    topics: list[dict[str, Any]] = field(default_factory=list)  # [{"label", "confidence"}]
    intents: list[dict[str, Any]] = field(default_factory=list)
    turn_sentiments: list[dict[str, Any]] = field(default_factory=list)

    def search_text(self) -> str:
        """What the list's full-text search finds the call by, besides its turns."""
        parts = [self.summary, *(t["label"] for t in self.topics)]
        parts += [i["label"] for i in self.intents]
        return "\n".join(p for p in parts if p)


async def mark_pending(conn: AsyncConnection, dialect: str, sids: Iterable[str]) -> None:
    """A pending row for each call (in the caller's transaction); one it already has, whatever
    its state, is left alone (a call's second `call_ended` links its recording)."""
    now = time.time()
    rows = [{"call_sid": sid, "status": PENDING, "updated_at": now} for sid in sorted(set(sids))]
    if rows:
        stmt = dialect_insert(dialect, call_insights).on_conflict_do_nothing(
            index_elements=["call_sid"]
        )
        await conn.execute(stmt, rows)


async def call_for_insights(engine: AsyncEngine, sid: str) -> dict[str, Any] | None:
    """The ended call's profile, its turns (by idx) and its insights status; None when the
    call is unknown or not over."""
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                select(
                    calls.c.sid,
                    calls.c.profile,
                    calls.c.ended_at,
                    call_insights.c.status,
                    call_insights.c.updated_at,
                )
                .select_from(
                    calls.outerjoin(call_insights, call_insights.c.call_sid == calls.c.sid)
                )
                .where(calls.c.sid == sid)
            )
        ).first()
        if row is None or row.ended_at is None:
            return None
        found = await conn.execute(
            select(turns.c.idx, turns.c.role, turns.c.text, turns.c.heard)
            .where(turns.c.call_sid == sid)
            .order_by(turns.c.idx)
        )
        return {
            "sid": row.sid,
            "profile": row.profile,
            "status": row.status,
            "updated_at": row.updated_at,
            "turns": [dict(t._mapping) for t in found],
        }


async def claim(engine: AsyncEngine, sid: str, seen_at: float) -> bool:
    """Take a pending call for analysis: True for exactly one taker of the row as it was seen
    (`updated_at` == `seen_at`). Touching `updated_at` also keeps every instance's sweep off it
    for a sweep interval, so two instances rarely analyse one call."""
    stmt = (
        update(call_insights)
        .where(
            call_insights.c.call_sid == sid,
            call_insights.c.status == PENDING,
            call_insights.c.updated_at == seen_at,
        )
        .values(updated_at=time.time())
    )
    async with engine.begin() as conn:
        return (await conn.execute(stmt)).rowcount == 1


async def _upsert(conn: AsyncConnection, dialect: str, sid: str, values: dict[str, Any]) -> None:
    values = {"updated_at": time.time(), **values}
    stmt = dialect_insert(dialect, call_insights).values(call_sid=sid, **values)
    await conn.execute(stmt.on_conflict_do_update(index_elements=["call_sid"], set_=values))


async def save_done(engine: AsyncEngine, sid: str, found: Insights, attempts: int) -> None:
    """The call's results, replacing any earlier ones, labels included, in one transaction."""
    async with engine.begin() as conn:
        await _upsert(
            conn,
            engine.dialect.name,
            sid,
            {
                "status": DONE,
                "attempts": attempts,
                "error": "",
                "summary": found.summary,
                "sentiment": found.sentiment,
                "sentiment_score": found.sentiment_score,
                "topics": found.topics,
                "intents": found.intents,
                "turn_sentiments": found.turn_sentiments,
                "search_text": found.search_text(),
            },
        )
        await conn.execute(delete(call_insight_labels).where(call_insight_labels.c.call_sid == sid))
        labels = [
            {"call_sid": sid, "kind": kind, "label": item["label"][:200], "folded": folded}
            for kind, items in (("topic", found.topics), ("intent", found.intents))
            for item in items
            if (folded := fold(item["label"]))
        ]
        if labels:
            await conn.execute(insert(call_insight_labels), labels)


async def save_failed(engine: AsyncEngine, sid: str, error: str, attempts: int) -> None:
    async with engine.begin() as conn:
        await _upsert(
            conn,
            engine.dialect.name,
            sid,
            {"status": FAILED, "attempts": attempts, "error": error[:ERROR_CHARS]},
        )


async def save_off(engine: AsyncEngine, sid: str) -> None:
    """The profile asks for no insights (any more): nothing is sent, nothing shown."""
    async with engine.begin() as conn:
        await _upsert(conn, engine.dialect.name, sid, {"status": OFF, "error": ""})


def fold(label: str) -> str:
    """A label as the filters compare it: case-insensitive, spaces collapsed, bounded."""
    return " ".join(label.casefold().split())[:200]


async def pending_sids(engine: AsyncEngine, limit: int, *, older_than: float) -> list[str]:
    """The longest-waiting pending calls, pending since before `older_than` (epoch s)."""
    stmt = (
        select(call_insights.c.call_sid)
        .where(call_insights.c.status == PENDING, call_insights.c.updated_at < older_than)
        .order_by(call_insights.c.updated_at, call_insights.c.call_sid)
        .limit(limit)
    )
    async with engine.connect() as conn:
        return list((await conn.execute(stmt)).scalars())


async def calls_to_run(
    engine: AsyncEngine, since: float, *, profiles: Sequence[str], force: bool
) -> list[str]:
    """Ended calls started at or after `since` in `profiles`, oldest first: those without
    `done` insights, or every one with `force`."""
    stmt = (
        select(calls.c.sid)
        .select_from(calls.outerjoin(call_insights, call_insights.c.call_sid == calls.c.sid))
        .where(
            calls.c.started_at >= since,
            calls.c.ended_at.is_not(None),
            calls.c.profile.in_(list(profiles)),
        )
        .order_by(calls.c.started_at, calls.c.sid)
    )
    if not force:
        stmt = stmt.where((call_insights.c.status.is_(None)) | (call_insights.c.status != DONE))
    async with engine.connect() as conn:
        return list((await conn.execute(stmt)).scalars())


async def insights_of(
    engine: AsyncEngine | AsyncConnection, sids: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """The insights rows of these calls (any status), by call SID."""
    if not sids:
        return {}
    stmt = select(call_insights).where(call_insights.c.call_sid.in_(list(sids)))
    if isinstance(engine, AsyncConnection):
        return {r.call_sid: dict(r._mapping) for r in await engine.execute(stmt)}
    async with engine.connect() as conn:
        return {r.call_sid: dict(r._mapping) for r in await conn.execute(stmt)}


async def labels_seen(engine: AsyncEngine, kind: str, limit: int = 200) -> list[str]:
    """Distinct labels of one kind (folded), sorted: the list filters' choices."""
    stmt = (
        select(call_insight_labels.c.folded)
        .distinct()
        .where(call_insight_labels.c.kind == kind)
        .order_by(call_insight_labels.c.folded)
        .limit(limit)
    )
    async with engine.connect() as conn:
        return list((await conn.execute(stmt)).scalars())
