"""LLM fallback: several backends for one responder; the next answers a turn the last failed.

Per turn the backends are asked in order, each at most once, with the same history. A backend
is abandoned, its stream closed, when it fails before its first text reaches the caller: an
HTTP error, a failed connection, a broken stream or no first token within its
`first_token_timeout_s` (all `ResponderError`s, see llm.py). Once a text delta has been handed
on, the reply is that backend's: Aura may already be saying it, and words spoken cannot be
taken back, so a later error ends the reply as it always did (the caller hears the apology).
Only when every backend has failed does the error reach the caller as the apology.

How it combines with the LLM's own retry (telephony/retry.py): a backend with another behind
it is built without its fast 429/5xx retry, since the next backend is the retry and need not
wait out a `Retry-After`; the last backend keeps it. So a turn makes at most one request per
backend plus one, and the longest silence before the apology is the sum of the backends'
first-token budgets.

Every turn starts with the first backend again: no "primary is down" memory. An error costs
the turn milliseconds; a silent primary costs its `first_token_timeout_s` (a profile with
fallbacks sets that short, and its filler covers the wait). Remembering a failure would pin a
call to the fallback after one slow first token (which is common and passes) and hide the
primary's recovery; every switch is an event and a metric, so a primary that is really down
shows at once.

`on_switch` is told of each switch as it happens (Flux mode records it on the transcript).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from telephony.responder.base import Message, Reply, Responder, ResponderError

# The metric's label: why a backend was abandoned (a fixed set, so the label stays small).
SwitchReason = Literal[
    "timeout", "rate-limited", "server-error", "client-error", "connection", "stream"
]
SWITCH_REASONS: tuple[SwitchReason, ...] = (
    "timeout",
    "rate-limited",
    "server-error",
    "client-error",
    "connection",
    "stream",
)
ERROR_CHARS = 200  # of the error in the event; HTTP bodies are not kept (they may echo a key)


@dataclass(frozen=True, slots=True)
class Backend:
    name: str  # model@host: what events and logs show, never the key
    responder: Responder


@dataclass(frozen=True, slots=True)
class Switch:
    """One backend abandoned for the next within a turn."""

    from_index: int
    from_name: str
    to_index: int
    to_name: str
    reason: SwitchReason
    status: int | None  # HTTP status, for rate-limited / server-error / client-error
    error: str  # what failed, without an HTTP body
    after_ms: int  # from asking the failed backend to abandoning it

    def as_event(self) -> dict[str, object]:
        data: dict[str, object] = {
            "from": self.from_name,
            "to": self.to_name,
            "from_backend": self.from_index,
            "to_backend": self.to_index,
            "reason": self.reason,
            "after_ms": self.after_ms,
        }
        if self.status is not None:
            data["status"] = self.status
        else:
            data["error"] = self.error
        return data


def switch_reason(exc: ResponderError) -> SwitchReason:
    if exc.kind == "http" and exc.status is not None:
        if exc.status == 429:
            return "rate-limited"
        return "server-error" if exc.status >= 500 else "client-error"
    if exc.kind in ("timeout", "connection"):
        return exc.kind
    return "stream"


def _error_text(exc: ResponderError) -> str:
    if exc.kind == "http":
        return f"HTTP {exc.status}"
    return str(exc)[:ERROR_CHARS]


class FallbackResponder:
    """Backends in order; per turn, the first that starts its reply gives the whole reply."""

    def __init__(
        self,
        backends: Sequence[Backend],
        on_switch: Callable[[Switch], None] | None = None,
    ) -> None:
        if len(backends) < 2:
            raise ValueError("a fallback responder needs at least two backends")
        self._backends = list(backends)
        self._on_switch = on_switch

    def __repr__(self) -> str:
        return f"FallbackResponder({', '.join(b.name for b in self._backends)})"

    def respond(self, history: Sequence[Message], user_text: str) -> Reply:
        return Reply(lambda reply: self._stream(reply, history, user_text))

    async def aclose(self) -> None:
        for backend in self._backends:
            await backend.responder.aclose()

    async def _stream(
        self, reply: Reply, history: Sequence[Message], user_text: str
    ) -> AsyncGenerator[str, None]:
        loop = asyncio.get_running_loop()
        last = len(self._backends) - 1
        for index, backend in enumerate(self._backends):
            asked = loop.time()
            started = False
            try:
                # Closed on every way out: a switch, the end, a barge-in's cancellation.
                stream = backend.responder.respond(history, user_text)
                async with contextlib.aclosing(stream) as inner:
                    async for delta in inner:
                        started = True
                        yield delta
                    reply.action = inner.action
                return
            except ResponderError as exc:
                if started or index == last:
                    raise
                switch = Switch(
                    from_index=index,
                    from_name=backend.name,
                    to_index=index + 1,
                    to_name=self._backends[index + 1].name,
                    reason=switch_reason(exc),
                    status=exc.status if exc.kind == "http" else None,
                    error=_error_text(exc),
                    after_ms=round((loop.time() - asked) * 1000),
                )
                if self._on_switch is not None:
                    self._on_switch(switch)
