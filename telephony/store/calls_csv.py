"""The calls list as CSV: every call a filter matches, newest first, streamed page by page.

Pages are read by key (the last row's `started_at` and `sid`), never by offset, so each costs
the same however deep the export goes and memory stays at one page whatever the row count.
Cells a spreadsheet would run as a formula (starting with = + - @, a tab or a return; a phone
number starts with +) get a leading apostrophe, as OWASP advises for CSV exports.
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, case, func, or_, select
from sqlalchemy.ext.asyncio import AsyncEngine

from telephony.outcome import label
from telephony.store.insights import DONE, insights_of
from telephony.store.qa_filters import qa_columns
from telephony.store.queries import CallFilter, conditions
from telephony.store.schema import call_facts, calls, turns

PAGE_ROWS = 1000
BASE_COLUMNS = (
    "call_sid",
    "started_utc",
    "ended_utc",
    "from",
    "to",
    "profile",
    "mode",
    "outcome",
    "end_detail",
    "duration_s",
    "turns",
    "bot_turns",
    "barge_ins",
    "reconnects",
    "reply_latency_mean_ms",
    "reply_latency_max_ms",
)
# Post-call insights (telephony/store/insights.py), empty unless done; labels joined by "; ".
INSIGHT_COLUMNS = ("summary", "sentiment", "sentiment_score", "topics", "intents")
# QA: the call's tags (";"-separated) and its latest score (telephony/store/qa_filters.py).
QA_COLUMNS = ("tags", "score", "passed", "scorer", "reviewed")
COLUMNS = (*BASE_COLUMNS, *INSIGHT_COLUMNS, *QA_COLUMNS)
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: Any) -> Any:
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def _utc(epoch: float | None) -> str:
    if epoch is None:
        return ""
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _insight_cells(row: dict[str, Any] | None) -> tuple[Any, ...]:
    if row is None or row["status"] != DONE:
        return ("",) * len(INSIGHT_COLUMNS)
    score = row["sentiment_score"]
    return (
        row["summary"],
        row["sentiment"],
        "" if score is None else round(float(score), 3),
        "; ".join(t["label"] for t in row["topics"] or ()),
        "; ".join(t["label"] for t in row["intents"] or ()),
    )


async def csv_lines(engine: AsyncEngine, f: CallFilter) -> AsyncIterator[str]:
    """The header, then one page of rows at a time (each a chunk of CSV text)."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(COLUMNS)
    yield out.getvalue()
    dialect = engine.dialect.name
    where = conditions(f, dialect)
    after: tuple[float, str] | None = None
    while True:
        page = select(calls).where(*where)
        if after is not None:
            started, sid = after
            page = page.where(
                or_(
                    calls.c.started_at < started,
                    and_(calls.c.started_at == started, calls.c.sid > sid),
                )
            )
        page = page.order_by(calls.c.started_at.desc(), calls.c.sid).limit(PAGE_ROWS)
        async with engine.connect() as conn:
            rows = [dict(r._mapping) for r in await conn.execute(page)]
            if not rows:
                return
            sids = [r["sid"] for r in rows]
            is_bot = turns.c.role == "bot"
            stats_q = (
                select(
                    turns.c.call_sid,
                    func.count(),
                    func.avg(case((is_bot, turns.c.latency_ms))),
                    func.max(case((is_bot, turns.c.latency_ms))),
                )
                .where(turns.c.call_sid.in_(sids))
                .group_by(turns.c.call_sid)
            )
            stats = {sid: (n, avg, mx) for sid, n, avg, mx in await conn.execute(stats_q)}
            facts_q = select(
                call_facts.c.sid,
                call_facts.c.bot_turns,
                call_facts.c.barge_ins,
                call_facts.c.reconnects,
            ).where(call_facts.c.sid.in_(sids))
            facts = {sid: (b, g, r) for sid, b, g, r in await conn.execute(facts_q)}
            found = await insights_of(conn, sids)
            qa = await qa_columns(conn, sids)
        out = io.StringIO()
        writer = csv.writer(out)
        for r in rows:
            n, avg, mx = stats.get(r["sid"], (0, None, None))
            bot_turns, barge_ins, reconnects = facts.get(r["sid"], ("", "", ""))
            duration = r["duration_ms"]
            q = qa[r["sid"]]
            scored = q["score"] or {}
            writer.writerow(
                [
                    _cell(v)
                    for v in (
                        r["sid"],
                        _utc(r["started_at"]),
                        _utc(r["ended_at"]),
                        r["from_number"],
                        r["to_number"],
                        r["profile"],
                        r["mode"],
                        label(r["end_reason"]) if r["ended_at"] is not None else "in progress",
                        r["end_detail"],
                        "" if duration is None else f"{duration / 1000:.1f}",
                        n,
                        bot_turns,
                        barge_ins,
                        reconnects,
                        "" if avg is None else round(float(avg)),
                        "" if mx is None else mx,
                        *_insight_cells(found.get(r["sid"])),
                        ";".join(q["tags"]),
                        "" if not scored else f"{scored['score']:g}",
                        "" if not scored else ("yes" if scored["passed"] else "no"),
                        scored.get("scorer", ""),
                        "yes" if q["reviewed"] and not q["flags"] else "no",
                    )
                ]
            )
        yield out.getvalue()
        last = rows[-1]
        after = (last["started_at"], last["sid"])
        if len(rows) < PAGE_ROWS:
            return
