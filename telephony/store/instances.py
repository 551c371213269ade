"""Calls left open by a crashed instance: found by heartbeats, closed with outcome `restart`.

A call's row stays live (``ended_at`` NULL) until the instance carrying it writes its end. An
instance killed with ``kill -9`` (or OOM-killed, or losing its host) never does, so:

* Every process has an id, unique per process (``new_instance_id``: the host name, the pid
  and random bits), and optionally a *name*, ``TELEPHONY_INSTANCE_ID``, stable across
  restarts (a StatefulSet pod or compose service name) and unique among running processes.
  Each call row records the id of the process carrying it (``calls.instance_id``).
* Every process keeps a heartbeat row (``instances``: id, name, started_at, last_seen),
  written at start and every ``HEARTBEAT_S`` by the transcript store's keeper task: off the
  audio path, like the store's write-behind writer.
* At start and after each heartbeat, ``sweep`` closes the open calls of every *other*
  process that is gone:
  - its heartbeat is older than ``STALE_AFTER_S`` (three heartbeats missed);
  - or it has this process's name and started earlier: this instance's own previous
    incarnation, closed at once at start-up without waiting for its heartbeat to go stale;
  - or it has no heartbeat row and the call started more than ``STALE_AFTER_S`` ago;
  - calls with no instance at all (rows from before revision 0004, or written by an older
    instance during a rolling upgrade) once they started more than ``UNOWNED_AFTER_S`` ago.
  Each is closed with end_reason ``restart``, ``duration_ms`` the call-clock time of its last
  stored turn or event, and ``ended_at`` the dead instance's last heartbeat (it carried the
  call at least until then) or, without one, the start plus that duration. Gone instances'
  heartbeat rows are then deleted; a clean shutdown deletes its own row.

Several sweepers may close the same call: each update is guarded by ``ended_at IS NULL``, so
the first wins and the rest change nothing. An instance that is alive but cannot reach the
database for longer than ``STALE_AFTER_S`` has its live calls closed as ``restart`` too; each
is rewritten with its real outcome when it ends (the store's end row is an upsert). Clocks:
heartbeats and sweeps compare the instances' wall clocks, so they must agree to well within
``STALE_AFTER_S`` (NTP does).
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time
from dataclasses import dataclass, field

from sqlalchemy import and_, bindparam, delete, false, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from telephony.outcome import Outcome
from telephony.store.call_stats import refresh_facts
from telephony.store.review_queue import ReviewFor, default_review, refresh_flags
from telephony.store.schema import calls, events, instances, turns, upsert_statement

log = logging.getLogger(__name__)

HEARTBEAT_S = 10.0
STALE_AFTER_S = 3 * HEARTBEAT_S
# Longer than any call lasts (the default time limit is 1 h, the Voice Agent's session cap 2 h).
UNOWNED_AFTER_S = 6 * 3600.0
ID_CHARS = 64  # calls.instance_id, instances.id
# Built once: this subquery built per sweep left ~200 objects in reference loops each time
# (its column collection, the coerced subquery), for the cyclic collector, whose collections
# stall every live call.
_OWNER_UNKNOWN = ~calls.c.instance_id.in_(select(instances.c.id))


def new_instance_id() -> str:
    """Unique per process, and readable in logs: host, pid, random."""
    host = socket.gethostname()[:40] or "host"
    return f"{host}-{os.getpid()}-{secrets.token_hex(4)}"[:ID_CHARS]


@dataclass(frozen=True, slots=True)
class Instance:
    """This process as the heartbeat table knows it."""

    id: str = field(default_factory=new_instance_id)
    name: str = ""  # TELEPHONY_INSTANCE_ID: stable across restarts, unique while running
    started_at: float = field(default_factory=time.time)
    url: str = ""  # TELEPHONY_INTERNAL_URL: how the other instances reach this one


async def heartbeat(engine: AsyncEngine, me: Instance, now: float | None = None) -> None:
    """This instance is alive: its row's last_seen is now."""
    now = time.time() if now is None else now
    stmt = upsert_statement(engine.dialect.name, instances, ("id",), ("last_seen", "url"))
    row = {"id": me.id, "name": me.name, "started_at": me.started_at, "last_seen": now}
    row["url"] = me.url
    async with engine.begin() as conn:
        await conn.execute(stmt, row)


async def forget(engine: AsyncEngine, me: Instance) -> None:
    """A clean shutdown: this instance is gone (anything it left open is swept at once)."""
    async with engine.begin() as conn:
        await conn.execute(delete(instances).where(instances.c.id == me.id))


async def sweep(
    engine: AsyncEngine,
    me: Instance,
    now: float | None = None,
    *,
    stale_after_s: float = STALE_AFTER_S,
    unowned_after_s: float = UNOWNED_AFTER_S,
    review_for: ReviewFor = default_review,
) -> list[str]:
    """Close (as `restart`) the open calls of instances that are gone; their SIDs."""
    now = time.time() if now is None else now
    stale = now - stale_after_s
    superseded = and_(
        instances.c.name == me.name, instances.c.name != "", instances.c.started_at < me.started_at
    )
    gone_q = select(instances.c.id, instances.c.last_seen).where(
        instances.c.id != me.id, or_(instances.c.last_seen < stale, superseded)
    )
    async with engine.begin() as conn:
        gone = dict((await conn.execute(gone_q)).all())
        open_q = select(calls.c.sid, calls.c.started_at, calls.c.instance_id).where(
            calls.c.ended_at.is_(None),
            or_(
                calls.c.instance_id.in_(list(gone)) if gone else false(),
                and_(
                    calls.c.instance_id != "",
                    calls.c.instance_id != me.id,
                    _OWNER_UNKNOWN,
                    calls.c.started_at < stale,
                ),
                and_(calls.c.instance_id == "", calls.c.started_at < now - unowned_after_s),
            ),
        )
        left = (await conn.execute(open_q)).all()
        closed = []
        if left:
            activity = await _last_activity(conn, [sid for sid, _, _ in left])
            rows = []
            for sid, started_at, owner in left:
                duration_ms = activity.get(sid, 0)
                ended_at = started_at + duration_ms / 1000
                if owner in gone:
                    ended_at = max(ended_at, min(gone[owner], now))
                why = f"left open by instance {owner or '(unknown)'}; closed by {me.id}"
                rows.append(
                    {
                        "b_sid": sid,
                        "ended_at": ended_at,
                        "end_detail": why,
                        "duration_ms": duration_ms,
                    }
                )
                closed.append(sid)
            close = (
                update(calls)
                .where(calls.c.sid == bindparam("b_sid"), calls.c.ended_at.is_(None))
                .values(
                    ended_at=bindparam("ended_at"),
                    end_reason=str(Outcome.RESTART),
                    end_detail=bindparam("end_detail"),
                    duration_ms=bindparam("duration_ms"),
                )
            )
            await conn.execute(close, rows)
            await refresh_facts(conn, closed)  # the dashboard counts them, as restarts
            await refresh_flags(conn, closed, review_for)  # and the review queue sees them
        if gone:
            await conn.execute(delete(instances).where(instances.c.id.in_(list(gone))))
    if closed:
        owners = sorted({owner or "(unknown)" for _, _, owner in left})
        log.warning(
            "closed %d call(s) left open by instance(s) no longer running (%s): outcome restart",
            len(closed),
            ", ".join(owners),
        )
    return closed


async def _last_activity(conn: AsyncConnection, sids: list[str]) -> dict[str, int]:
    """Per call: the call-clock ms of its last stored turn end or event."""
    out: dict[str, int] = {}
    for col, key in ((turns.c.end_ms, turns.c.call_sid), (events.c.ms, events.c.call_sid)):
        q = select(key, func.max(col)).where(key.in_(sids)).group_by(key)
        for sid, ms in await conn.execute(q):
            out[sid] = max(out.get(sid, 0), int(ms or 0))
    return out


async def carrier_of(engine: AsyncEngine, call_sid: str) -> tuple[str, str] | None:
    """(instance id, internal URL) of the instance carrying a live call, if any is known."""
    query = (
        select(calls.c.instance_id, instances.c.url)
        .join(instances, instances.c.id == calls.c.instance_id)
        .where(calls.c.sid == call_sid, calls.c.ended_at.is_(None))
    )
    async with engine.connect() as conn:
        row = (await conn.execute(query)).first()
    return (row[0], row[1]) if row is not None else None
