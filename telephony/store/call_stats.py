"""The dashboard's numbers: each ended call's facts, and 15-minute rollups of them.

Whenever a call's end is written (the writer's batch, the restart sweep), its facts — outcome,
duration, bot turns, barge-ins, Deepgram reconnects, reply latencies — are computed from its
stored rows, and the change from the facts it had before is added to its 15-minute bucket:
nothing for a first end, the old facts taken back for a resumed call (live again until its
transcription ends) or an end written twice. A dashboard then reads buckets, never the calls:
15-minute ones, so that any time zone (+05:30 and +05:45 included) gets its own local hours
and days, and hourly ones (a quarter of the rows) for long ranges in whole-hour zones.

Retention deletes a call and its facts, not the rollups: the dashboard still counts it.
"""

from __future__ import annotations

import bisect
import functools
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Table, delete, select
from sqlalchemy.ext.asyncio import AsyncConnection

from telephony.store.schema import (
    call_facts,
    call_rollup,
    call_rollup_hourly,
    calls,
    dialect_insert,
    events,
    latency_rollup,
    latency_rollup_hourly,
    turns,
    upsert_statement,
)
from telephony.transcript import CONNECTION_KINDS, CUT_BY_CALLER, is_reconnect

BUCKET_S = 900
HOUR_S = 3600
# Each resolution's tables: (bucket seconds, calls rollup, latency rollup). The same changes go
# to both; a dashboard reads the coarsest that fits its range and time zone.
RESOLUTIONS: tuple[tuple[int, Table, Table], ...] = (
    (BUCKET_S, call_rollup, latency_rollup),
    (HOUR_S, call_rollup_hourly, latency_rollup_hourly),
)
# Reply latency bins (lower edges, ms): 50 ms steps to 1 s, 250 ms to 3 s, 1 s to 10 s, then
# one open bin. A percentile is reported as its bin's upper edge (at most one step high).
LATENCY_BINS_MS: tuple[int, ...] = (
    *range(0, 1000, 50),
    *range(1000, 3000, 250),
    *range(3000, 10_000, 1000),
    10_000,
)


def latency_bin(ms: int) -> int:
    """The lower edge of the bin `ms` falls in."""
    return LATENCY_BINS_MS[max(0, bisect.bisect_right(LATENCY_BINS_MS, ms) - 1)]


def bin_upper_ms(lower: int) -> int:
    """The upper edge of a bin (the open last bin: its lower edge)."""
    i = LATENCY_BINS_MS.index(lower)
    return LATENCY_BINS_MS[i + 1] if i + 1 < len(LATENCY_BINS_MS) else lower


@dataclass(frozen=True, slots=True)
class CallFacts:
    bucket: int  # epoch s of the call's start, floored to BUCKET_S
    profile: str
    outcome: str
    duration_ms: int
    bot_turns: int
    barge_ins: int
    reconnects: int
    latency_bins: tuple[int, ...]  # one bin per bot turn with a latency

    def row(self, sid: str) -> dict[str, Any]:
        return {
            "sid": sid,
            "bucket": self.bucket,
            "profile": self.profile,
            "outcome": self.outcome,
            "duration_ms": self.duration_ms,
            "bot_turns": self.bot_turns,
            "barge_ins": self.barge_ins,
            "reconnects": self.reconnects,
            "latency_bins": list(self.latency_bins),
        }

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> CallFacts:
        return cls(
            bucket=row["bucket"],
            profile=row["profile"],
            outcome=row["outcome"],
            duration_ms=row["duration_ms"],
            bot_turns=row["bot_turns"],
            barge_ins=row["barge_ins"],
            reconnects=row["reconnects"],
            latency_bins=tuple(row["latency_bins"] or ()),
        )


def facts_of(
    call: Mapping[Any, Any], call_turns: Iterable[Mapping[Any, Any]], kinds: Iterable[tuple]
) -> CallFacts:
    """An ended call's facts from its row, its turns and its (kind, data) events."""
    bot = [t for t in call_turns if t["role"] == "bot"]
    barge_ins = sum(
        1 for t in bot if t["interrupted"] and (t["meta"] or {}).get("cut_by") == CUT_BY_CALLER
    )
    reconnects = sum(1 for kind, data in kinds if kind in CONNECTION_KINDS and is_reconnect(data))
    return CallFacts(
        bucket=int(call["started_at"]) // BUCKET_S * BUCKET_S,
        profile=call["profile"] or "",
        outcome=call["end_reason"] or "",
        duration_ms=call["duration_ms"] or 0,
        bot_turns=len(bot),
        barge_ins=barge_ins,
        reconnects=reconnects,
        latency_bins=tuple(
            sorted(latency_bin(t["latency_ms"]) for t in bot if t["latency_ms"] is not None)
        ),
    )


async def refresh_facts(conn: AsyncConnection, sids: Iterable[str]) -> None:
    """`refresh_facts_sync` in an async connection's transaction."""
    wanted = sorted(set(sids))
    if wanted:
        await conn.run_sync(refresh_facts_sync, wanted)


def refresh_facts_sync(conn: Connection, sids: Iterable[str]) -> None:
    """Recompute the facts of `sids` from their rows (in `conn`'s transaction) and move the
    rollups by the difference. A call that is not ended (or has no row) has no facts. (Sync:
    the writer runs it through `run_sync`, the migration that backfilled the tables as is.)"""
    wanted = sorted(set(sids))
    if not wanted:
        return
    dialect = conn.dialect.name
    call_rows = {
        r.sid: r._mapping
        for r in conn.execute(
            select(
                calls.c.sid,
                calls.c.started_at,
                calls.c.ended_at,
                calls.c.profile,
                calls.c.end_reason,
                calls.c.duration_ms,
            ).where(calls.c.sid.in_(wanted))
        )
    }
    ended = [sid for sid, r in call_rows.items() if r["ended_at"] is not None and r["end_reason"]]
    turns_of: dict[str, list[Mapping[Any, Any]]] = {sid: [] for sid in ended}
    kinds_of: dict[str, list[tuple]] = {sid: [] for sid in ended}
    if ended:
        for t in conn.execute(
            select(
                turns.c.call_sid,
                turns.c.role,
                turns.c.interrupted,
                turns.c.latency_ms,
                turns.c.meta,
            ).where(turns.c.call_sid.in_(ended), turns.c.role == "bot")
        ):
            turns_of[t.call_sid].append(t._mapping)
        for e in conn.execute(
            select(events.c.call_sid, events.c.kind, events.c.data).where(
                events.c.call_sid.in_(ended), events.c.kind.in_(sorted(CONNECTION_KINDS))
            )
        ):
            kinds_of[e.call_sid].append((e.kind, e.data))
    new = {sid: facts_of(call_rows[sid], turns_of[sid], kinds_of[sid]) for sid in ended}
    old = {
        r.sid: CallFacts.from_row(r._mapping)
        for r in conn.execute(select(call_facts).where(call_facts.c.sid.in_(wanted)))
    }
    changed = [sid for sid in wanted if new.get(sid) != old.get(sid)]
    if not changed:
        return
    rollup: Counter[tuple[int, str, str, str]] = Counter()
    latency: Counter[tuple[int, str, int]] = Counter()
    for sid in changed:
        for facts, sign in ((old.get(sid), -1), (new.get(sid), 1)):
            if facts is None:
                continue
            key = (facts.bucket, facts.profile, facts.outcome)
            rollup[(*key, "calls")] += sign
            rollup[(*key, "duration_ms")] += sign * facts.duration_ms
            rollup[(*key, "bot_turns")] += sign * facts.bot_turns
            rollup[(*key, "barge_ins")] += sign * facts.barge_ins
            rollup[(*key, "barged_calls")] += sign * (facts.barge_ins > 0)
            rollup[(*key, "reconnects")] += sign * facts.reconnects
            for b in facts.latency_bins:
                latency[(facts.bucket, facts.profile, b)] += sign
    _add_rollups(conn, dialect, rollup, latency)
    gone = [sid for sid in changed if sid not in new]
    if gone:
        conn.execute(delete(call_facts).where(call_facts.c.sid.in_(gone)))
    fresh = [new[sid].row(sid) for sid in changed if sid in new]
    if fresh:
        cols = tuple(c.name for c in call_facts.columns if c.name != "sid")
        conn.execute(upsert_statement(dialect, call_facts, ("sid",), cols), fresh)


ROLLUP_SUMS = ("calls", "duration_ms", "bot_turns", "barge_ins", "barged_calls", "reconnects")


def _add_rollups(
    conn: Connection,
    dialect: str,
    rollup: Counter[tuple[int, str, str, str]],
    latency: Counter[tuple[int, str, int]],
) -> None:
    for seconds, rollup_table, latency_table in RESOLUTIONS:
        rows: dict[tuple[int, str, str], dict[str, Any]] = {}
        for (bucket, profile, outcome, column), n in rollup.items():
            key = (bucket // seconds * seconds, profile, outcome)
            row = rows.setdefault(
                key,
                {"bucket": key[0], "profile": profile, "outcome": outcome}
                | dict.fromkeys(ROLLUP_SUMS, 0),
            )
            row[column] += n
        if rows:
            conn.execute(_add_statement(dialect, rollup_table, ROLLUP_SUMS), list(rows.values()))
        turns_by: Counter[tuple[int, str, int]] = Counter()
        for (bucket, profile, b), n in latency.items():
            turns_by[(bucket // seconds * seconds, profile, b)] += n
        lat_rows = [
            {"bucket": bucket, "profile": profile, "bin_ms": b, "turns": n}
            for (bucket, profile, b), n in turns_by.items()
            if n
        ]
        if lat_rows:
            conn.execute(_add_statement(dialect, latency_table, ("turns",)), lat_rows)


@functools.cache
def _add_statement(dialect: str, table: Any, sums: tuple[str, ...]) -> Any:
    """INSERT, or add `sums` to the row with the same key (every other column). Built once
    per table: each build makes an `excluded` alias of the table, objects in reference loops
    the cyclic garbage collector would have to find after every batch."""
    stmt = dialect_insert(dialect, table)
    keys = [c.name for c in table.primary_key.columns]
    return stmt.on_conflict_do_update(
        index_elements=keys, set_={c: table.c[c] + stmt.excluded[c] for c in sums}
    )
