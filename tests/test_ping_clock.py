"""One ping clock for every Deepgram socket (telephony/deepgram/ping_clock.py): each socket
pinged at its interval, from one loop timer; no second ping while one is unanswered; a peer
that answers none within the timeout is dropped. The pings on the wire, against the fake
Flux, are in tests/test_resilience.py (a paused stream kept alive by pings alone)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from websockets.protocol import State

from telephony.deepgram import ping_clock
from telephony.deepgram.ping_clock import PingClock

pytestmark = pytest.mark.clock(1)  # intervals of tens of ms, counted


class FakeTransport:
    def __init__(self) -> None:
        self.aborted = False

    def is_closing(self) -> bool:
        return self.aborted

    def abort(self) -> None:
        self.aborted = True


class FakeProtocol:
    def __init__(self) -> None:
        self.state = State.OPEN
        self.pings: list[bytes] = []

    def send_ping(self, data: bytes) -> None:
        self.pings.append(data)


class FakeConnection:
    """What the clock uses of websockets' asyncio Connection; `answer` pongs every ping."""

    def __init__(self, answer: bool = True) -> None:
        self.loop = asyncio.get_running_loop()
        self.protocol = FakeProtocol()
        self.transport = FakeTransport()
        self.pending_pings: dict[bytes, tuple[asyncio.Future[float], float]] = {}
        self.answer = answer
        self.sent_at: list[float] = []

    def send_data(self) -> None:
        self.sent_at.append(self.loop.time())
        if self.answer:  # the pong, a moment later (websockets resolves and drops the ping)
            data = self.protocol.pings[-1]
            self.loop.call_later(0.005, self.pending_pings.pop, data)


@pytest.fixture
async def clock() -> PingClock:
    return PingClock(asyncio.get_running_loop())


def test_the_shared_clock_runs_on_this_websockets() -> None:
    assert ping_clock.SUPPORTED  # else every socket would keep its own keepalive task


async def test_each_socket_is_pinged_at_its_interval_from_one_timer(
    clock: PingClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    loop = asyncio.get_running_loop()
    arms = 0
    call_at = loop.call_at

    def counted(when: float, callback: Any, *args: Any, **kwargs: Any) -> asyncio.TimerHandle:
        nonlocal arms
        arms += callback == clock._wake  # the clock's own timer, not the fake pongs'
        return call_at(when, callback, *args, **kwargs)

    monkeypatch.setattr(loop, "call_at", counted)
    sockets = [FakeConnection() for _ in range(50)]
    began = loop.time()
    for ws in sockets:
        clock.add(ws, interval_s=0.05, timeout_s=0.2)  # type: ignore[arg-type]
    await asyncio.sleep(0.33)
    for ws in sockets:
        gaps = [b - a for a, b in zip([began, *ws.sent_at], ws.sent_at, strict=False)]
        assert 3 <= len(ws.sent_at) <= 7, gaps  # 6 on time (fewer if the host stalls)
        # One an interval (never two back to back; early by at most the coalescing window).
        assert min(gaps) >= 0.05 - ping_clock.COALESCE_S - 0.001, gaps
    # 50 sockets added together share their wake-ups: ~one per interval, not one per ping.
    assert arms <= 12, arms


async def test_no_second_ping_before_the_pong_and_a_silent_peer_is_dropped(
    clock: PingClock,
) -> None:
    silent, alive = FakeConnection(answer=False), FakeConnection()
    clock.add(silent, interval_s=0.05, timeout_s=0.2)  # type: ignore[arg-type]
    clock.add(alive, interval_s=0.05, timeout_s=0.2)  # type: ignore[arg-type]
    await asyncio.sleep(0.15)
    assert len(silent.sent_at) == 1 and not silent.transport.aborted  # waiting for its pong
    await asyncio.sleep(0.2)  # past the timeout
    assert silent.transport.aborted and len(silent.sent_at) == 1
    assert not alive.transport.aborted and len(alive.sent_at) >= 3  # ~7 on time
    assert len(clock) == 1  # the dropped socket left the clock


async def test_a_closed_or_freed_socket_leaves_the_clock(clock: PingClock) -> None:
    closed, freed = FakeConnection(), FakeConnection()
    clock.add(closed, interval_s=0.05, timeout_s=0.2)  # type: ignore[arg-type]
    clock.add(freed, interval_s=0.05, timeout_s=0.2)  # type: ignore[arg-type]
    closed.protocol.state = State.CLOSED
    del freed  # the clock holds a socket weakly: an ended call's sockets are not kept
    await asyncio.sleep(0.08)
    assert closed.sent_at == [] and len(clock) == 0


class Beats:
    """A beat that runs every `every_s` until told to stop, recording when it ran."""

    def __init__(self, every_s: float, fail: bool = False) -> None:
        self.every_s = every_s
        self.ran: list[float] = []
        self.done = False
        self.fail = fail

    def beat(self, now: float) -> float | None:
        self.ran.append(now)
        if self.fail:
            raise RuntimeError("surprise")
        return None if self.done else now + self.every_s


async def test_beats_ride_the_clock_held_weakly_until_done(clock: PingClock) -> None:
    kept, dropped, failing = Beats(0.03), Beats(0.03), Beats(0.03, fail=True)
    now = asyncio.get_running_loop().time()
    for beat in (kept, dropped, failing):
        clock.add_beat(beat, now + 0.03)
    dropped_ran = dropped.ran
    del dropped  # its owner let go of it: the clock does not keep it alive
    await asyncio.sleep(0.2)
    assert len(kept.ran) >= 4 and dropped_ran == [] and len(failing.ran) == 1
    kept.done = True
    ran = len(kept.ran)
    await asyncio.sleep(0.1)
    assert len(kept.ran) == ran + 1  # asked once more, said it was done, never again
    assert len(clock) == 0
