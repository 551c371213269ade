"""The dashboard's figures for a date range, in a time zone, from the 15-minute rollups.

Everything is summed in SQL (the same statements on SQLite and PostgreSQL) down to one row per
period (local hour or day) and outcome, so the work does not grow with the number of calls.
The time zone's offset changes (daylight saving) inside the range are turned into a CASE over
the buckets: a bucket's local time is its UTC start plus the offset in force then.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo

from sqlalchemy import ColumnElement, case, func, literal, select
from sqlalchemy.ext.asyncio import AsyncEngine

from telephony.store.call_stats import BUCKET_S, RESOLUTIONS, ROLLUP_SUMS, bin_upper_ms

Granularity = Literal["hour", "day"]
# Ranges up to this many days are shown by the hour, longer ones by the day.
HOURLY_UP_TO_DAYS = 3
# Ranges longer than this read the hourly rollups when the zone's offsets are whole hours.
FIFTEEN_MINUTE_UP_TO_DAYS = 31


@dataclass
class Period:
    """One local hour or day: sums over the range's calls that started in it."""

    start: datetime  # local, tz-aware
    outcomes: dict[str, int] = field(default_factory=dict)
    sums: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ROLLUP_SUMS, 0))
    latency_bins: dict[int, int] = field(default_factory=dict)  # bin lower edge -> bot turns

    @property
    def calls(self) -> int:
        return self.sums["calls"]

    def latency_ms(self, q: float) -> int | None:
        return percentile_of_bins(self.latency_bins, q)

    def rate(self, what: str) -> float | None:
        """Per call: 'transferred', 'failover' (outcomes), 'barged_calls', 'reconnects'."""
        if not self.calls:
            return None
        n = self.outcomes.get(what, 0) if what in ("transferred", "failover") else self.sums[what]
        return n / self.calls


@dataclass
class Dashboard:
    since: date
    until: date  # inclusive: the last local day shown
    tz: str
    profiles: tuple[str, ...]
    granularity: Granularity
    periods: list[Period]
    total: Period
    busiest_hours: list[int]  # calls by local hour of day, 0-23


def percentile_of_bins(bins: dict[int, int], q: float) -> int | None:
    """The upper edge of the bin holding the q-th (0-1) value; None without values."""
    n = sum(bins.values())
    if not n:
        return None
    rank = max(1, math.ceil(q * n))
    seen = 0
    for lower in sorted(bins):
        seen += bins[lower]
        if seen >= rank:
            return bin_upper_ms(lower)
    return None  # pragma: no cover  (seen reaches n)


def _offset_s(t: int, tz: ZoneInfo) -> int:
    offset = datetime.fromtimestamp(t, tz).utcoffset()
    return int(offset.total_seconds()) if offset is not None else 0


def offset_segments(since: int, until: int, tz: ZoneInfo) -> list[tuple[int, int]]:
    """(UTC start, offset s) of each stretch of [since, until) with one UTC offset; offsets
    change on 15-minute boundaries, found by halving within the day that changed."""
    segments = [(since, _offset_s(since, tz))]
    t = since
    while t < until:
        nxt = min(t + 86_400, until)
        if _offset_s(nxt, tz) != segments[-1][1] and nxt < until:
            lo, hi = t, nxt  # offset at lo is the current one, at hi another
            while hi - lo > BUCKET_S:
                mid = (lo + hi) // 2 // BUCKET_S * BUCKET_S
                if mid <= lo:
                    break
                if _offset_s(mid, tz) == segments[-1][1]:
                    lo = mid
                else:
                    hi = mid
            segments.append((hi, _offset_s(hi, tz)))
        t = nxt
    return segments


def _local_seconds(bucket: Any, segments: list[tuple[int, int]]) -> ColumnElement[int]:
    if len(segments) == 1:
        return bucket + literal(segments[0][1])
    whens = [
        (bucket < nxt_start, bucket + literal(offset))
        for (_, offset), (nxt_start, _) in itertools.pairwise(segments)
    ]
    return case(*whens, else_=bucket + literal(segments[-1][1]))


def local_midnight_utc(day: date, tz: ZoneInfo) -> int:
    return int(datetime.combine(day, time(0), tz).timestamp())


async def dashboard(
    engine: AsyncEngine,
    since: date,
    until: date,
    tz_name: str = "UTC",
    profiles: Sequence[str] = (),
    granularity: Granularity | None = None,
) -> Dashboard:
    """Figures for calls that started on local days `since`..`until` (inclusive) in `tz_name`,
    of `profiles` (all when empty)."""
    if until < since:
        raise ValueError("the range ends before it starts")
    tz = ZoneInfo(tz_name)
    start = local_midnight_utc(since, tz)
    end = local_midnight_utc(until + timedelta(days=1), tz)
    if granularity is None:
        granularity = "hour" if (until - since).days < HOURLY_UP_TO_DAYS else "day"
    period_s = 3600 if granularity == "hour" else 86_400
    segments = offset_segments(start, end, tz)
    whole_hours = all(offset % 3600 == 0 for _, offset in segments)
    long_range = (until - since).days + 1 > FIFTEEN_MINUTE_UP_TO_DAYS
    _, call_rollup, latency_rollup = RESOLUTIONS[1 if whole_hours and long_range else 0]

    def where(table: Any) -> list[ColumnElement[bool]]:
        conds = [table.c.bucket >= start, table.c.bucket < end]
        if profiles:
            conds.append(table.c.profile.in_(list(profiles)))
        return conds

    local = _local_seconds(call_rollup.c.bucket, segments)
    key = (local // period_s).label("k")
    sums = [func.sum(call_rollup.c[c]).label(c) for c in ROLLUP_SUMS]
    by_period = (
        select(key, call_rollup.c.outcome, *sums)
        .where(*where(call_rollup))
        .group_by(key, call_rollup.c.outcome)
    )
    hour = ((local % 86_400) // 3600).label("h")
    by_hour = select(hour, func.sum(call_rollup.c.calls)).where(*where(call_rollup)).group_by(hour)
    lat_local = _local_seconds(latency_rollup.c.bucket, segments)
    lat_key = (lat_local // period_s).label("k")
    by_bin = (
        select(lat_key, latency_rollup.c.bin_ms, func.sum(latency_rollup.c.turns))
        .where(*where(latency_rollup))
        .group_by(lat_key, latency_rollup.c.bin_ms)
    )
    periods: dict[int, Period] = {}
    total = Period(datetime.combine(since, time(0), tz))
    busiest = [0] * 24

    def period(k: int) -> Period:
        if k not in periods:
            # Local wall time of the period's start (fold-free: hours/days of local seconds).
            naive = datetime(1970, 1, 1) + timedelta(seconds=int(k) * period_s)
            periods[k] = Period(naive.replace(tzinfo=tz))
        return periods[k]

    async def fetch(stmt: Any) -> list[Any]:
        async with engine.connect() as conn:
            return list(await conn.execute(stmt))

    # Three scans on three connections at once: each runs in its own driver thread (SQLite's,
    # or PostgreSQL's backend), so the answer takes the longest of them, not their sum.
    period_rows, hour_rows, bin_rows = await asyncio.gather(
        fetch(by_period), fetch(by_hour), fetch(by_bin)
    )
    for row in period_rows:
        p = period(row.k)
        outcome = row.outcome or ""
        p.outcomes[outcome] = p.outcomes.get(outcome, 0) + int(row.calls or 0)
        total.outcomes[outcome] = total.outcomes.get(outcome, 0) + int(row.calls or 0)
        for c in ROLLUP_SUMS:
            value = int(getattr(row, c) or 0)
            p.sums[c] += value
            total.sums[c] += value
    for h, n in hour_rows:
        busiest[int(h)] = int(n or 0)
    total_bins: dict[int, int] = defaultdict(int)
    for k, bin_ms, n in bin_rows:
        p = period(k)
        p.latency_bins[int(bin_ms)] = p.latency_bins.get(int(bin_ms), 0) + int(n or 0)
        total_bins[int(bin_ms)] += int(n or 0)
    total.latency_bins = dict(total_bins)
    return Dashboard(
        since=since,
        until=until,
        tz=tz_name,
        profiles=tuple(profiles),
        granularity=granularity,
        periods=[periods[k] for k in sorted(periods)],
        total=total,
        busiest_hours=busiest,
    )


async def dashboard_profiles(engine: AsyncEngine) -> list[str]:
    """Profiles with ended calls, from the hourly rollup: a year of it is tens of thousands of
    rows, where the calls table would be a million."""
    table = RESOLUTIONS[1][1]
    stmt = select(table.c.profile).distinct().where(table.c.profile != "").order_by(table.c.profile)
    async with engine.connect() as conn:
        return list((await conn.execute(stmt)).scalars())
