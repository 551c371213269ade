"""Logging: one JSON object per line in production, readable text in development.

Call logs go through `call_logger(sid)` so every line carries the call SID. Lines logged
elsewhere while a call runs (the Deepgram clients, the responder, libraries) get it too:
`bind_call_sid` puts the SID in a context variable that every task the call starts inherits,
and the handler's `CallSidFilter` copies it onto records that lack one (read only when a line
is logged: nothing on the audio path).

Values logged can come from outside (a CallSid, From and To, close reasons are whatever the
peer sent, and Twilio does not sign the media stream's `start` message), so the text format
escapes control characters (a "\n" cannot forge a second line) and both formats cap each field's
length. Cheap: a printable, short value is a check of `str.isprintable` and `len`.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import MutableMapping
from contextvars import ContextVar
from typing import Any

import orjson

_CALL_SID: ContextVar[str | None] = ContextVar("telephony_call_sid", default=None)

# Longest field (an extra's value) and message written; beyond it: cut, with a marker.
MAX_FIELD_CHARS = 256
MAX_MESSAGE_CHARS = 4096
TRUNCATED = "...[truncated]"
# Control characters (C0, DEL, C1, and the Unicode line and paragraph separators) -> escapes.
_ESCAPES = {c: repr(chr(c))[1:-1] for c in (*range(0x20), *range(0x7F, 0xA0))} | {
    0x2028: "\\u2028",
    0x2029: "\\u2029",
}


def _cap(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + TRUNCATED


def safe_text(value: object, limit: int = MAX_FIELD_CHARS) -> str:
    """`value` as one line for the text format: control characters escaped, length capped."""
    text = value if isinstance(value, str) else str(value)
    if not text.isprintable():  # rare: only then pay for the translation
        text = text.translate(_ESCAPES)
    return _cap(text, limit)


# Record attributes that are not user extras (uvicorn adds color_message for its own console).
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "color_message"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": _cap(record.getMessage(), MAX_MESSAGE_CHARS),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD:  # JSON escapes control characters itself
                entry[key] = _cap(value, MAX_FIELD_CHARS) if isinstance(value, str) else value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class TextFormatter(logging.Formatter):
    """`asctime level logger: message key=value ...`, one line per record (a traceback, if
    any, follows on its own lines, as Python prints it)."""

    def format(self, record: logging.LogRecord) -> str:
        record.message = safe_text(record.getMessage(), MAX_MESSAGE_CHARS)
        if self.usesTime():
            record.asctime = self.formatTime(record, self.datefmt)
        line = self.formatMessage(record)
        extras = [f"{k}={safe_text(v)}" for k, v in record.__dict__.items() if k not in _STANDARD]
        if extras:
            line += " " + " ".join(extras)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line += "\n" + record.exc_text
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


def bind_call_sid(call_sid: str) -> None:
    """Log lines of the current task, and of tasks it starts from now on, carry `call_sid`."""
    _CALL_SID.set(call_sid)


class CallSidFilter(logging.Filter):
    """Adds the bound call SID (see `bind_call_sid`) to records that have none."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "call_sid" not in record.__dict__:
            call_sid = _CALL_SID.get()
            if call_sid is not None:
                record.call_sid = call_sid
        return True


class NoQueryStrings(logging.Filter):
    """Cuts the query string off request paths in uvicorn's access log lines: the staff UI's
    search terms (/calls?q=...) are personal data, and no other route needs one logged."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(
            isinstance(arg, str) and "?" in arg for arg in record.args
        ):
            record.args = tuple(
                arg.split("?", 1)[0] if isinstance(arg, str) and arg.startswith("/") else arg
                for arg in record.args
            )
        return True


ACCESS_LOGGER = "uvicorn.access"


def hide_query_strings() -> None:
    """Install `NoQueryStrings` on uvicorn's access logger (once; idempotent)."""
    access = logging.getLogger(ACCESS_LOGGER)
    if not any(isinstance(f, NoQueryStrings) for f in access.filters):
        access.addFilter(NoQueryStrings())


def setup_logging(fmt: str = "text", level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(CallSidFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    hide_query_strings()


class CallLogger(logging.LoggerAdapter):
    """Adds `call_sid` to every record logged for one call."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, Any]:
        kwargs["extra"] = {**(self.extra or {}), **kwargs.get("extra", {})}
        return msg, kwargs


def call_logger(call_sid: str, name: str = "telephony.call") -> CallLogger:
    return CallLogger(logging.getLogger(name), {"call_sid": call_sid})
