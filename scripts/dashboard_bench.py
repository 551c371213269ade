"""Dashboard server time over a year of calls (a benchmark, not a test).

Fills the rollup tables (telephony/store/call_stats.py) as `--calls` calls over `--days` days
would (two profiles, the usual outcome mix, three replies a call, busier in office hours),
then times `dashboard()` for the last 7, 30 and 365 days, by day and by hour, in a time zone
with daylight saving. The figure is the median of `--repeat` runs, in ms.

    .venv/bin/python scripts/dashboard_bench.py                       # SQLite, 1 000 000 calls
    .venv/bin/python scripts/dashboard_bench.py --database postgresql+asyncpg://...
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
from collections import Counter
from datetime import date, timedelta

from sqlalchemy import insert

from telephony.store.call_stats import BUCKET_S, RESOLUTIONS, ROLLUP_SUMS, latency_bin
from telephony.store.dashboard import Granularity, dashboard, dashboard_profiles
from telephony.store.engine import make_engine
from telephony.store.migrate import upgrade

OUTCOMES = {"caller-hangup": 0.62, "bot-hangup": 0.2, "transferred": 0.15, "failover": 0.03}
PROFILES = ("support", "sales")
REPLIES_PER_CALL = 3


def synthetic_rows(calls: int, days: int, until: date) -> tuple[list[dict], list[dict]]:
    rng = random.Random(7)
    start = int(time.mktime((until - timedelta(days=days - 1)).timetuple()))
    buckets = [start + i * BUCKET_S for i in range(days * 86_400 // BUCKET_S)]
    # Office hours (08-18 local-ish) get four times the calls of the night.
    weights = [4.0 if 8 <= (b // 3600) % 24 < 18 else 1.0 for b in buckets]
    per_bucket = Counter(rng.choices(range(len(buckets)), weights=weights, k=calls))
    rollup, latency = [], []
    outcomes, shares = list(OUTCOMES), list(OUTCOMES.values())
    for i, n in per_bucket.items():
        bucket = buckets[i]
        for profile in PROFILES:
            here = n // 2 + (n % 2 if profile == "support" else 0)
            if not here:
                continue
            mix = Counter(rng.choices(outcomes, weights=shares, k=here))
            for outcome, k in mix.items():
                row = {"bucket": bucket, "profile": profile, "outcome": outcome}
                row |= dict.fromkeys(ROLLUP_SUMS, 0)
                row |= {"calls": k, "duration_ms": k * 95_000, "bot_turns": k * 3}
                row |= {"barge_ins": k // 4, "barged_calls": k // 5, "reconnects": k // 50}
                rollup.append(row)
            bins = Counter(
                latency_bin(int(rng.lognormvariate(6.3, 0.35)))
                for _ in range(here * REPLIES_PER_CALL)
            )
            latency += [
                {"bucket": bucket, "profile": profile, "bin_ms": b, "turns": t}
                for b, t in bins.items()
            ]
    return rollup, latency


def coarser(rows: list[dict], seconds: int, key: tuple[str, ...]) -> list[dict]:
    """The same rows summed into buckets of `seconds`, as the writer keeps them."""
    out: dict[tuple, dict] = {}
    for row in rows:
        bucket = row["bucket"] // seconds * seconds
        k = (bucket, *(row[c] for c in key))
        into = out.setdefault(k, {**row, "bucket": bucket, **{c: 0 for c in row if c in SUMS}})
        for c in SUMS:
            if c in row:
                into[c] += row[c]
    return list(out.values())


SUMS = (*ROLLUP_SUMS, "turns")


async def main(database: str | None, calls: int, days: int, repeat: int) -> None:
    url = database or f"sqlite+aiosqlite:///{tempfile.mkdtemp()}/dashboard.db"
    engine = make_engine(url)
    await upgrade(engine)
    until = date.today()
    t0 = time.perf_counter()
    rollup, latency = synthetic_rows(calls, days, until)
    async with engine.begin() as conn:
        for seconds, rollup_table, latency_table in RESOLUTIONS:
            for table, rows, key in (
                (rollup_table, rollup, ("profile", "outcome")),
                (latency_table, latency, ("profile", "bin_ms")),
            ):
                rows = coarser(rows, seconds, key)
                for i in range(0, len(rows), 5000):
                    await conn.execute(insert(table), rows[i : i + 5000])
                print(f"{table.name}: {len(rows)} rows")
    print(
        f"{calls} calls over {days} days, filled in {time.perf_counter() - t0:.1f} s "
        f"({engine.dialect.name})"
    )
    spans: tuple[tuple[int, Granularity], ...] = (
        (7, "day"),
        (2, "hour"),
        (30, "day"),
        (365, "day"),
    )
    for span, granularity in spans:
        since = until - timedelta(days=span - 1)
        times = []
        for _ in range(repeat):
            t = time.perf_counter()
            board = await dashboard(
                engine, since, until, "America/New_York", granularity=granularity
            )  # type: ignore[arg-type]
            times.append((time.perf_counter() - t) * 1000)
        print(
            f"last {span:>3} days by {granularity:<4}: {statistics.median(times):6.1f} ms "
            f"(median of {repeat}; {board.total.calls} calls, "
            f"p95 {board.total.latency_ms(0.95)} ms)"
        )
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        profiles = await dashboard_profiles(engine)
        times.append((time.perf_counter() - t) * 1000)
    print(f"profiles for the form: {statistics.median(times):6.1f} ms ({', '.join(profiles)})")
    await engine.dispose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", help="a database URL (default: a new SQLite file)")
    parser.add_argument("--calls", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(main(args.database, args.calls, args.days, args.repeat))
