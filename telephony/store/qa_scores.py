"""Scorecard scores: a supervisor scores a call against a scorecard from the YAML.

One current score per call, scorecard and scorer: scoring again replaces it, and the audit row
(`qa.score`, in the same transaction) holds the old score and answers beside the new ones.
The score is computed here from the scorecard (weights and pass mark), never taken from a form.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from telephony.config.qa import Scorecard
from telephony.store import audit
from telephony.store.qa_errors import QAError
from telephony.store.schema import call_scores, calls, dialect_insert


def _facts(row: Any) -> dict[str, Any]:
    return {"score": row.score, "passed": row.passed, "answers": row.answers}


async def save_score(
    engine: AsyncEngine,
    sid: str,
    name: str,
    card: Scorecard,
    answers: dict[str, bool],
    scorer: str,
) -> dict[str, Any]:
    """Score the call with scorecard `name` (`card`: its current definition); the stored row.
    Answers for criteria the card does not have are refused, as is a card for other profiles;
    a criterion left out is not met."""
    ids = {c.id for c in card.criteria}
    if unknown := sorted(set(answers) - ids):
        raise QAError(f"not criteria of {name}: {', '.join(unknown)}")
    answers = {c.id: bool(answers.get(c.id)) for c in card.criteria}
    score = card.score(answers)
    row = {
        "call_sid": sid,
        "scorecard": name,
        "scorer": scorer,
        "scored_at": time.time(),
        "answers": answers,
        "score": score,
        "passed": score >= card.pass_mark,
    }
    key = (call_scores.c.call_sid == sid, call_scores.c.scorecard == name)
    async with engine.begin() as conn:
        profile = (await conn.execute(select(calls.c.profile).where(calls.c.sid == sid))).first()
        if profile is None:
            raise QAError("no such call")
        if not card.applies_to(profile[0]):
            raise QAError(f"{name} is not a scorecard for profile {profile[0] or '(none)'}")
        old = await conn.execute(select(call_scores).where(*key, call_scores.c.scorer == scorer))
        before = old.first()
        stmt = dialect_insert(engine.dialect.name, call_scores)
        cols = ("scored_at", "answers", "score", "passed")
        await conn.execute(
            stmt.values(**row).on_conflict_do_update(
                index_elements=["call_sid", "scorecard", "scorer"],
                set_={c: stmt.excluded[c] for c in cols},
            )
        )
        detail = {
            "scorecard": name,
            "old": _facts(before) if before else None,
            "new": {"score": score, "passed": row["passed"], "answers": answers},
            "pass_mark": card.pass_mark,
        }
        await audit.record_in(conn, scorer, "qa.score", sid, detail)
    return row


async def scores_of(engine: AsyncEngine, sid: str) -> list[dict[str, Any]]:
    """The call's current scores, by scorecard, newest first within one."""
    q = (
        select(call_scores)
        .where(call_scores.c.call_sid == sid)
        .order_by(call_scores.c.scorecard, call_scores.c.scored_at.desc())
    )
    async with engine.connect() as conn:
        return [dict(r._mapping) for r in await conn.execute(q)]
