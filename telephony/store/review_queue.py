"""The review queue: each ended call's flags (telephony/store/review_rules.py), kept up to date
whenever its end is written, and supervisors marking calls reviewed.

Flags are computed where the dashboard's facts are (the writer's batch, the restart sweep),
from the stored rows and the profile's thresholds in the current YAML (`ReviewFor`, wired by
the app; the defaults without one). Recomputing is idempotent: a rule still tripped keeps its
row (and its review), a new one is added unreviewed (the call is back in the queue), and an
unreviewed flag whose rule no longer trips is dropped. Calls ended before revision 0010 get
theirs from `backfill` (`telephony qa flag --since`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from sqlalchemy import Connection, delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from telephony.config.qa import ReviewConfig
from telephony.outcome import Outcome
from telephony.store import audit
from telephony.store.qa_errors import QAError
from telephony.store.review_rules import flags_of
from telephony.store.schema import call_reviews, calls, dialect_insert, events, review_flags, turns
from telephony.transcript import EventKind

log = logging.getLogger(__name__)

ReviewFor = Callable[[str], ReviewConfig]  # profile name -> its thresholds

BACKFILL_CHUNK = 500
_DEFAULT = ReviewConfig()


def default_review(_profile: str) -> ReviewConfig:
    return _DEFAULT


async def refresh_flags(
    conn: AsyncConnection, sids: Iterable[str], review_for: ReviewFor = default_review
) -> None:
    """`refresh_flags_sync` in an async connection's transaction."""
    wanted = sorted(set(sids))
    if wanted:
        await conn.run_sync(refresh_flags_sync, wanted, review_for)


def refresh_flags_sync(
    conn: Connection, sids: Iterable[str], review_for: ReviewFor = default_review
) -> int:
    """Recompute the flags of the ended calls among `sids`; how many calls have flags now.
    A live call's flags are left alone (its end will recompute them)."""
    wanted = sorted(set(sids))
    if not wanted:
        return 0
    cols = (calls.c.sid, calls.c.profile, calls.c.mode, calls.c.end_reason, calls.c.end_detail)
    ended = {
        r.sid: r._mapping
        for r in conn.execute(
            select(*cols).where(
                calls.c.sid.in_(wanted),
                calls.c.ended_at.is_not(None),
                calls.c.end_reason != "",
                calls.c.end_reason != str(Outcome.REFUSED),  # never became a call
            )
        )
    }
    if not ended:
        return 0
    turns_of: dict[str, list[Mapping[Any, Any]]] = {sid: [] for sid in ended}
    tcols = (
        turns.c.call_sid,
        turns.c.idx,
        turns.c.role,
        turns.c.text,
        turns.c.start_ms,
        turns.c.interrupted,
        turns.c.latency_ms,
        turns.c.meta,
    )
    for t in conn.execute(select(*tcols).where(turns.c.call_sid.in_(list(ended)))):
        turns_of[t.call_sid].append(t._mapping)
    events_of: dict[str, list[tuple[str, Any, int]]] = {sid: [] for sid in ended}
    wanted_kinds = [str(EventKind.UPSTREAM_FAILED), str(EventKind.HANDOVER)]
    found = select(events.c.call_sid, events.c.kind, events.c.data, events.c.ms).where(
        events.c.call_sid.in_(list(ended)), events.c.kind.in_(wanted_kinds)
    )
    for e in conn.execute(found):
        events_of[e.call_sid].append((e.kind, e.data, e.ms))
    old: dict[str, dict[str, Mapping[Any, Any]]] = {sid: {} for sid in ended}
    for f in conn.execute(select(review_flags).where(review_flags.c.call_sid.in_(list(ended)))):
        old[f.call_sid][f.rule] = f._mapping
    now = time.time()
    fresh: list[dict[str, Any]] = []
    flagged = 0
    for sid, call in ended.items():
        try:
            new = flags_of(call, turns_of[sid], events_of[sid], review_for(call["profile"] or ""))
        except Exception:  # a surprise in QA must never cost the transcript its write
            log.exception("review flags not computed for %s", sid)
            continue
        flagged += bool(new)
        for rule, detail in new.items():
            before = old[sid].get(rule)
            if before is None:
                fresh.append({"call_sid": sid, "rule": rule, "detail": detail, "flagged_at": now})
            elif before["detail"] != detail:
                conn.execute(
                    update(review_flags)
                    .where(review_flags.c.call_sid == sid, review_flags.c.rule == rule)
                    .values(detail=detail)
                )
        stale = [r for r, f in old[sid].items() if r not in new and f["reviewed_at"] is None]
        if stale:
            conn.execute(
                delete(review_flags).where(
                    review_flags.c.call_sid == sid, review_flags.c.rule.in_(stale)
                )
            )
    if fresh:
        stmt = dialect_insert(conn.dialect.name, review_flags)
        conn.execute(stmt.on_conflict_do_nothing(index_elements=["call_sid", "rule"]), fresh)
    return flagged


async def backfill(
    engine: AsyncEngine, since: float, review_for: ReviewFor, *, actor: str
) -> tuple[int, int]:
    """Flags for every ended call started at or after `since` (epoch s): (calls looked at,
    calls flagged). In chunks, each its own transaction; audited once as `qa.flag`."""
    seen = flagged = 0
    after = ""
    while True:
        page = (
            select(calls.c.sid)
            .where(calls.c.started_at >= since, calls.c.ended_at.is_not(None), calls.c.sid > after)
            .order_by(calls.c.sid)
            .limit(BACKFILL_CHUNK)
        )
        async with engine.begin() as conn:
            sids = list((await conn.execute(page)).scalars())
            if not sids:
                break
            flagged += await conn.run_sync(refresh_flags_sync, sids, review_for)
        seen += len(sids)
        after = sids[-1]
    async with engine.begin() as conn:
        detail = {"since": since, "calls": seen, "flagged": flagged}
        await audit.record_in(conn, actor, "qa.flag", "", detail)
    return seen, flagged


async def flags_for(engine: AsyncEngine, sid: str) -> list[dict[str, Any]]:
    """A call's flags, in the rules' order of flagging."""
    q = (
        select(review_flags)
        .where(review_flags.c.call_sid == sid)
        .order_by(review_flags.c.flagged_at, review_flags.c.rule)
    )
    async with engine.connect() as conn:
        return [dict(r._mapping) for r in await conn.execute(q)]


async def review_of(engine: AsyncEngine, sid: str) -> dict[str, Any] | None:
    """Who last marked the call reviewed, and when; None if nobody has."""
    q = select(call_reviews).where(call_reviews.c.call_sid == sid)
    async with engine.connect() as conn:
        row = (await conn.execute(q)).first()
    return dict(row._mapping) if row else None


async def mark_reviewed(engine: AsyncEngine, sid: str, actor: str) -> list[str]:
    """The call is reviewed by `actor`: its open flags are stamped (it leaves the queue).
    The rules it cleared; audited as `qa.review` in the same transaction."""
    now = time.time()
    async with engine.begin() as conn:
        found = (await conn.execute(select(calls.c.sid).where(calls.c.sid == sid))).first()
        if found is None:
            raise QAError("no such call")
        open_q = select(review_flags.c.rule).where(
            review_flags.c.call_sid == sid, review_flags.c.reviewed_at.is_(None)
        )
        rules = sorted((await conn.execute(open_q)).scalars())
        await conn.execute(
            update(review_flags)
            .where(review_flags.c.call_sid == sid, review_flags.c.reviewed_at.is_(None))
            .values(reviewed_by=actor, reviewed_at=now)
        )
        stmt = dialect_insert(engine.dialect.name, call_reviews)
        row = {"call_sid": sid, "reviewed_by": actor, "reviewed_at": now}
        await conn.execute(
            stmt.values(**row).on_conflict_do_update(
                index_elements=["call_sid"], set_={"reviewed_by": actor, "reviewed_at": now}
            )
        )
        await audit.record_in(conn, actor, "qa.review", sid, {"flags": rules})
    return rules


def open_flag(rule: str = "") -> Any:
    """The call has an unreviewed flag (of `rule`, if given): the queue's condition. Read from
    the open flags (their partial index), never by probing every call."""
    flagged = select(review_flags.c.call_sid).where(review_flags.c.reviewed_at.is_(None))
    if rule:
        flagged = flagged.where(review_flags.c.rule == rule)
    return calls.c.sid.in_(flagged)


async def queue(
    engine: AsyncEngine, *, rule: str = "", profile: str = "", limit: int = 100, offset: int = 0
) -> tuple[list[dict[str, Any]], int]:
    """Flagged calls not yet reviewed, newest first, each with its open `flags`; and how many
    there are in all."""
    where = [open_flag(rule)]
    if profile:
        where.append(calls.c.profile == profile)
    page = (
        select(calls)
        .where(*where)
        .order_by(calls.c.started_at.desc(), calls.c.sid)
        .limit(limit)
        .offset(offset)
    )
    async with engine.connect() as conn:
        count = select(func.count()).select_from(calls).where(*where)
        total = int((await conn.execute(count)).scalar_one())
        rows = [dict(r._mapping) for r in await conn.execute(page)]
        sids = [r["sid"] for r in rows]
        flags: dict[str, list[dict[str, Any]]] = {sid: [] for sid in sids}
        if sids:
            fq = (
                select(review_flags)
                .where(review_flags.c.call_sid.in_(sids), review_flags.c.reviewed_at.is_(None))
                .order_by(review_flags.c.rule)
            )
            for f in await conn.execute(fq):
                flags[f.call_sid].append(dict(f._mapping))
    for row in rows:
        row["flags"] = flags[row["sid"]]
    return rows, total
