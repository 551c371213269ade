"""The Twilio media socket as a call sees it, and how a call stops reading it.

Routes adapt their WebSocket (Starlette's, or uvicorn's sans-I/O protocol) to `TwilioSocket`, so
the handshake and the call never see a web framework. A frame handler returns a `StreamEnd` to
stop the pump: the end reason, how to close the socket, and the outcome the ending implies.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from telephony.outcome import Outcome

# WebSocket close codes: 1000 normal, 1008 policy violation (bad token, bad input), 1011 error.
CLOSE_NORMAL = 1000
CLOSE_POLICY = 1008
CLOSE_ERROR = 1011


@dataclass(frozen=True, slots=True)
class StreamEnd:
    """Why a call stops reading its media stream: the end reason, and how to close it."""

    reason: str
    code: int = CLOSE_POLICY
    close_reason: str = ""  # sent to Twilio with the close; the end reason if empty
    outcome: Outcome = Outcome.ERROR  # unless we had acted first (see Call.run)


FrameHandler = Callable[[str | bytes], StreamEnd | None]


class TwilioSocket(Protocol):
    """The media WebSocket as the session needs it; routes adapt Starlette's to this."""

    async def receive(self) -> str | bytes | None:
        """The next frame (text or binary), or None once the peer has gone."""
        ...

    async def pump(self, handler: FrameHandler) -> StreamEnd | None:
        """Hand every frame to `handler` (synchronously, in order) until it returns a StreamEnd,
        which is returned, or the peer goes (None). `read_frames` is the plain way to do it."""
        ...

    async def send_text(self, text: str) -> None: ...

    async def send_many(self, texts: list[str]) -> None:
        """Several messages in order, in one write where the socket can."""
        ...

    async def close(self, code: int, reason: str) -> None: ...


async def read_frames(
    receive: Callable[[], Awaitable[str | bytes | None]], handler: FrameHandler
) -> StreamEnd | None:
    """`TwilioSocket.pump` for a socket that can only be read frame by frame."""
    while (frame := await receive()) is not None:
        if (end := handler(frame)) is not None:
            return end
    return None
