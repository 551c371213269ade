"""One clock for every Deepgram socket's WebSocket pings, instead of a task per socket (and
for the JSON KeepAlives of the endpoints that want them: `add_beat`).

Every Deepgram socket is pinged every `PING_INTERVAL_S` (telephony/deepgram/connection.py):
Flux needs pings to stay open while no audio flows (docs/protocol.md §2), and on every socket
an unanswered ping is how a dead peer is found. websockets does this with a keepalive task per
connection that sleeps, pings and awaits the pong: at 300 calls some 600 tasks whose pending
sleeps, timeouts and waiters (~4 000 objects) every young garbage collection scans and
promotes, a stall of every call's audio.

Here one loop timer per process serves them all, waking when the earliest ping is due (pings
due within `COALESCE_S` of it go in the same wake-up). Each socket keeps websockets' rule: a
ping, then no other until its pong (or `timeout_s`: the peer is dead and the socket is
aborted, so its events loop sees it closed and the link reconnects — as `send_now` does for
a peer that stopped reading), then the next `interval_s` after the pong. The ping itself is
websockets' own (`pending_pings`, which its pong handling resolves), written as `ping()`
would but without awaiting a drain (a ping is 6 bytes; the audio is not awaited either).

Anything else a socket must do on a schedule rides the same timer as a `Beat` (Nova's and the
agent's JSON KeepAlives: telephony/deepgram/connection.py `KeepAlive`), held weakly: a beat
says when it wants to run next, or None when it is done.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import random
import struct
import weakref
from dataclasses import dataclass
from typing import ClassVar, Protocol

from websockets.asyncio.connection import Connection
from websockets.protocol import State

log = logging.getLogger(__name__)

COALESCE_S = 0.1  # pings due this soon after a wake-up go out with it

# The shared clock needs websockets' asyncio ping bookkeeping (`pending_pings`, 15 and later)
# and `send_data`; without them each connection keeps its own keepalive task.
SUPPORTED = "pending_pings" in Connection.__init__.__code__.co_names and hasattr(
    Connection, "send_data"
)


class Beat(Protocol):
    def beat(self, now: float) -> float | None:
        """Do what is due at loop time `now`; when to run again, or None (done for good)."""
        ...


@dataclass(eq=False, slots=True)
class _Weakly:
    """A beat the clock must not keep alive: gone with its owner."""

    ref: weakref.ref[Beat]

    def beat(self, now: float) -> float | None:
        beat = self.ref()
        return None if beat is None else beat.beat(now)


@dataclass(eq=False, slots=True)
class _Pinged:
    ws: weakref.ref[Connection]
    interval_s: float
    timeout_s: float
    ping: bytes | None = None  # the ping awaiting its pong
    sent_at: float = 0.0

    def beat(self, now: float) -> float | None:
        """Ping, or check the ping out: when to look again, or None (the socket is gone)."""
        ws = self.ws()
        if ws is None or ws.protocol.state is not State.OPEN or ws.transport.is_closing():
            return None
        if self.ping is not None:
            if self.ping in ws.pending_pings:  # not answered yet
                if now - self.sent_at < self.timeout_s:
                    return self.sent_at + self.timeout_s
                log.warning(
                    "Deepgram socket answered no ping for %.1f s: dropping it", self.timeout_s
                )
                ws.transport.abort()
                return None
            self.ping = None  # answered: the next one an interval after this one, as websockets
            due = self.sent_at + self.interval_s
            if due > now + COALESCE_S:
                return due
        self._send(ws, now)
        return now + self.interval_s  # answered by then: the next; if not, wait out the timeout

    def _send(self, ws: Connection, now: float) -> None:
        data = struct.pack("!I", random.getrandbits(32))
        while data in ws.pending_pings:
            data = struct.pack("!I", random.getrandbits(32))
        ws.pending_pings[data] = (ws.loop.create_future(), now)
        ws.protocol.send_ping(data)
        ws.send_data()
        self.ping, self.sent_at = data, now


class PingClock:
    """The pings of every socket `add`ed, on one loop timer (one clock per event loop)."""

    _clocks: ClassVar[weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, PingClock]] = (
        weakref.WeakKeyDictionary()
    )

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> PingClock:
        clock = cls._clocks.get(loop)
        if clock is None:
            clock = cls._clocks[loop] = cls(loop)
        return clock

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._due: list[tuple[float, int, Beat]] = []  # a heap: (when, tie-break, beat)
        self._order = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._wake_at = float("inf")

    def __len__(self) -> int:
        return len(self._due)

    def add(self, ws: Connection, interval_s: float, timeout_s: float) -> None:
        """Ping `ws` from `interval_s` on until it closes (nothing to remove)."""
        self._push(self._loop.time() + interval_s, _Pinged(weakref.ref(ws), interval_s, timeout_s))

    def add_beat(self, beat: Beat, at: float) -> None:
        """Run `beat` first at loop time `at`, then whenever it asks, while it lives."""
        self._push(at, _Weakly(weakref.ref(beat)))

    def _push(self, at: float, beat: Beat) -> None:
        heapq.heappush(self._due, (at, next(self._order), beat))
        if at < self._wake_at:
            self._arm(at)

    def _arm(self, at: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._wake_at = at
        self._timer = self._loop.call_at(at, self._wake)

    def _wake(self) -> None:
        self._timer, self._wake_at = None, float("inf")
        now = self._loop.time()
        due = self._due
        ready = []  # taken out first: each socket is looked at once per wake-up
        while due and due[0][0] <= now + COALESCE_S:
            ready.append(heapq.heappop(due))
        for _, order, beat in ready:
            try:
                again = beat.beat(now)
            except Exception:  # one socket's surprise must not stop every other's beats
                log.exception("Deepgram ping or KeepAlive failed")
                again = None
            if again is not None:
                heapq.heappush(due, (again, order, beat))
        if due:
            self._arm(due[0][0])
