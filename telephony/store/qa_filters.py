"""The calls list's QA side: its filters (tag, score, scorer, not yet reviewed) and the QA
columns of each listed call (tags, latest score, reviewed, open flags).

Kept apart from queries.py (the list's other filters and search) so QA is one concept here.
Score filters apply to one score row together: "scorer bob, at least 80" is a call bob scored
80 or more, not one bob scored and someone else gave 80.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, and_, exists, not_, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from telephony.store.review_queue import open_flag
from telephony.store.schema import call_reviews, call_scores, call_tags, calls, review_flags

if TYPE_CHECKING:
    from telephony.store.queries import CallFilter


def qa_conditions(f: CallFilter) -> list[ColumnElement[bool]]:
    conds: list[ColumnElement[bool]] = []
    # IN (the few tagged or scored calls), not EXISTS probed per call: read from the tags'
    # and scores' own indexes, the cost follows the matches, not the calls.
    if f.tag:
        conds.append(calls.c.sid.in_(select(call_tags.c.call_sid).where(call_tags.c.tag == f.tag)))
    score: list[ColumnElement[bool]] = []
    if f.scorer:
        score.append(call_scores.c.scorer == f.scorer)
    if f.min_score is not None:
        score.append(call_scores.c.score >= f.min_score)
    if f.max_score is not None:
        score.append(call_scores.c.score <= f.max_score)
    if f.passed is not None:
        score.append(call_scores.c.passed == f.passed)
    if score:
        conds.append(calls.c.sid.in_(select(call_scores.c.call_sid).where(and_(*score))))
    if f.unreviewed:
        reviewed = exists().where(call_reviews.c.call_sid == calls.c.sid)
        conds.append(or_(not_(reviewed), open_flag()))
    return conds


async def qa_columns(conn: AsyncConnection, sids: list[str]) -> dict[str, dict[str, Any]]:
    """Per call: `tags` (names), `score` (the latest score row, or None), `reviewed` and
    `flags` (the rules of its open flags)."""
    out: dict[str, dict[str, Any]] = {
        sid: {"tags": [], "score": None, "reviewed": False, "flags": []} for sid in sids
    }
    if not sids:
        return out
    tq = select(call_tags.c.call_sid, call_tags.c.tag).where(call_tags.c.call_sid.in_(sids))
    for sid, tag in await conn.execute(tq.order_by(call_tags.c.tag)):
        out[sid]["tags"].append(tag)
    sq = (
        select(call_scores)
        .where(call_scores.c.call_sid.in_(sids))
        .order_by(call_scores.c.scored_at.desc())
    )
    for row in await conn.execute(sq):
        if out[row.call_sid]["score"] is None:
            out[row.call_sid]["score"] = dict(row._mapping)
    rq = select(call_reviews.c.call_sid).where(call_reviews.c.call_sid.in_(sids))
    for (sid,) in await conn.execute(rq):
        out[sid]["reviewed"] = True
    fq = select(review_flags.c.call_sid, review_flags.c.rule).where(
        review_flags.c.call_sid.in_(sids), review_flags.c.reviewed_at.is_(None)
    )
    for sid, rule in await conn.execute(fq.order_by(review_flags.c.rule)):
        out[sid]["flags"].append(rule)
    return out
