"""What every responder is: the `Responder` protocol, its `Message`s, `Reply` and error."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Literal, Protocol

from telephony.config import Action

Role = Literal["system", "user", "assistant"]


# What went wrong, as fallback events and metrics name it (telephony/responder/fallback.py).
ErrorKind = Literal["timeout", "http", "connection", "stream", "key"]


class ResponderError(Exception):
    """The reply could not be produced (HTTP error, timeout, broken stream, missing key)."""

    def __init__(
        self, message: str, *, status: int | None = None, kind: ErrorKind | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.kind: ErrorKind = kind or ("http" if status is not None else "stream")


@dataclass(frozen=True, slots=True)
class Message:
    role: Role
    content: str


class Reply:
    """Text deltas of one reply; `action` is final once iteration has ended."""

    def __init__(self, deltas: Callable[[Reply], AsyncGenerator[str, None]]) -> None:
        self.action: Action = "none"
        self._deltas = deltas(self)  # the generator sets `action` on this object as it streams

    def __aiter__(self) -> Reply:
        return self

    async def __anext__(self) -> str:
        return await self._deltas.__anext__()

    async def aclose(self) -> None:
        await self._deltas.aclose()

    async def __aenter__(self) -> Reply:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def text(self) -> str:
        """The whole reply (for callers that do not stream)."""
        async with self:
            return "".join([delta async for delta in self])


class Responder(Protocol):
    def respond(self, history: Sequence[Message], user_text: str) -> Reply: ...

    async def aclose(self) -> None: ...
