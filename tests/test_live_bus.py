"""The live bus (telephony/live/): events published without waiting, heard by every instance
(PostgreSQL LISTEN/NOTIFY between two buses on a real server), replayed to a browser that
reconnects with Last-Event-ID, and a slow browser or a lost listener never holding up the rest."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text

from telephony.live.bus import MAX_PAYLOAD, RESET, LiveBus, LiveEvent
from telephony.live.pg import CHANNEL, PgNotify
from telephony.store.engine import make_engine
from tests.pg_server import PgServer, fresh_database


async def drain(sub, n: int, wait_s: float = 2.0) -> list[LiveEvent]:  # type: ignore[no-untyped-def]
    got: list[LiveEvent] = []
    async with asyncio.timeout(wait_s):
        async for event in sub:
            got.append(event)
            if len(got) == n:
                return got
    return got


async def test_events_reach_subscribers_in_order_and_a_reconnect_gets_what_it_missed() -> None:
    bus = LiveBus("a")
    await bus.start()
    try:
        sub = bus.subscribe()
        for i in range(3):
            bus.publish("turn", "CA1", idx=i)
        got = await drain(sub, 3)
        assert [(e.kind, e.data["idx"]) for e in got] == [("turn", 0), ("turn", 1), ("turn", 2)]
        assert [e.id for e in got] == ["a.1", "a.2", "a.3"]
        sub.close()

        # A browser that saw a.1 comes back: a.2 and a.3 first, then what follows.
        again = bus.subscribe(last_id="a.1")
        bus.publish("call-ended", "CA1", outcome="caller-hangup")
        replayed = await drain(again, 3)
        assert [e.id for e in replayed] == ["a.2", "a.3", "a.4"]
        # The missed ones are kept encoded (out of the collector's view) and come back whole.
        assert replayed[:2] == got[1:]
        # An id this bus never heard (another deployment, or long gone): refetch everything.
        lost = bus.subscribe(last_id="zz.9")
        [first] = await drain(lost, 1)
        assert first.kind == RESET
    finally:
        await bus.stop()


async def test_a_slow_subscriber_is_reset_and_a_full_queue_drops_without_waiting() -> None:
    bus = LiveBus("a", queue=5, subscriber_queue=3)
    slow = bus.subscribe()
    for i in range(8):  # the bus is not running yet: its queue fills, then drops
        bus.publish("turn", "CA1", idx=i)
    assert (bus.counts.published, bus.counts.dropped) == (5, 3)
    await bus.start()
    try:
        await asyncio.sleep(0.05)
        # Five events for a stream that holds three and never read: the stale ones make way
        # for one RESET (the browser refetches), then what came after.
        events = [e async for e in _now(slow)]
        assert [(e.kind, e.data.get("idx")) for e in events] == [(RESET, None), ("turn", 4)]
        assert bus.counts.subscriber_dropped == 3
        fresh = bus.subscribe()
        bus.publish("turn", "CA1", idx=9)
        assert [e.data["idx"] for e in await drain(fresh, 1)] == [9]
    finally:
        await bus.stop()


async def _now(sub) -> AsyncIterator[LiveEvent]:  # type: ignore[no-untyped-def]
    """What the subscription holds now, without waiting for more."""
    while (event := await sub.next(0.01)) is not None:
        yield event


def test_an_event_round_trips_and_oversized_text_is_cut_to_fit_a_notify() -> None:
    event = LiveEvent("interim", "CA1", {"text": "x" * 20_000, "role": "caller"}, "a", 7, 1.5)
    from telephony.live.bus import _fit

    raw = _fit(event)
    assert len(raw) <= MAX_PAYLOAD
    back = LiveEvent.decode(raw)
    assert (back.kind, back.sid, back.id, back.data["role"]) == ("interim", "CA1", "a.7", "caller")
    assert back.data["cut"] is True and len(back.data["text"]) < 300


# --- across instances: PostgreSQL ------------------------------------------------------------


@pytest.fixture
async def pg_url(postgres_server: PgServer) -> AsyncIterator[str]:
    async with fresh_database(postgres_server, "live") as url:
        yield url


async def test_listeners_hear_other_instances_events_of_their_kind_only() -> None:
    """`on_remote`: the app's own bookkeeping (routes/app.py releases the reservation of a call
    another instance took) hears each remote event of its kind, never this instance's own; a
    listener that fails costs the browsers nothing."""
    bus = LiveBus("a")
    heard: list[str] = []
    bus.on_remote("call-started", lambda e: heard.append(e.sid))
    bus.on_remote("call-started", lambda e: 1 / 0)  # type: ignore[func-returns-value]
    await bus.start()
    try:
        sub = bus.subscribe()
        for origin, kind, sid in [
            ("b", "call-started", "CA1"),
            ("b", "turn", "CA1"),
            ("a", "call-started", "CA2"),
            ("c", "call-started", "CA3"),
        ]:
            bus._heard(LiveEvent(kind, sid, {}, origin, 1, 0.0).encode())
        assert heard == ["CA1", "CA3"]
        got = await drain(sub, 3)
        assert [(e.origin, e.sid) for e in got] == [("b", "CA1"), ("b", "CA1"), ("c", "CA3")]
    finally:
        await bus.stop()


async def test_two_instances_hear_each_other_through_postgres(pg_url: str) -> None:
    engines = [make_engine(pg_url), make_engine(pg_url)]
    buses = [LiveBus(name, PgNotify(engine)) for name, engine in zip("ab", engines, strict=True)]
    for bus in buses:
        assert bus.transport is not None
        bus.transport.on_lost = bus.reset_all  # type: ignore[attr-defined]
        await bus.start()
    a, b = buses
    try:
        on_a, on_b = a.subscribe(), b.subscribe()
        a.publish("call-started", "CA1", number="+15550001000")
        a.publish("interim", "CA1", role="caller", text="I need" + " help" * 3000)
        b.publish("call-started", "CA2", number="+15550002000")
        got_b = await drain(on_b, 3)
        got_a = await drain(on_a, 2)
        assert {(e.origin, e.kind, e.sid) for e in got_b} == {
            ("a", "call-started", "CA1"), ("a", "interim", "CA1"), ("b", "call-started", "CA2"),
        }  # fmt: skip
        interim = next(e for e in got_b if e.kind == "interim")
        assert interim.data["cut"] is True and interim.data["text"].startswith("I need help")
        # Its own events reach an instance once (directly), never again through PostgreSQL.
        assert sorted(e.id for e in got_a) == ["a.1", "a.2"]
        assert [e async for e in _now(on_a)] == [] or all(
            e.origin == "b" for e in [e async for e in _now(on_a)]
        )

        # The listening connection dies: B listens again, and its browsers refetch.
        admin = make_engine(pg_url)
        async with admin.begin() as conn:
            await conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE query LIKE :q AND pid <> pg_backend_pid()"
                ),
                {"q": f"%LISTEN%{CHANNEL}%"},
            )
        await admin.dispose()
        got = await drain(on_b, 1, wait_s=5)
        assert got[0].kind == RESET
        assert b.transport is not None
        await asyncio.wait_for(b.transport.listening.wait(), 5)  # type: ignore[attr-defined]
        a.publish("call-ended", "CA1", outcome="caller-hangup")
        later = await drain(on_b, 1, wait_s=5)
        assert (later[0].kind, later[0].data) == ("call-ended", {"outcome": "caller-hangup"})
    finally:
        for bus in buses:
            await bus.stop()
        for engine in engines:
            await engine.dispose()
