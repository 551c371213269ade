"""The calls list's insights filters and search, on SQLite and PostgreSQL (the `db` fixture of
test_store: a fresh, migrated database per test)."""

from __future__ import annotations

import pytest

from telephony.store.insights import Insights, labels_seen, save_done, save_failed
from telephony.store.queries import CallFilter, count_calls, search_calls
from tests import test_store
from tests.insights_helpers import add_call
from tests.test_store import Db

pytestmark = pytest.mark.clock(4)

db = test_store.db


def found(*labels: str) -> list[dict[str, object]]:
    return [{"label": label, "confidence": 0.9} for label in labels]


async def seed(db: Db) -> None:
    said = [("caller", "hello there"), ("bot", "how can I help")]
    for n, sid in enumerate(("CA1", "CA2", "CA3", "CA4")):
        await add_call(db.engine, sid, said=said, started_at=1000.0 + n)
    await save_done(
        db.engine,
        "CA1",
        Insights(
            summary="The caller asks for a reimbursement of a damaged parcel.",
            sentiment="negative",
            sentiment_score=-0.6,
            topics=found("Refund request", "Delivery"),
            intents=found("Request refund"),
        ),
        attempts=1,
    )
    await save_done(
        db.engine,
        "CA2",
        Insights(
            summary="Opening hours question.",
            topics=found("Opening hours"),
            intents=found("Ask opening hours"),
        ),
        attempts=1,
    )
    # A failed analysis: its (absent) results find nothing.
    await save_failed(db.engine, "CA3", "HTTP 503", attempts=4)


async def sids(db: Db, f: CallFilter) -> list[str]:
    rows = await search_calls(db.engine, f)
    assert await count_calls(db.engine, f) == len(rows)
    return [r["sid"] for r in rows]


async def test_topic_and_intent_filters(db: Db) -> None:
    await seed(db)
    assert await sids(db, CallFilter(topic="refund request")) == ["CA1"]
    assert await sids(db, CallFilter(topic="  REFUND   Request ")) == ["CA1"]  # folded
    assert await sids(db, CallFilter(topic="Refund")) == []  # a whole label, not a part
    assert await sids(db, CallFilter(intent="ask opening hours")) == ["CA2"]
    assert await sids(db, CallFilter(topic="delivery", intent="request refund")) == ["CA1"]
    assert await sids(db, CallFilter(topic="delivery", intent="ask opening hours")) == []
    assert await sids(db, CallFilter()) == ["CA4", "CA3", "CA2", "CA1"]
    assert await labels_seen(db.engine, "topic") == ["delivery", "opening hours", "refund request"]
    assert await labels_seen(db.engine, "intent") == ["ask opening hours", "request refund"]


async def test_search_finds_summaries_topics_and_intents_as_well_as_turns(db: Db) -> None:
    await seed(db)
    assert await sids(db, CallFilter(q="reimbursement")) == ["CA1"]  # the summary only
    assert await sids(db, CallFilter(q="damaged parcels")) == ["CA1"]  # stems, all words
    assert await sids(db, CallFilter(q="delivery")) == ["CA1"]  # a topic
    assert await sids(db, CallFilter(q="opening hours")) == ["CA2"]
    assert await sids(db, CallFilter(q="hours -opening")) == []
    assert await sids(db, CallFilter(q="reimbursement or hours")) == ["CA2", "CA1"]
    assert await sids(db, CallFilter(q="hello")) == ["CA4", "CA3", "CA2", "CA1"]  # turns
    assert await sids(db, CallFilter(q="reimbursement", topic="opening hours")) == []
    rows = await search_calls(db.engine, CallFilter(q="reimbursement"))
    assert rows[0]["snippet"] is None  # no turn matched: nothing to highlight there


async def test_new_results_replace_the_old_ones_everywhere(db: Db) -> None:
    await seed(db)
    await save_done(
        db.engine,
        "CA1",
        Insights(summary="A billing question.", topics=found("Billing"), intents=[]),
        attempts=1,
    )
    assert await sids(db, CallFilter(topic="refund request")) == []
    assert await sids(db, CallFilter(intent="request refund")) == []
    assert await sids(db, CallFilter(q="reimbursement")) == []
    assert await sids(db, CallFilter(q="billing")) == ["CA1"]
    assert await sids(db, CallFilter(topic="billing")) == ["CA1"]
