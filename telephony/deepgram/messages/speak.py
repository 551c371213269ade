"""Aura `/v1/speak` messages: Speak/Flush/Clear/Close from us; Metadata, Flushed, Cleared and
Warning from the server (errors arrive as a close frame)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from telephony.deepgram.messages.wire import (
    DeepgramMessageError,
    Unknown,
    _const,
    _message,
    _parser,
    _Wire,
    encode,
)

# --- Aura /v1/speak ------------------------------------------------------------------------

# The languages Aura-2 voices speak; a voice's name ends with its language (aura-2-celeste-es).
AURA_LANGUAGES = ("en", "es", "de", "fr", "nl", "it", "ja")


def voice_language(voice: str) -> str:
    """`aura-2-celeste-es` -> `es`."""
    return voice.rsplit("-", 1)[-1].lower()


@_message
@dataclass(slots=True)
class Metadata(_Wire):
    """Speak: sent once when the socket opens."""

    TYPE: ClassVar[str] = "Metadata"
    request_id: str = ""
    model_name: str = ""
    model_version: str = ""
    model_uuid: str = ""


@_message
@dataclass(slots=True)
class Flushed(_Wire):
    TYPE: ClassVar[str] = "Flushed"
    sequence_id: int = 0


@_message
@dataclass(slots=True)
class Cleared(_Wire):
    TYPE: ClassVar[str] = "Cleared"
    sequence_id: int = 0


@_message
@dataclass(slots=True)
class SpeakWarning(_Wire):
    TYPE: ClassVar[str] = "Warning"
    description: str = ""
    code: str = ""


@_message
@dataclass(slots=True)
class SpeakError(_Wire):
    """Not sent by Aura, whose errors are close frames (Deepgram's SDK defines no Speak Error);
    parsed only so that one, should it ever come, still ends the socket."""

    TYPE: ClassVar[str] = "Error"
    description: str = ""
    code: str = ""


@_message
@dataclass(slots=True)
class Speak(_Wire):
    TYPE: ClassVar[str] = "Speak"
    text: str


@_message
@dataclass(slots=True)
class Flush(_Wire):
    TYPE: ClassVar[str] = "Flush"


@_message
@dataclass(slots=True)
class Clear(_Wire):
    TYPE: ClassVar[str] = "Clear"


@_message
@dataclass(slots=True)
class Close(_Wire):
    TYPE: ClassVar[str] = "Close"


SpeakServerEvent = Metadata | Flushed | Cleared | SpeakWarning | SpeakError

parse_speak_server: Callable[[str | bytes], SpeakServerEvent | Unknown] = _parser(
    Metadata, Flushed, Cleared, SpeakWarning, SpeakError
)
parse_speak_client: Callable[[str | bytes], Speak | Flush | Clear | Close | Unknown] = _parser(
    Speak, Flush, Clear, Close
)


def speak(text: str) -> str:
    """Aura `Speak`. Empty text is a 400 on the real service, so it never leaves here."""
    if not text or not text.strip():
        raise DeepgramMessageError("Speak: empty text")
    return encode(Speak(text))


_FLUSH, _CLEAR, _CLOSE = _const(Flush()), _const(Clear()), _const(Close())


def flush() -> str:
    """Aura `Flush` (max 20 per 60 s: flush per reply or sentence, never per token)."""
    return _FLUSH


def clear() -> str:
    return _CLEAR


def close() -> str:
    return _CLOSE
