"""The dashboard's numbers (telephony/store/call_stats.py, dashboard.py) on SQLite and
PostgreSQL: facts kept as calls end (again), rollups moved by the difference, the migration's
backfill, and the figures per local hour and day in any time zone."""

from __future__ import annotations

import math
import random
from collections import Counter
from datetime import date, datetime
from types import SimpleNamespace
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import delete, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from telephony.store.call_stats import BUCKET_S, bin_upper_ms, latency_bin
from telephony.store.dashboard import dashboard, offset_segments, percentile_of_bins
from telephony.store.engine import make_engine
from telephony.store.migrate import upgrade
from telephony.store.schema import (
    call_facts,
    call_rollup,
    call_rollup_hourly,
    calls,
    latency_rollup,
)
from telephony.store.schema import turns as turns_table
from telephony.store.transcripts import TranscriptStore
from telephony.transcript import Event, Turn
from tests.test_store import Db, db  # noqa: F401  (the SQLite/PostgreSQL fixture)

pytestmark = pytest.mark.clock(4)  # timers run 4x real time (tests/fast_clock.py)

NY = ZoneInfo("America/New_York")


def at(tz: ZoneInfo, *args: int) -> float:
    return datetime(*args, tzinfo=tz).timestamp()  # type: ignore[misc]


def summary(sid: str, started_at: float, outcome: str, profile: str = "support") -> Any:
    return SimpleNamespace(
        call_sid=sid,
        from_number="+15550100",
        to_number="+15550001000",
        profile=profile,
        started_at=started_at,
        ended_at=started_at + 30,
        end_reason=outcome,
        end_detail="",
        stats=None,
    )


def bot(index: int, latency_ms: int | None, cut_by: str | None = None) -> Turn:
    meta = {"cut_by": cut_by} if cut_by else {}
    return Turn(index, "bot", "reply", index * 1000, index * 1000 + 500, heard="reply",
                interrupted=cut_by is not None, latency_ms=latency_ms, meta=meta)  # fmt: skip


async def write(engine: AsyncEngine, *calls_: tuple) -> None:
    """Each call: (sid, started_at, outcome, bot turns, reconnects[, profile]), through the
    transcript store's writer, as a live call writes them."""
    store = TranscriptStore(engine)
    await store.start()
    try:
        for sid, started_at, outcome, bots, reconnects, *profile in calls_:
            s = summary(sid, started_at, outcome, *profile)
            store.call_started(sid, profile=s.profile, started_at=started_at)
            store.turn(sid, Turn(0, "caller", "hello", 0, 400))
            for t in bots:
                store.turn(sid, t)
            store.event(sid, Event(0, "flux-connection", {"connection": 0, "reason": "start"}))
            for _ in range(reconnects):
                store.event(sid, Event(900, "flux-connection", {"reason": "Flux closed: 1006"}))
            store.call_ended(s, duration_ms=30_000)
    finally:
        await store.stop()


async def rollup(engine: AsyncEngine) -> dict[tuple[str, str], dict[str, int]]:
    async with engine.connect() as conn:
        rows = (await conn.execute(select(call_rollup))).mappings().all()
    return {
        (r["profile"], r["outcome"]): {k: r[k] for k in ("calls", "bot_turns", "barge_ins",
                                                         "barged_calls", "reconnects")}
        for r in rows
        if r["calls"]
    }  # fmt: skip


async def latencies(engine: AsyncEngine) -> dict[int, int]:
    async with engine.connect() as conn:
        rows = (await conn.execute(select(latency_rollup))).mappings().all()
    return {r["bin_ms"]: r["turns"] for r in rows if r["turns"]}


async def test_an_ended_call_is_counted_once_with_its_facts(db: Db) -> None:  # noqa: F811
    t0 = at(NY, 2026, 3, 2, 9, 5)
    await write(db.engine, ("CA1", t0, "caller-hangup", [bot(1, 420), bot(2, 380, "caller")], 2))
    assert await rollup(db.engine) == {
        ("support", "caller-hangup"): {
            "calls": 1,
            "bot_turns": 2,
            "barge_ins": 1,
            "barged_calls": 1,
            "reconnects": 2,  # the first connect is no reconnect
        }
    }
    assert await latencies(db.engine) == {400: 1, 350: 1}
    async with db.engine.connect() as conn:
        [bucket] = (await conn.execute(select(call_rollup.c.bucket))).scalars().all()
    assert bucket == int(t0) // BUCKET_S * BUCKET_S


async def test_a_resumed_call_moves_to_its_last_outcome_and_a_repeat_changes_nothing(
    db: Db,  # noqa: F811
) -> None:
    t0 = at(NY, 2026, 3, 2, 9, 5)
    await write(db.engine, ("CA2", t0, "transferred", [bot(1, 420)], 0))
    store = TranscriptStore(db.engine)
    await store.start()
    try:
        s = summary("CA2", t0, "transferred")
        store.call_resumed(s)  # the transcription after the transfer: live again
    finally:
        await store.stop()
    assert await rollup(db.engine) == {}  # a live call is not counted
    assert await latencies(db.engine) == {}
    store = TranscriptStore(db.engine)
    await store.start()
    try:
        store.turn("CA2", bot(3, 610))  # a late turn of the same call
        s = summary("CA2", t0, "caller-hangup")
        store.call_ended(s, duration_ms=60_000)
        store.call_ended(s, duration_ms=60_000)  # written twice (a retried batch)
    finally:
        await store.stop()
    got = await rollup(db.engine)
    assert got == {
        ("support", "caller-hangup"): {
            "calls": 1,
            "bot_turns": 2,
            "barge_ins": 0,
            "barged_calls": 0,
            "reconnects": 0,
        }
    }
    assert await latencies(db.engine) == {400: 1, 600: 1}


async def test_retention_keeps_the_counts(db: Db) -> None:  # noqa: F811
    await write(db.engine, ("CA3", at(NY, 2026, 3, 2, 9), "bot-hangup", [bot(1, 300)], 0))
    async with db.engine.begin() as conn:
        await conn.execute(delete(calls).where(calls.c.sid == "CA3"))
        assert (await conn.execute(select(call_facts))).all() == []  # cascaded
    assert (await rollup(db.engine))[("support", "bot-hangup")]["calls"] == 1


async def test_the_migration_backfills_calls_already_ended(tmp_path: Any) -> None:
    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path}/old.db")
    try:
        await upgrade(engine, "0006_stream_claims")
        t0 = at(NY, 2026, 3, 2, 9)
        async with engine.begin() as conn:
            await conn.execute(
                insert(calls),
                [
                    {"sid": "CAold", "started_at": t0, "ended_at": t0 + 9, "profile": "sales",
                     "end_reason": "transferred", "duration_ms": 9000},
                    {"sid": "CAlive", "started_at": t0, "ended_at": None, "profile": "sales",
                     "end_reason": "", "duration_ms": None},
                ],
            )  # fmt: skip
            await conn.execute(
                insert(turns_table),
                [{"call_sid": "CAold", "idx": 1, "role": "bot", "text": "hi", "start_ms": 0,
                  "end_ms": 500, "latency_ms": 515, "interrupted": False}],
            )  # fmt: skip
        await upgrade(engine)
        got = await rollup(engine)
        assert got == {
            ("sales", "transferred"): {
                "calls": 1,
                "bot_turns": 1,
                "barge_ins": 0,
                "barged_calls": 0,
                "reconnects": 0,
            }
        }
        assert await latencies(engine) == {500: 1}
    finally:
        await engine.dispose()


def test_latency_bins_and_percentiles() -> None:
    assert [latency_bin(ms) for ms in (0, 49, 50, 999, 1000, 2999, 3500, 9999, 60_000)] == [
        0, 0, 50, 950, 1000, 2750, 3000, 9000, 10_000,
    ]  # fmt: skip
    bins = {400: 8, 450: 1, 1000: 1}  # ten replies
    assert percentile_of_bins(bins, 0.5) == 450  # the 5th is in 400-450
    assert percentile_of_bins(bins, 0.95) == 1250  # the 10th is in 1000-1250
    assert percentile_of_bins({}, 0.5) is None


def test_offset_segments_find_each_daylight_saving_change() -> None:
    start = int(at(NY, 2026, 3, 1, 0))
    end = int(at(NY, 2026, 11, 30, 0))
    segments = offset_segments(start, end, NY)
    assert [(datetime.fromtimestamp(t, NY).isoformat(), o) for t, o in segments] == [
        ("2026-03-01T00:00:00-05:00", -5 * 3600),
        ("2026-03-08T03:00:00-04:00", -4 * 3600),
        ("2026-11-01T01:00:00-05:00", -5 * 3600),
    ]


async def test_figures_per_local_day_across_a_daylight_saving_change(
    db: Db,  # noqa: F811
) -> None:
    # New York springs forward on 2026-03-08: a call at 23:30 local either side of it must
    # land on its own local day, not on the next (an offset fixed at -5 would put the
    # 2026-03-09 23:30 call on the 10th).
    await write(
        db.engine,
        ("CAa", at(NY, 2026, 3, 7, 23, 30), "caller-hangup", [bot(1, 400)], 0),
        ("CAb", at(NY, 2026, 3, 9, 23, 30), "transferred", [bot(1, 800)], 1),
        ("CAc", at(NY, 2026, 3, 9, 10, 0), "failover", [bot(1, 1200, "caller")], 0, "sales"),
        ("CAd", at(NY, 2026, 3, 10, 0, 30), "caller-hangup", [], 0),  # after the range
    )
    board = await dashboard(db.engine, date(2026, 3, 7), date(2026, 3, 9), "America/New_York",
                            granularity="day")  # fmt: skip
    days = {p.start.date().isoformat(): p for p in board.periods}
    assert sorted(days) == ["2026-03-07", "2026-03-09"]
    assert days["2026-03-07"].outcomes == {"caller-hangup": 1}
    assert days["2026-03-09"].outcomes == {"transferred": 1, "failover": 1}
    assert board.total.calls == 3
    assert board.total.rate("transferred") == pytest.approx(1 / 3)
    assert board.total.rate("failover") == pytest.approx(1 / 3)
    assert board.total.rate("barged_calls") == pytest.approx(1 / 3)
    assert board.total.rate("reconnects") == pytest.approx(1 / 3)
    assert days["2026-03-09"].latency_ms(0.5) == 850  # 800 and 1200: the lower one's bin
    assert board.total.latency_ms(0.95) == 1250
    assert board.busiest_hours[23] == 2 and board.busiest_hours[10] == 1
    assert sum(board.busiest_hours) == 3

    sales = await dashboard(db.engine, date(2026, 3, 7), date(2026, 3, 9), "America/New_York",
                            profiles=["sales"])  # fmt: skip
    assert sales.total.outcomes == {"failover": 1}
    assert sales.granularity == "hour"  # three days or fewer: by the hour
    [hour] = sales.periods
    assert hour.start.isoformat() == "2026-03-09T10:00:00-04:00"


async def test_a_quarter_hour_zone_gets_its_own_hours(db: Db) -> None:  # noqa: F811
    kathmandu = ZoneInfo("Asia/Kathmandu")  # UTC+05:45
    await write(
        db.engine,
        ("CAk1", at(kathmandu, 2026, 5, 1, 9, 50), "caller-hangup", [], 0),
        ("CAk2", at(kathmandu, 2026, 5, 1, 10, 5), "caller-hangup", [], 0),
    )
    board = await dashboard(db.engine, date(2026, 5, 1), date(2026, 5, 1), "Asia/Kathmandu")
    assert [(p.start.hour, p.calls) for p in board.periods] == [(9, 1), (10, 1)]
    utc = await dashboard(db.engine, date(2026, 5, 1), date(2026, 5, 1), "UTC")
    assert [(p.start.hour, p.calls) for p in utc.periods] == [(4, 2)]  # 04:05 and 04:20 UTC


async def test_an_empty_range_and_a_reversed_one(db: Db) -> None:  # noqa: F811
    board = await dashboard(db.engine, date(2026, 1, 1), date(2026, 1, 31), "Europe/Paris")
    assert board.periods == [] and board.total.calls == 0
    assert board.total.latency_ms(0.5) is None and board.total.rate("failover") is None
    with pytest.raises(ValueError, match="ends before it starts"):
        await dashboard(db.engine, date(2026, 2, 1), date(2026, 1, 1))


async def test_a_long_range_reads_the_hourly_rollups_and_gets_the_same_figures(
    db: Db,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await write(
        db.engine,
        ("CAl1", at(NY, 2026, 1, 5, 9, 50), "caller-hangup", [bot(1, 420)], 0),
        ("CAl2", at(NY, 2026, 2, 20, 23, 55), "transferred", [bot(1, 700, "caller")], 1),
        ("CAl3", at(NY, 2026, 3, 9, 0, 10), "failover", [], 0, "sales"),  # after the change
    )
    args = (db.engine, date(2026, 1, 1), date(2026, 3, 31), "America/New_York")
    hourly = await dashboard(*args)
    async with db.engine.connect() as conn:  # the hourly tables are what it read
        assert len((await conn.execute(select(call_rollup_hourly))).all()) == 3
    monkeypatch.setattr("telephony.store.dashboard.FIFTEEN_MINUTE_UP_TO_DAYS", 1000)
    fine = await dashboard(*args)
    assert [(p.start, p.outcomes, p.sums, p.latency_bins) for p in hourly.periods] == [
        (p.start, p.outcomes, p.sums, p.latency_bins) for p in fine.periods
    ]
    assert [p.start.date().isoformat() for p in hourly.periods] == [
        "2026-01-05",
        "2026-02-20",
        "2026-03-09",
    ]
    assert hourly.busiest_hours == fine.busiest_hours


async def test_random_calls_give_the_figures_computed_from_the_calls_themselves(
    db: Db,  # noqa: F811
) -> None:
    """An oracle: 120 seeded random calls over five New York days around the autumn change
    (2026-11-01 has two 01:00 hours), each period's figures recomputed here straight from the
    calls by local wall-clock day and hour, against what the rollups give."""
    rng = random.Random(20261107)
    outcomes = ["caller-hangup", "transferred", "failover", "bot-hangup"]
    start, end = at(NY, 2026, 10, 30, 0, 0), at(NY, 2026, 11, 4, 0, 0)
    made = []
    for i in range(120):
        started = rng.uniform(start, end) if i % 10 else at(NY, 2026, 11, 1, 1, 30) + i  # EDT
        bots = [
            bot(j + 1, rng.choice([None, rng.randint(100, 4000)]), rng.choice([None, "caller"]))
            for j in range(rng.randint(0, 3))
        ]
        made.append((f"CAr{i:03d}", started, rng.choice(outcomes), bots, rng.randint(0, 2),
                     rng.choice(["support", "sales"])))  # fmt: skip
    made.append(("CAfold", at(NY, 2026, 11, 1, 6, 30) - 5 * 3600, "caller-hangup", [], 0))  # EST
    await write(db.engine, *made)

    def local(t: float) -> datetime:
        return datetime.fromtimestamp(t, NY).replace(tzinfo=None)

    def expected(group: list[tuple]) -> dict[str, Any]:
        lat = sorted(t.latency_ms for c in group for t in c[3] if t.latency_ms is not None)
        pct = {
            q: bin_upper_ms(latency_bin(lat[max(1, math.ceil(q * len(lat))) - 1])) if lat else None
            for q in (0.5, 0.95)
        }
        return {
            "calls": len(group),
            "outcomes": dict(Counter(c[2] for c in group)),
            "barged_calls": sum(1 for c in group if any(t.interrupted for t in c[3])),
            "barge_ins": sum(1 for c in group for t in c[3] if t.interrupted),
            "reconnects": sum(c[4] for c in group),
            "p50": pct[0.5],
            "p95": pct[0.95],
        }

    def got(p: Any) -> dict[str, Any]:
        return {
            "calls": p.calls,
            "outcomes": {k: v for k, v in p.outcomes.items() if v},
            "barged_calls": p.sums["barged_calls"],
            "barge_ins": p.sums["barge_ins"],
            "reconnects": p.sums["reconnects"],
            "p50": p.latency_ms(0.5),
            "p95": p.latency_ms(0.95),
        }

    by_day: dict[str, list[tuple]] = {}
    for c in made:
        by_day.setdefault(local(c[1]).date().isoformat(), []).append(c)
    board = await dashboard(db.engine, date(2026, 10, 30), date(2026, 11, 3), "America/New_York")
    assert board.granularity == "day"
    assert {p.start.date().isoformat(): got(p) for p in board.periods} == {
        day: expected(group) for day, group in by_day.items()
    }
    assert got(board.total) == expected(made)
    assert board.busiest_hours == [sum(1 for c in made if local(c[1]).hour == h) for h in range(24)]

    # The autumn day by the hour, for the "sales" profile only: 25 hours of calls on 24
    # wall-clock hours (both 01:00 hours are the hour 01:00).
    sales = [c for c in by_day["2026-11-01"] if (c[5:] or ("support",))[0] == "sales"]
    by_hour: dict[int, list[tuple]] = {}
    for c in sales:
        by_hour.setdefault(local(c[1]).hour, []).append(c)
    day = await dashboard(db.engine, date(2026, 11, 1), date(2026, 11, 1), "America/New_York",
                          profiles=["sales"])  # fmt: skip
    assert day.granularity == "hour"
    assert {p.start.hour: got(p) for p in day.periods} == {
        h: expected(group) for h, group in by_hour.items()
    }
