"""One supervisor for every Deepgram socket of a call: Flux, Aura, the Voice Agent, Nova per side.

Every link lives the same way, whatever its endpoint:
- The first connect is a reconnect whose reason is `start`: a handshake refused at call start
  (HTTP 429, Deepgram's concurrency limit) is retried with backoff like any later one.
- A socket that ends unasked (`DeepgramClosed`) is aborted and replaced; each loss spends from
  the link's `FailureBudget`, each attempt waits as its `Backoff` says.
- Caller audio goes through the link's `Upstream`: held (bounded, drops counted) while no
  socket is live, then the replay — what the lost socket had not settled — and what was held
  go first on the new one.
- Each connection is one transcript event, `<endpoint>-connection` (reason, attempts, audio
  replayed and dropped, how long the link was down), and the metrics count reconnects from
  that event alone (telephony/metrics.py). A socket we replace on purpose (`swap`: Aura in
  another voice) is `planned`, never counted as a reconnect.
- Giving up is one path, the engine's `give_up(endpoint, reason)`: for the bot modes the
  apology and hand-over (telephony/session/fallback.py), never a bare close of the call; for
  a transcribed side a `transcription-failed` record (people are talking: the call goes on).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Generic, TypeVar

from telephony.audio import MULAW_BYTES_PER_MS
from telephony.deepgram.socket import DeepgramClosed, DeepgramSocket
from telephony.retry import Backoff, FailureBudget
from telephony.session.engine import CallContext
from telephony.session.upstream import Frame, Upstream

S = TypeVar("S", bound=DeepgramSocket)

START = "start"  # the reason of a link's first connection

# The engine's one way out when a link cannot be kept: (endpoint, reason).
GiveUp = Callable[[str, str], Awaitable[None]]


class Link(Generic[S]):
    """One endpoint's socket for one call (or one side of it), kept alive or given up."""

    def __init__(
        self,
        ctx: CallContext,
        endpoint: str,
        new_client: Callable[[], S],
        *,
        give_up: GiveUp,
        upstream: Upstream | None = None,
        replay: Callable[[], list[Frame]] | None = None,
        on_lost: Callable[[str], None] | None = None,
        on_live: Callable[[S, str], Mapping[str, Any]] | None = None,
        backoff: Backoff | None = None,
        budget: FailureBudget | None = None,
        tags: Mapping[str, Any] | None = None,
    ) -> None:
        self.ctx = ctx
        self.endpoint = endpoint
        self.upstream = upstream
        self._new_client = new_client
        self._give_up = give_up
        self._replay = replay
        self._on_lost = on_lost
        self._on_live = on_live
        self._backoff = backoff or Backoff()
        self._budget = budget or FailureBudget()
        self._tags = dict(tags or {})
        self._name = " ".join([endpoint, *(str(v) for v in self._tags.values())])
        self._client: S | None = None
        self._keepalives_before = 0  # sent on sockets this link has dropped
        self._dropped = False  # the current socket was dropped (counted in _keepalives_before)
        self.connections = 0
        self.closing = False  # the call is ending: a socket that ends now is not replaced
        self.failed: str | None = None  # why the link was given up

    @property
    def client(self) -> S:
        """The current socket (the last one, while a replacement is being connected)."""
        if self._client is None:
            raise RuntimeError(f"{self._name} link has no socket yet")
        return self._client

    @property
    def connected(self) -> bool:
        return self._client is not None

    @property
    def keepalives_sent(self) -> int:
        """JSON KeepAlives sent on every socket of this link."""
        client = self._client
        current = client.keepalives_sent if client is not None and not self._dropped else 0
        return self._keepalives_before + current

    # --- the socket's life ----------------------------------------------------------------------

    async def close(self) -> None:
        """The call is ending: no socket is replaced from here, the live one is closed, and
        the engine's callbacks are let go (each is an engine method: engine -> link ->
        engine would be a cycle keeping the ended call for a full garbage collection)."""
        self.release()
        if self.connected:
            with contextlib.suppress(Exception):
                await self.client.close()

    def release(self) -> None:
        """No socket is replaced from here and the engine's callbacks are let go; the live
        socket, if any, is the caller's to finish (transcription's Finalize)."""
        self.closing = True
        self._give_up = _gone
        self._new_client = _no_client
        self._replay = self._on_lost = self._on_live = None

    async def start(self) -> bool:
        """The first socket, retried like a reconnect; False if the link was given up."""
        return await self._connect(START, [], lost_at=None)

    async def run(self, on_event: Callable[[Any], Awaitable[None] | None]) -> None:
        """The live socket's events to `on_event` until we close it; a socket that fails is
        replaced and its successor's events follow. Returns once closed or given up."""
        while self._client is not None and self.failed is None:
            client = self._client
            try:
                async for event in client.events():
                    handled = on_event(event)
                    if handled is not None:
                        await handled
                    # Not kept alive while the next event is awaited (deepgram/socket.py).
                    del event, handled
                if self._client is client:
                    return  # we closed it: the call is over
            except DeepgramClosed as exc:
                if self._client is not client:
                    continue  # swapped for another (see `swap`): its end was ours
                if self.closing or not await self.replace(str(exc)):
                    return

    async def swap(self, reason: str) -> bool:
        """A planned new socket (another Aura voice, say): connected before the old one is
        closed, so the events loop goes on with it; not a failure, so nothing is spent from the
        budget. False if no new socket could be had (the link was given up)."""
        old = self._client
        if not await self._connect(reason, [], lost_at=None, planned=True):
            return False
        if old is not None and old is not self._client:
            self._keepalives_before += old.keepalives_sent
            await old.close()
        return True

    async def replace(self, reason: str) -> bool:
        """The socket failed: drop it and connect another (the failure budget allowing).
        False if the link was given up instead."""
        loop = asyncio.get_running_loop()
        lost_at = loop.time()
        if self.upstream is not None:
            self.upstream.live = False
        self.ctx.log.warning("%s connection lost: %s", self._name, reason)
        if self._client is not None and not self._dropped:
            self._keepalives_before += self._client.keepalives_sent
            self._dropped = True
            await self._client.abort()
        if self._on_lost is not None:
            self._on_lost(reason)
        if not self._budget.spend(loop.time()):
            budget = self._budget
            await self._fail(
                f"{self.endpoint} failed {budget.limit + 1} times in {budget.window_s:g} s"
                f" (last: {reason})"
            )
            return False
        replay = self._replay() if self._replay is not None else []
        return await self._connect(reason, replay, lost_at=lost_at)

    async def _connect(
        self, reason: str, replay: list[Frame], *, lost_at: float | None, planned: bool = False
    ) -> bool:
        error = ""
        for attempt, delay in enumerate(self._backoff.delays()):
            await asyncio.sleep(delay)
            if self.closing:
                return False
            client = self._new_client()
            try:
                await client.connect()
            except Exception as exc:  # refused handshake (429, 401), network, no Welcome
                error = str(exc) or type(exc).__name__
                self.ctx.log.warning("%s connect failed (%s): %s", self._name, reason, error)
                continue
            self._client, self._dropped = client, False
            self._go_live(client, reason, replay, attempt + 1, lost_at, planned)
            return True
        when = "at call start" if reason == START else f"after {reason}"
        attempts = self._backoff.attempts
        await self._fail(f"{self.endpoint} unreachable {when}: {attempts} attempts, last: {error}")
        return False

    def _go_live(
        self,
        client: S,
        reason: str,
        replay: list[Frame],
        attempts: int,
        lost_at: float | None,
        planned: bool,
    ) -> None:
        data: dict[str, Any] = {"connection": self.connections, "reason": reason}
        if planned:
            data["planned"] = True  # not a reconnect (telephony/transcript.py is_reconnect)
        data.update(self._tags)
        if attempts > 1:
            data["attempts"] = attempts
        upstream = self.upstream
        if upstream is not None:
            # Replay, then what was held, then direct sending; False: the new socket already
            # closed, and its events loop replaces it.
            upstream.go_live(client.send_audio, replay)
            data["replayed_ms"] = sum(len(audio) for _, audio in replay) // MULAW_BYTES_PER_MS
            data["dropped_ms"] = upstream.dropped_ms
        if self._on_live is not None:
            data.update(self._on_live(client, reason))
        if lost_at is not None:  # socket lost -> new socket live with the replay sent
            data["reconnect_ms"] = round((asyncio.get_running_loop().time() - lost_at) * 1000, 1)
        self.ctx.transcript.event(self.ctx.now_ms(), f"{self.endpoint}-connection", **data)
        self.connections += 1

    async def _fail(self, reason: str) -> None:
        self.failed = reason
        if self.upstream is not None:
            self.upstream.stop()  # no socket will take the audio any more
        self.ctx.log.error("%s given up: %s", self._name, reason)
        await self._give_up(self.endpoint, reason)


async def _gone(endpoint: str, reason: str) -> None:
    """A closed link's give-up: the call is ending already."""


def _no_client() -> Any:
    raise RuntimeError("the link is closed: the call is ending")
