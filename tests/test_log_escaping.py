"""Log injection: values from outside (an unsigned CallSid, From, close reasons) cannot forge a
line in the text format, and no field runs on without bound in either format."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import orjson
import pytest

from telephony.logs import (
    MAX_FIELD_CHARS,
    MAX_MESSAGE_CHARS,
    TRUNCATED,
    JsonFormatter,
    TextFormatter,
    call_logger,
    safe_text,
)

FORGED = "CA1\n2026-01-01 00:00:00,000 INFO telephony.call: call ended cleanly"


@pytest.fixture
def captured() -> Iterator[tuple[io.StringIO, logging.Handler]]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    logger = logging.getLogger("telephony.test_escaping")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        yield out, handler
    finally:
        logger.removeHandler(handler)


def test_text_format_escapes_control_characters_in_fields_and_message(
    captured: tuple[io.StringIO, logging.Handler],
) -> None:
    out, handler = captured
    handler.setFormatter(TextFormatter("%(levelname)s %(name)s: %(message)s"))
    log = call_logger(FORGED, "telephony.test_escaping")
    log.warning("refused: %s", "bad\r\nERROR forged", extra={"from_": "+1555\x1b[2J\u2028x\x00"})
    text = out.getvalue()
    assert text.count("\n") == 1, text  # one record, one line
    assert "call_sid=CA1\\n2026-01-01" in text
    assert "refused: bad\\r\\nERROR forged" in text
    assert "from_=+1555\\x1b[2J\\u2028x\\x00" in text


def test_text_format_caps_field_and_message_length(
    captured: tuple[io.StringIO, logging.Handler],
) -> None:
    out, handler = captured
    handler.setFormatter(TextFormatter("%(message)s"))
    log = logging.getLogger("telephony.test_escaping")
    log.warning("m" * (MAX_MESSAGE_CHARS + 50), extra={"reason": "r" * (MAX_FIELD_CHARS * 10)})
    line = out.getvalue().rstrip("\n")
    message, reason = line.split(" reason=")
    assert message == "m" * MAX_MESSAGE_CHARS + TRUNCATED
    assert reason == "r" * MAX_FIELD_CHARS + TRUNCATED


def test_text_format_keeps_a_traceback_readable(
    captured: tuple[io.StringIO, logging.Handler],
) -> None:
    out, handler = captured
    handler.setFormatter(TextFormatter("%(message)s"))
    log = logging.getLogger("telephony.test_escaping")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed", extra={"call_sid": "CA2"})
    lines = out.getvalue().splitlines()
    assert lines[0] == "failed call_sid=CA2"
    assert lines[1].startswith("Traceback") and lines[-1] == "ValueError: boom"


def test_json_format_caps_fields(captured: tuple[io.StringIO, logging.Handler]) -> None:
    out, handler = captured
    handler.setFormatter(JsonFormatter())
    log = call_logger(FORGED + "x" * 1000, "telephony.test_escaping")
    log.info("n" * (MAX_MESSAGE_CHARS * 2), extra={"count": 3})
    [line] = out.getvalue().splitlines()
    entry = orjson.loads(line)
    assert entry["call_sid"] == (FORGED + "x" * 1000)[:MAX_FIELD_CHARS] + TRUNCATED
    assert len(entry["msg"]) == MAX_MESSAGE_CHARS + len(TRUNCATED)
    assert entry["count"] == 3


def test_safe_text_leaves_ordinary_values_alone() -> None:
    for value in ("CA0123456789abcdef", "+15550001000", "café – ok", "a b"):
        assert safe_text(value) == value
    assert safe_text(42) == "42"
