"""Live events across instances: what happens on calls now, for the staff UI's live views.

A call is carried by the instance whose WebSocket Twilio opened; a browser may be connected to
any instance. Each instance publishes its calls' events here and every instance hears every
instance's: through PostgreSQL `LISTEN/NOTIFY` when the deployment shares PostgreSQL
(`PgNotify`, one listening connection per instance), within the process on SQLite (one
instance only).

Nothing on the audio path waits on it. `publish` puts the event on a bounded queue and
returns; a full queue drops the event and counts it. One task sends what is queued (a batch of
NOTIFYs in one statement) and hands each event to this instance's subscribers. A subscriber
(one browser's event stream) has its own bounded queue: one that does not keep up loses its
oldest events and is told to refetch (`RESET`), never slowing the others.

Each event has an id, `<instance>.<n>`, and every instance keeps the last `recent` it heard in
the order heard, so a browser that reconnects with `Last-Event-ID` (to this instance or
another) gets what it missed, or `RESET` when that id is no longer (or never was) here.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

log = logging.getLogger(__name__)

QUEUE = 10_000  # events waiting to be sent; beyond it they are dropped (counted)
RECENT = 2_000  # events kept for reconnecting browsers
SUBSCRIBER_QUEUE = 500  # per browser stream
MAX_BATCH = 200  # events sent in one NOTIFY statement
MAX_PAYLOAD = 7_900  # bytes: PostgreSQL refuses a NOTIFY payload of 8000 or more
RESET = "reset"  # the kind a subscriber gets when it missed events: refetch the state


@dataclass(frozen=True, slots=True)
class LiveEvent:
    kind: str  # call-started, call-ended, turn, interim, barge-in, reconnect, transfer, qa, ...
    sid: str  # the call
    data: dict[str, Any] = field(default_factory=dict)  # small: ids and deltas
    origin: str = ""  # the instance that published it
    n: int = 0  # its number on that instance
    at: float = 0.0  # wall clock when published (delivery latency is measured from it)

    @property
    def id(self) -> str:
        return f"{self.origin}.{self.n}"

    def encode(self) -> bytes:
        raw = orjson.dumps(
            {"k": self.kind, "s": self.sid, "d": self.data, "o": self.origin, "n": self.n,
             "t": self.at}
        )  # fmt: skip
        return raw

    @classmethod
    def decode(cls, raw: bytes | str) -> LiveEvent:
        d = orjson.loads(raw)
        return cls(d["k"], d["s"], d.get("d") or {}, d["o"], int(d["n"]), float(d.get("t", 0)))


class Transport(Protocol):
    """How events reach the other instances (and come back from them)."""

    async def start(self, heard: Callable[[bytes | str], None]) -> None: ...

    async def send(self, payloads: list[bytes]) -> None: ...

    async def stop(self) -> None: ...


@dataclass
class BusCounts:
    published: int = 0
    dropped: int = 0  # the send queue was full
    send_failed: int = 0  # events a failed send lost
    heard: int = 0  # from other instances
    subscriber_dropped: int = 0  # events a slow browser stream lost


class Subscription:
    """One browser stream's events; iterate it. Ends when the bus stops or it is closed."""

    def __init__(self, bus: LiveBus, size: int) -> None:
        self._bus = bus
        self._queue: deque[LiveEvent] = deque()
        self._size = size
        self._ready = asyncio.Event()
        self.closed = False

    def put(self, event: LiveEvent) -> None:
        if len(self._queue) >= self._size:
            # Behind: what is queued is stale; the browser refetches the state instead.
            self._bus.counts.subscriber_dropped += len(self._queue)
            self._queue.clear()
            self._queue.append(LiveEvent(RESET, "", {"why": "behind"}))
        else:
            self._queue.append(event)
        self._ready.set()

    def close(self) -> None:
        self.closed = True
        self._ready.set()
        self._bus._subscribers.discard(self)

    def __aiter__(self) -> AsyncIterator[LiveEvent]:
        return self._events()

    async def _events(self) -> AsyncIterator[LiveEvent]:
        while True:
            while self._queue:
                yield self._queue.popleft()
            if self.closed:
                return
            self._ready.clear()
            await self._ready.wait()

    async def next(self, wait_s: float) -> LiveEvent | None:
        """The next event, or None after `wait_s` (a heartbeat is due) or once closed."""
        if not self._queue and not self.closed:
            self._ready.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait_s):
                    await self._ready.wait()
        return self._queue.popleft() if self._queue else None


class LiveBus:
    def __init__(
        self,
        instance: str,
        transport: Transport | None = None,
        *,
        queue: int = QUEUE,
        recent: int = RECENT,
        subscriber_queue: int = SUBSCRIBER_QUEUE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.instance = instance
        self.transport = transport
        self.counts = BusCounts()
        self._queue: deque[LiveEvent] = deque()
        self._queue_max = queue
        # (id, encoded event): a tuple of a str and bytes leaves the garbage collector's view
        # at its first collection, where 2 000 LiveEvents would be scanned at every one (on a
        # busy instance all of them are younger than the last collection: README, Performance).
        self._recent: deque[tuple[str, bytes]] = deque(maxlen=recent)
        self._subscriber_queue = subscriber_queue
        self._subscribers: set[Subscription] = set()
        self._numbers = itertools.count(1)
        self._wake = asyncio.Event()
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self._remote: dict[str, list[Callable[[LiveEvent], None]]] = {}

    # --- publishing (any code on the loop; never waits) -------------------------------------

    def publish(self, kind: str, sid: str, /, **data: Any) -> None:
        if len(self._queue) >= self._queue_max:
            self.counts.dropped += 1
            return
        event = LiveEvent(kind, sid, data, self.instance, next(self._numbers), self._clock())
        self._queue.append(event)
        self.counts.published += 1
        self._wake.set()

    @property
    def watched(self) -> bool:
        """Could anyone see an event now? Another instance may (a transport), or a browser on
        this one. A publisher may skip costly detail (the words so far) when not."""
        return self.transport is not None or bool(self._subscribers)

    # --- subscribing ----------------------------------------------------------------------------

    def subscribe(self, last_id: str | None = None) -> Subscription:
        """A new stream; with `last_id` (a reconnect), the events heard since it, or RESET."""
        sub = Subscription(self, self._subscriber_queue)
        if last_id:
            missed = self._since(last_id)
            if missed is None:
                sub.put(LiveEvent(RESET, "", {"why": "unknown last event"}))
            for event in missed or ():
                sub.put(event)
        self._subscribers.add(sub)
        return sub

    def _since(self, last_id: str) -> list[LiveEvent] | None:
        recent = list(self._recent)
        for i in range(len(recent) - 1, -1, -1):
            if recent[i][0] == last_id:
                return [LiveEvent.decode(raw) for _, raw in recent[i + 1 :]]
        return None

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def on_remote(self, kind: str, callback: Callable[[LiveEvent], None]) -> None:
        """Call `callback` with every event of `kind` another instance publishes (the app's
        own bookkeeping, e.g. a call this instance answered went live on another)."""
        self._remote.setdefault(kind, []).append(callback)

    # --- running ----------------------------------------------------------------------------

    async def start(self) -> None:
        if self.transport is not None:
            await self.transport.start(self._heard)
        self._task = asyncio.create_task(self._run(), name="live-bus")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.transport is not None:
            await self.transport.stop()
        for sub in list(self._subscribers):
            sub.close()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                batch = [self._queue.popleft() for _ in range(min(MAX_BATCH, len(self._queue)))]
                for event in batch:
                    self._deliver(event)  # this instance's browsers first: no round trip
                if self.transport is not None:
                    await self._send(batch)

    async def _send(self, batch: list[LiveEvent]) -> None:
        assert self.transport is not None
        try:
            await self.transport.send([_fit(e) for e in batch])
        except Exception as exc:  # the database is away: live views refetch when it is back
            self.counts.send_failed += len(batch)
            log.warning("live events not sent (%d): %s", len(batch), exc)

    def _heard(self, raw: bytes | str) -> None:
        """A payload from the transport: another instance's event (our own are delivered)."""
        try:
            event = LiveEvent.decode(raw)
        except (ValueError, KeyError, TypeError):
            log.warning("live event not understood: %r", raw[:80])
            return
        if event.origin == self.instance:
            return
        self.counts.heard += 1
        for callback in self._remote.get(event.kind, ()):
            try:
                callback(event)
            except Exception:  # one listener's bug must not cost the browsers the event
                log.exception("live event listener failed on %s", event.kind)
        self._deliver(event)

    def _deliver(self, event: LiveEvent) -> None:
        self._recent.append((event.id, event.encode()))
        for sub in list(self._subscribers):
            sub.put(event)

    def reset_all(self, why: str) -> None:
        """Events may have been missed (the listening connection was lost): every browser
        refetches."""
        for sub in list(self._subscribers):
            sub.put(LiveEvent(RESET, "", {"why": why}))


def _fit(event: LiveEvent) -> bytes:
    """The event's payload, its text fields cut so it fits one NOTIFY."""
    raw = event.encode()
    if len(raw) <= MAX_PAYLOAD:
        return raw
    data = {k: (v[:200] + "…" if isinstance(v, str) and len(v) > 200 else v) for k, v in
            event.data.items()}  # fmt: skip
    data["cut"] = True
    raw = LiveEvent(event.kind, event.sid, data, event.origin, event.n, event.at).encode()
    if len(raw) <= MAX_PAYLOAD:
        return raw
    bare = {"cut": True}
    return LiveEvent(event.kind, event.sid, bare, event.origin, event.n, event.at).encode()
