"""A media socket for tests that drive a call without a server: frames from a list."""

from __future__ import annotations

from telephony.session.media_socket import FrameHandler, StreamEnd, read_frames


class ListSocket:
    """The media socket as a list of frames the test wrote; records what the call sent."""

    def __init__(self, frames: list[str]) -> None:
        self.frames = list(frames)
        self.sent: list[str] = []
        self.closed: tuple[int, str] | None = None

    async def receive(self) -> str | bytes | None:
        return self.frames.pop(0) if self.frames else None

    async def pump(self, handler: FrameHandler) -> StreamEnd | None:
        return await read_frames(self.receive, handler)

    async def send_text(self, text: str) -> None:
        self.sent.append(text)

    async def send_many(self, texts: list[str]) -> None:
        self.sent.extend(texts)

    async def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)
