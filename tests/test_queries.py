"""Staff UI read queries: filters, full-text search, snippets, migration 0002 — on SQLite and
real PostgreSQL (the ``db`` fixture of test_store: a fresh, migrated database per test)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, insert, text
from sqlalchemy.ext.asyncio import AsyncEngine

from telephony.store.migrate import alembic_config, upgrade
from telephony.store.queries import (
    MARK_END,
    MARK_START,
    CallFilter,
    _clip,
    count_calls,
    get_call,
    profiles_seen,
    search_calls,
)
from telephony.store.schema import calls, turns
from telephony.store.transcripts import TranscriptStore
from telephony.transcript import Turn
from tests import test_store
from tests.serve_process import eventually
from tests.test_store import Db, count_turns

pytestmark = pytest.mark.clock(4)  # timers run 4x real time (tests/fast_clock.py)

db = test_store.db  # the fixture: each test on SQLite and PostgreSQL, a fresh migrated db

ALL = ["CA5", "CA4", "CA3", "CA2", "CA1"]  # newest first

CALLS: list[dict[str, Any]] = [
    dict(
        sid="CA1",
        from_number="+15551230001",
        to_number="+15550001000",
        profile="support",
        mode="flux",
        started_at=1000.0,
        ended_at=1012.0,
        end_reason="caller-hangup",
        duration_ms=12_000,
    ),
    dict(
        sid="CA2",
        from_number="+15557770002",
        to_number="+15550002000",
        profile="sales",
        mode="flux",
        started_at=2000.0,
        ended_at=2030.0,
        end_reason="bot-hangup",
        duration_ms=30_000,
    ),
    dict(
        sid="CA3",
        from_number="+442079460003",
        to_number="+15550001000",
        profile="support",
        mode="agent",
        started_at=3000.0,
    ),
    dict(sid="CA4", started_at=4000.0, ended_at=4005.0, end_reason="stream-error"),
    dict(
        sid="CA5",
        from_number="+15551239999",
        to_number="+15550003000",
        profile="billing",
        mode="flux",
        started_at=5000.0,
        recording_path="/rec/CA5.wav",
    ),
]


def _turn(sid: str, idx: int, role: str, text_: str, **kw: Any) -> dict[str, Any]:
    return dict(call_sid=sid, idx=idx, role=role, text=text_, start_ms=idx * 1000,
                end_ms=idx * 1000 + 900, **kw)  # fmt: skip


TURNS = [
    _turn("CA1", 0, "caller", "I want a refund for my order"),
    _turn("CA1", 1, "bot", "Refunds take five business days", latency_ms=300),
    _turn("CA2", 0, "caller", "what are your opening hours"),
    _turn(
        "CA2",
        1,
        "bot",
        "We open at nine and close at five",
        heard="We open at nine",
        interrupted=True,
        interrupted_at_ms=1500,
        latency_ms=900,
    ),
    _turn("CA3", 0, "caller", "my card is [REDACTED:card] thanks"),
    _turn(
        "CA3",
        1,
        "bot",
        "Thank you, checking your account now",
        heard="Thank you, check",
        interrupted=True,
        latency_ms=1500,
    ),
    _turn("CA5", 0, "caller", "Ich möchte eine Rückerstattung für das Café"),
    # Artificial, to prove the heard column is searched on its own.
    _turn("CA5", 1, "bot", "One moment please", heard="zebra crossing"),
]


async def seed(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        blank = {"from_number": "", "to_number": "", "profile": "", "mode": "", "end_reason": ""}
        rows = [{**blank, "ended_at": None, "duration_ms": None, "recording_path": None, **c}
                for c in CALLS]  # fmt: skip
        await conn.execute(insert(calls), rows)
        for t in TURNS:  # one by one: rows differ in their column sets
            await conn.execute(insert(turns), t)


async def sids(engine: AsyncEngine, **kw: Any) -> list[str]:
    return [r["sid"] for r in await search_calls(engine, CallFilter(**kw))]


async def fts_consistent(db: Db) -> None:
    """SQLite: the FTS index holds exactly what the turns table holds (raises otherwise)."""
    if db.backend == "sqlite":
        async with db.engine.begin() as conn:
            await conn.execute(
                text("INSERT INTO turns_fts(turns_fts, rank) VALUES ('integrity-check', 1)")
            )


# -- rows and plain filters ----------------------------------------------------------------


async def test_unfiltered_list_rows(db: Db) -> None:
    await seed(db.engine)
    rows = await search_calls(db.engine, CallFilter())
    assert [r["sid"] for r in rows] == ALL
    by = {r["sid"]: r for r in rows}
    assert set(by["CA1"]) == {
        *(c.name for c in calls.columns),
        "turn_count",
        "interrupted_count",
        "max_latency_ms",
        "live",
        "snippet",
        "qa",
    }
    one = by["CA1"]
    assert (one["from_number"], one["to_number"], one["profile"], one["mode"]) == (
        "+15551230001",
        "+15550001000",
        "support",
        "flux",
    )
    assert (one["started_at"], one["ended_at"], one["end_reason"], one["duration_ms"]) == (
        1000.0,
        1012.0,
        "caller-hangup",
        12_000,
    )
    assert by["CA5"]["recording_path"] == "/rec/CA5.wav" and one["recording_path"] is None
    stats = {
        s: (r["turn_count"], r["interrupted_count"], r["max_latency_ms"], r["live"])
        for s, r in by.items()
    }
    assert stats == {
        "CA1": (2, 0, 300, False),
        "CA2": (2, 1, 900, False),
        "CA3": (2, 1, 1500, True),
        "CA4": (0, 0, None, False),
        "CA5": (2, 0, None, True),
    }
    assert all(type(r["turn_count"]) is int and type(r["interrupted_count"]) is int for r in rows)
    assert all(r["snippet"] is None for r in rows)


async def test_empty_database(db: Db) -> None:
    assert await search_calls(db.engine, CallFilter(q="refund")) == []
    assert await search_calls(db.engine, CallFilter()) == []
    assert await count_calls(db.engine, CallFilter()) == 0
    assert await profiles_seen(db.engine) == []


async def test_number_filter(db: Db) -> None:
    await seed(db.engine)
    assert await sids(db.engine, number="555123") == ["CA5", "CA1"]
    assert await sids(db.engine, number="(555) 123-") == ["CA5", "CA1"]  # only digits/+ count
    assert await sids(db.engine, number="0002000") == ["CA2"]  # to_number
    assert await sids(db.engine, number="+44 20") == ["CA3"]
    assert await sids(db.engine, number="+1555000") == ["CA5", "CA3", "CA2", "CA1"]
    assert await sids(db.engine, number="999999999") == []
    assert await sids(db.engine, number="abc%_") == ALL  # nothing that matters: no filter


async def test_profile_filter_and_profiles_seen(db: Db) -> None:
    await seed(db.engine)
    assert await sids(db.engine, profile="support") == ["CA3", "CA1"]
    assert await sids(db.engine, profile="sales") == ["CA2"]
    assert await sids(db.engine, profile="Support") == []  # exact
    assert await sids(db.engine, profile="sup") == []
    assert await profiles_seen(db.engine) == ["billing", "sales", "support"]


async def test_time_range_filter(db: Db) -> None:
    await seed(db.engine)
    assert await sids(db.engine, started_after=2000.0) == ["CA5", "CA4", "CA3", "CA2"]
    assert await sids(db.engine, started_before=3000.0) == ["CA2", "CA1"]
    assert await sids(db.engine, started_after=2000.0, started_before=4000.0) == ["CA3", "CA2"]
    assert await sids(db.engine, started_after=2000.5, started_before=2999.9) == []


async def test_interrupted_filter(db: Db) -> None:
    await seed(db.engine)
    assert await sids(db.engine, interrupted=True) == ["CA3", "CA2"]
    assert await sids(db.engine, interrupted=False) == ["CA5", "CA4", "CA1"]


async def test_min_latency_filter(db: Db) -> None:
    await seed(db.engine)
    assert await sids(db.engine, min_latency_ms=0) == ["CA3", "CA2", "CA1"]
    assert await sids(db.engine, min_latency_ms=900) == ["CA3", "CA2"]
    assert await sids(db.engine, min_latency_ms=1500) == ["CA3"]
    assert await sids(db.engine, min_latency_ms=1501) == []


async def test_status_filter(db: Db) -> None:
    await seed(db.engine)
    assert await sids(db.engine, status="live") == ["CA5", "CA3"]
    assert await sids(db.engine, status="ended") == ["CA4", "CA2", "CA1"]
    with pytest.raises(ValueError):
        await sids(db.engine, status="bogus")


async def test_outcome_filter(db: Db) -> None:
    await seed(db.engine)
    assert await sids(db.engine, outcome="bot-hangup") == ["CA2"]
    assert await sids(db.engine, outcome="caller-hangup", status="ended") == ["CA1"]
    assert await sids(db.engine, outcome="restart") == []
    with pytest.raises(ValueError):
        await sids(db.engine, outcome="stream-error")  # not an outcome (CA4's legacy text)


async def test_filters_combined(db: Db) -> None:
    await seed(db.engine)
    assert await sids(db.engine, profile="support", interrupted=True, status="live") == ["CA3"]
    assert await sids(db.engine, profile="support", status="ended", min_latency_ms=100) == ["CA1"]
    assert await sids(db.engine, q="refund", profile="support") == ["CA1"]
    assert await sids(db.engine, q="refund", profile="sales") == []
    assert await sids(db.engine, q="five", interrupted=True) == ["CA2"]
    assert await sids(db.engine, q="five", number="555123", started_before=1500.0) == ["CA1"]
    assert await sids(db.engine, number="+1555123", status="live") == ["CA5"]
    assert await sids(db.engine, number="+1555123", status="live", min_latency_ms=1) == []
    flt = CallFilter(q="thank", number="+44", started_after=3000, interrupted=True, status="live")
    assert [r["sid"] for r in await search_calls(db.engine, flt)] == ["CA3"]
    assert await count_calls(db.engine, flt) == 1


# -- ordering, paging, counting ------------------------------------------------------------


async def test_order_limit_offset(db: Db) -> None:
    await seed(db.engine)
    async with db.engine.begin() as conn:  # same start time: ordered by sid
        await conn.execute(
            insert(calls), [{"sid": s, "started_at": 6000.0} for s in ("CA7", "CA6")]
        )
    expected = ["CA6", "CA7", *ALL]
    assert await sids(db.engine) == expected
    pages = [await sids(db.engine, limit=3, offset=o) for o in (0, 3, 6, 9)]
    assert pages == [expected[0:3], expected[3:6], expected[6:], []]
    assert await sids(db.engine, limit=0) == []
    assert await sids(db.engine, limit=2, offset=-5) == expected[:2]


async def test_count_calls_matches_search(db: Db) -> None:
    await seed(db.engine)
    filters = [
        CallFilter(),
        CallFilter(q="refund"),
        CallFilter(q="five"),
        CallFilter(q='"'),
        CallFilter(number="555123"),
        CallFilter(profile="support"),
        CallFilter(started_after=2000.0, started_before=5000.0),
        CallFilter(interrupted=True),
        CallFilter(interrupted=False),
        CallFilter(min_latency_ms=900),
        CallFilter(status="live"),
        CallFilter(status="ended", profile="support"),
    ]
    for f in filters:
        everything = await search_calls(db.engine, replace(f, limit=1000))
        # The UI counts with limit=0 offset=0; limit and offset never change the count.
        for paged in (replace(f, limit=0, offset=0), replace(f, limit=1, offset=3)):
            assert await count_calls(db.engine, paged) == len(everything), f


# -- search --------------------------------------------------------------------------------


async def test_search_words_phrases_and_operators(db: Db) -> None:
    await seed(db.engine)
    assert await sids(db.engine, q="refund") == ["CA1"]
    assert await sids(db.engine, q="REFUND") == ["CA1"]
    assert await sids(db.engine, q="refunds") == ["CA1"]  # stemmed on both backends
    assert await sids(db.engine, q="opening hours") == ["CA2"]
    assert await sids(db.engine, q='"opening hours"') == ["CA2"]
    assert await sids(db.engine, q='"hours opening"') == []  # a phrase keeps its order
    assert await sids(db.engine, q="refund hours") == []  # all words in one turn
    assert await sids(db.engine, q="refund or hours") == ["CA2", "CA1"]
    assert await sids(db.engine, q="five") == ["CA2", "CA1"]
    assert await sids(db.engine, q="five -refunds") == ["CA2"]
    assert await sids(db.engine, q='five -"business days"') == ["CA2"]
    assert await sids(db.engine, q="-five") == []  # nothing required: nothing matches
    assert await sids(db.engine, q="zebra") == ["CA5"]  # only in heard text
    assert await sids(db.engine, q="thanks") == ["CA3"]  # next to a redaction placeholder
    assert await sids(db.engine, q="card thanks") == ["CA3"]
    assert await sids(db.engine, q="Rückerstattung") == ["CA5"]
    assert await sids(db.engine, q="café") == ["CA5"]
    assert await sids(db.engine, q="missing") == []
    assert await sids(db.engine, q="   ") == ALL  # blank: no search


async def test_search_backend_differences(db: Db) -> None:
    """SQLite: bare words are prefixes and accents are ignored; PostgreSQL: whole words,
    accents count, English stop words are ignored."""
    await seed(db.engine)
    sqlite = db.backend == "sqlite"
    assert await sids(db.engine, q="refu") == (["CA1"] if sqlite else [])
    assert await sids(db.engine, q='"refu"') == []  # quoted: never a prefix
    assert await sids(db.engine, q="cafe") == (["CA5"] if sqlite else [])
    assert await sids(db.engine, q="your") == (["CA3", "CA2"] if sqlite else [])


async def test_hostile_queries_never_raise(db: Db) -> None:
    await seed(db.engine)
    hostile = [
        '"',
        '""',
        '"refund',
        "AND (",
        "(",
        ")",
        "*",
        "refund*",
        "^refund",
        "NEAR(",
        "NEAR(refund order, 2)",
        "text:refund",
        "heard : zebra",
        "'; drop table calls; --",
        "%",
        "_",
        "\\",
        "-",
        "--",
        "or",
        "OR OR",
        "refund OR",
        "AND OR NOT",
        "!refund & | <-> :*",
        "a\x00b",
        "x" * 2000,
        ("refund " * 300)[:2000],
        "é" * 2000,
        "退款",
        "😀 🔥",
        "\u200b\ufeff",
        "Rück\u0301erstattung",
        "[REDACTED:card]",
    ]
    for q in hostile:
        rows = await search_calls(db.engine, CallFilter(q=q))
        assert isinstance(rows, list), q
        assert await count_calls(db.engine, CallFilter(q=q)) == len(rows), q
    assert await sids(db.engine, q="refund*") == ["CA1"]  # the word still counts
    assert await sids(db.engine, q="text:refund") == []  # the phrase "text refund"
    assert await sids(db.engine, q="heard : zebra") == []  # the words heard and zebra
    assert await sids(db.engine, q="'; drop table calls; --") == []
    assert await sids(db.engine, q="*") == []
    assert await sids(db.engine) == ALL  # nothing was dropped


async def test_snippets(db: Db) -> None:
    await seed(db.engine)
    async with db.engine.begin() as conn:
        await conn.execute(insert(calls), {"sid": "CA9", "started_at": 9000.0})
        long = " ".join(f"word{i}" for i in range(60))
        await conn.execute(
            insert(turns),
            _turn("CA9", 0, "caller", f"{long} I need a refund today {long}"),
        )
    rows = {r["sid"]: r for r in await search_calls(db.engine, CallFilter(q="refunds"))}
    assert set(rows) == {"CA1", "CA9"}
    s1 = rows["CA1"]["snippet"]
    assert f"{MARK_START}refund" in s1.lower() or f"{MARK_START}refunds" in s1.lower()
    assert s1.replace(MARK_START, "").replace(MARK_END, "") in {
        "I want a refund for my order",
        "Refunds take five business days",
    }
    s9 = rows["CA9"]["snippet"]
    assert f"{MARK_START}refund{MARK_END}" in s9
    assert len(s9) <= 162 and s9.startswith("…") and s9.endswith("…")
    assert s9.count(MARK_START) == s9.count(MARK_END) == 1
    heard = await search_calls(db.engine, CallFilter(q="zebra"))
    assert heard[0]["snippet"] == f"{MARK_START}zebra{MARK_END} crossing"
    phrase = await search_calls(db.engine, CallFilter(q='"opening hours"'))
    assert "opening" in phrase[0]["snippet"] and MARK_START in phrase[0]["snippet"]


def test_clip() -> None:
    assert _clip("short «one» text") == "short «one» text"
    assert _clip("  spaced\n\tout «x»  ") == "spaced out «x»"
    long = "a " * 200 + "«hit» " + "b " * 200
    out = _clip(long)
    assert "«hit»" in out and len(out) <= 160 and out[0] == out[-1] == "…"
    opened = _clip("«" + "x" * 300 + "»")  # a mark longer than the window is closed
    assert opened.count("«") == opened.count("»") == 1 and len(opened) <= 160
    assert _clip("no mark " * 40).startswith("no mark")


# -- the index stays right through the writer's upserts ------------------------------------


async def test_upserted_turn_is_found_by_new_text_only(db: Db) -> None:
    store = TranscriptStore(db.engine, flush_interval=0.05)
    await store.start()
    try:
        store.call_started("CA8", profile="support", started_at=8000.0)
        bot = Turn(0, "bot", "Let me check the weather", 0, 900, heard="Let me check")
        store.turn("CA8", bot)  # written when it opens...
        await eventually(lambda: count_turns(db.engine, "CA8"), within=5, what="CA8's turns")
        assert await sids(db.engine, q="weather") == ["CA8"]
        bot.text, bot.heard, bot.interrupted = "Your parcel ships tomorrow", "Your parcel", True
        store.turn("CA8", bot)  # ...and again, with new text, in a later batch (an UPDATE)
        late = Turn(1, "bot", "umbrella", 1000, 1100)
        store.turn("CA8", late)
        late.text = "sunscreen"
        store.turn("CA8", late)  # twice in one batch
        await store.stop()
    finally:
        await store.stop()
    assert await sids(db.engine, q="parcel") == ["CA8"]
    assert await sids(db.engine, q="tomorrow") == ["CA8"]
    assert await sids(db.engine, q="weather") == []
    assert await sids(db.engine, q="check") == []  # was in the old text and the old heard
    assert await sids(db.engine, q="sunscreen") == ["CA8"]
    assert await sids(db.engine, q="umbrella") == []
    (row,) = await search_calls(db.engine, CallFilter(q="parcel"))
    assert row["interrupted_count"] == 1 and row["turn_count"] == 2
    await fts_consistent(db)


async def test_index_follows_direct_updates_and_deletes(db: Db) -> None:
    await seed(db.engine)
    async with db.engine.begin() as conn:
        await conn.execute(text("UPDATE turns SET heard = 'giraffe' WHERE call_sid = 'CA1'"))
        await conn.execute(text("UPDATE turns SET text = 'nothing here' WHERE call_sid = 'CA2'"))
        await conn.execute(text("DELETE FROM calls WHERE sid = 'CA3'"))  # cascades to turns
    await fts_consistent(db)
    assert await sids(db.engine, q="giraffe") == ["CA1"]
    assert await sids(db.engine, q="refund") == ["CA1"]
    assert await sids(db.engine, q="hours") == []
    assert await sids(db.engine, q="thanks") == []


async def test_get_call(db: Db) -> None:
    await seed(db.engine)
    call = await get_call(db.engine, "CA2")
    assert call is not None and call["profile"] == "sales"
    assert [t["idx"] for t in call["turns"]] == [0, 1] and call["events"] == []
    assert call["turns"][1]["heard"] == "We open at nine"
    assert await get_call(db.engine, "nope") is None


# -- migration 0002 ------------------------------------------------------------------------


def _downgrade_sync(connection: Connection, revision: str) -> None:
    from alembic import command

    cfg = alembic_config()
    cfg.attributes["connection"] = connection
    command.downgrade(cfg, revision)


async def search_objects(db: Db) -> list[str]:
    if db.backend == "sqlite":
        sql = "SELECT name FROM sqlite_master WHERE name LIKE 'turns_fts%' ORDER BY name"
    else:
        sql = (
            "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema() "
            "AND indexname = 'ix_turns_search'"
        )
    async with db.engine.connect() as conn:
        return list((await conn.execute(text(sql))).scalars())


async def test_migration_down_and_up_with_backfill(db: Db) -> None:
    # The fixture upgraded an empty database to head.
    async with db.engine.connect() as conn:
        version = (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar()
    assert version == ScriptDirectory.from_config(alembic_config()).get_current_head()
    expected = (
        [
            *("turns_fts", "turns_fts_ad", "turns_fts_ai", "turns_fts_au"),
            *("turns_fts_config", "turns_fts_data", "turns_fts_docsize", "turns_fts_idx"),
        ]
        if db.backend == "sqlite"
        else ["ix_turns_search"]
    )
    assert await search_objects(db) == expected

    async with db.engine.begin() as conn:
        await conn.run_sync(_downgrade_sync, "0001_initial")
    assert await search_objects(db) == []
    await seed(db.engine)  # rows written while there was no index...

    await upgrade(db.engine)
    assert await search_objects(db) == expected
    assert await sids(db.engine, q="refund") == ["CA1"]  # ...are found: the backfill
    assert await sids(db.engine, q="zebra") == ["CA5"]
    await fts_consistent(db)

    async with db.engine.begin() as conn:  # and all the way down and up again
        await conn.run_sync(_downgrade_sync, "base")
    await upgrade(db.engine)
    assert await search_objects(db) == expected
    assert await sids(db.engine) == []


async def test_search_uses_the_index(db: Db) -> None:
    from telephony.store.queries import _PG_DOCUMENT, _matching_sids, _search

    search = _search("refund")
    assert search is not None
    async with db.engine.connect() as conn:
        if db.backend == "sqlite":
            stmt = _matching_sids(search, "sqlite").compile(
                db.engine.sync_engine, compile_kwargs={"literal_binds": True}
            )
            plan = await conn.execute(text(f"EXPLAIN QUERY PLAN {stmt}"))
            detail = "\n".join(str(r[-1]) for r in plan)
            assert "VIRTUAL TABLE INDEX" in detail and "turns_fts" in detail, detail
        else:
            await conn.execute(text("SET enable_seqscan = off"))
            plan = await conn.execute(
                text(
                    f"EXPLAIN SELECT call_sid FROM turns "
                    f"WHERE {_PG_DOCUMENT} @@ websearch_to_tsquery('english', :q)"
                ),
                {"q": "refund"},
            )
            detail = "\n".join(plan.scalars())
            assert "ix_turns_search" in detail, detail
