"""The live wallboard's state from the database: every call in progress on every instance (the
instances share the database), its last turns and alerts, and today's outcomes.

Live events (telephony/live/) keep a page up to date; this is what it starts from, and what it
goes back to when it missed events. Calls in progress are found by the partial index on
`ended_at IS NULL`; their last turns with one window query; today's outcomes by `started_at`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from telephony.store.schema import calls, events, turns
from telephony.transcript import EventKind

MAX_CALLS = 500  # a wallboard shows at most this many (the oldest first)
LAST_TURNS = 2
TEXT_CHARS = 160
# Events that put an alert on a call's card, and the one that means "waiting for a person".
ALERT_KINDS = (EventKind.UPSTREAM_FAILED, EventKind.TRANSFER, EventKind.HANDOVER)


@dataclass
class BoardCall:
    sid: str
    number: str  # the number dialled (which line)
    caller: str
    profile: str
    mode: str
    started_at: float
    instance: str
    last_turns: list[tuple[str, str]] = field(default_factory=list)  # (role, text), oldest first
    last_latency_ms: int | None = None
    transferring: bool = False
    failover: bool = False


@dataclass
class Board:
    calls: list[BoardCall]
    outcomes: dict[str, int]  # calls started since `since` and ended, by outcome

    @property
    def with_person(self) -> int:
        return sum(1 for c in self.calls if c.transferring)


async def live_board(engine: AsyncEngine, since: float) -> Board:
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                select(
                    calls.c.sid, calls.c.to_number, calls.c.from_number, calls.c.profile,
                    calls.c.mode, calls.c.started_at, calls.c.instance_id,
                )
                .where(calls.c.ended_at.is_(None))
                .order_by(calls.c.started_at)
                .limit(MAX_CALLS)
            )
        ).all()  # fmt: skip
        board = {r.sid: BoardCall(r.sid, *r[1:]) for r in rows}
        if board:
            await _fill(conn, board)
        ended = (
            await conn.execute(
                select(calls.c.end_reason, func.count())
                .where(calls.c.started_at >= since, calls.c.ended_at.is_not(None))
                .group_by(calls.c.end_reason)
            )
        ).all()
    return Board(list(board.values()), {reason or "unknown": n for reason, n in ended})


async def _fill(conn: Any, board: dict[str, BoardCall]) -> None:
    sids = list(board)
    ranked = (
        select(
            turns.c.call_sid, turns.c.idx, turns.c.role, turns.c.text, turns.c.heard,
            turns.c.latency_ms,
            func.row_number()
            .over(partition_by=turns.c.call_sid, order_by=turns.c.idx.desc())
            .label("nth"),
        )
        .where(turns.c.call_sid.in_(sids))
        .subquery()
    )  # fmt: skip
    recent = await conn.execute(
        select(ranked).where(ranked.c.nth <= 4).order_by(ranked.c.call_sid, ranked.c.idx)
    )
    for r in recent:
        call = board[r.call_sid]
        text = r.heard if r.role == "bot" and r.heard is not None else r.text
        call.last_turns = [*call.last_turns, (r.role, text[:TEXT_CHARS])][-LAST_TURNS:]
        if r.role == "bot" and r.latency_ms is not None:
            call.last_latency_ms = r.latency_ms
    alerts = await conn.execute(
        select(events.c.call_sid, events.c.kind).where(
            events.c.call_sid.in_(sids), events.c.kind.in_([str(k) for k in ALERT_KINDS])
        )
    )
    for sid, kind in alerts:
        if kind == EventKind.UPSTREAM_FAILED:
            board[sid].failover = True
        else:
            board[sid].transferring = True
