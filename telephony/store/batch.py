"""One batch of the transcript store's queued rows, written as one transaction.

The writer (telephony/store/transcripts.py) decides when to write and what to retry; this module
decides what SQL a batch becomes: one statement per kind of row, stub call rows for the foreign
keys, refused rows never over a call's real row, and status callbacks only for calls with a row.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from telephony.store.call_stats import refresh_facts
from telephony.store.insights import mark_pending
from telephony.store.review_queue import ReviewFor, default_review, refresh_flags
from telephony.store.schema import calls, dialect_insert, events, turns, upsert_statement

Kind = Literal["call_started", "call_ended", "turn", "event", "status", "refused"]
# A call_ended row's flag (not a column): its profile wants post-call insights, so the same
# transaction adds the call's pending call_insights row (telephony/store/insights.py).
INSIGHTS = "insights"

_START_COLS = (
    "from_number",
    "to_number",
    "profile",
    "mode",
    "started_at",
    "recording_path",
    "instance_id",
)
_END_COLS = ("ended_at", "end_reason", "end_detail", "duration_ms")
# Upserted only when the row carries them (instance_id: a resumed call's new carrier).
_END_OPTIONAL_COLS = ("mode", "recording_path", "instance_id")
_TURN_COLS = (
    "role",
    "text",
    "heard",
    "interrupted",
    "interrupted_at_ms",
    "start_ms",
    "end_ms",
    "latency_ms",
    "meta",
)


@dataclass(slots=True)
class Row:
    """One queued write: its kind and column values (a status row: until when it may wait)."""

    kind: Kind
    values: dict[str, Any]
    until: float = 0.0  # status rows: monotonic deadline for their call's row to appear


async def write_batch(
    engine: AsyncEngine, rows: list[Row], review_for: ReviewFor = default_review
) -> list[Row]:
    """Write rows in one transaction. Column sets of the kinds are disjoint enough that
    the kinds commute, so each kind goes in one statement (last write wins per key).
    `review_for`: the profiles' QA review thresholds, for the flags of calls it ends.
    Returns the status rows whose call has no row (nothing of theirs written)."""
    dialect = engine.dialect.name
    started: dict[str, dict[str, Any]] = {}
    ended: dict[str, dict[str, Any]] = {}
    refused: dict[str, dict[str, Any]] = {}
    turn_rows: dict[tuple[str, int], dict[str, Any]] = {}
    event_rows: list[dict[str, Any]] = []
    status_rows: list[Row] = []
    sids: set[str] = set()
    wants_insights: set[str] = set()
    for row in rows:
        v = row.values
        if row.kind == "call_started":
            started[v["sid"]] = v
        elif row.kind == "call_ended":
            if INSIGHTS in v:
                v = {k: x for k, x in v.items() if k != INSIGHTS}
                if row.values[INSIGHTS] and v.get("ended_at") is not None:
                    wants_insights.add(v["sid"])
            ended[v["sid"]] = v
        elif row.kind == "refused":
            refused[v["sid"]] = v
        elif row.kind == "turn":
            turn_rows[(v["call_sid"], v["idx"])] = v
            sids.add(v["call_sid"])
        elif row.kind == "status":
            status_rows.append(row)
        else:
            event_rows.append(v)
            sids.add(v["call_sid"])
    unmatched: list[Row] = []
    async with engine.begin() as conn:
        if started:
            await conn.execute(
                upsert_statement(dialect, calls, ("sid",), _START_COLS), list(started.values())
            )
        if refused:  # never over a row the call already has
            await conn.execute(
                dialect_insert(dialect, calls).on_conflict_do_nothing(index_elements=["sid"]),
                list(refused.values()),
            )
        # A call row must exist for the foreign keys even if call_started was dropped.
        stubs = sids - started.keys() - ended.keys() - refused.keys()
        if stubs:
            now = time.time()
            await conn.execute(
                dialect_insert(dialect, calls).on_conflict_do_nothing(index_elements=["sid"]),
                [{"sid": s, "started_at": now} for s in sorted(stubs)],
            )
        if ended:
            await _write_ended(conn, dialect, list(ended.values()))
        if wants_insights:
            await mark_pending(conn, dialect, wants_insights)
        if turn_rows:
            await conn.execute(
                upsert_statement(dialect, turns, ("call_sid", "idx"), _TURN_COLS),
                list(turn_rows.values()),
            )
        if status_rows:  # after every calls row of this batch
            wanted = {r.values["call_sid"] for r in status_rows}
            known = set(
                (await conn.execute(select(calls.c.sid).where(calls.c.sid.in_(wanted))))
                .scalars()
                .all()
            )
            unmatched = [r for r in status_rows if r.values["call_sid"] not in known]
            event_rows += [r.values for r in status_rows if r.values["call_sid"] in known]
        if event_rows:
            await conn.execute(dialect_insert(dialect, events), event_rows)
        # The dashboard's facts of every call this batch ended, resumed or added to after
        # its end (a late turn): from what is now in the rows.
        touched = ended.keys() | refused.keys()
        late = sids - touched
        if late:
            touched |= set(
                (
                    await conn.execute(
                        select(calls.c.sid).where(
                            calls.c.sid.in_(late), calls.c.ended_at.is_not(None)
                        )
                    )
                )
                .scalars()
                .all()
            )
        await refresh_facts(conn, touched)
        await refresh_flags(conn, touched, review_for)  # the review queue's, likewise
    return unmatched


def insight_sids(rows: list[Row]) -> list[str]:
    """Calls these rows ended with insights wanted: once written, the worker's to analyse."""
    return [
        r.values["sid"]
        for r in rows
        if r.kind == "call_ended" and r.values.get(INSIGHTS) and r.values.get("ended_at")
    ]


async def _write_ended(conn: AsyncConnection, dialect: str, rows: list[dict[str, Any]]) -> None:
    # One statement per set of optional columns present, so an absent one is never nulled.
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for r in rows:
        extra = tuple(c for c in _END_OPTIONAL_COLS if c in r)
        groups.setdefault(extra, []).append(r)
    for extra, group in groups.items():
        await conn.execute(upsert_statement(dialect, calls, ("sid",), (*_END_COLS, *extra)), group)
