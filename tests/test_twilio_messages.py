"""Twilio Media Streams messages: the examples from docs/protocol.md, strictness.

Fuzzing the parser is tests/test_fuzz.py's (mutated valid messages, random JSON, bytes and text;
it also checks the type and fields of what parses).
"""

from __future__ import annotations

import base64

import orjson
import pytest

from telephony.twilio import messages as tm

START = (
    '{"event":"start","sequenceNumber":"1","streamSid":"MZ1","start":{"accountSid":"AC1",'
    '"streamSid":"MZ1","callSid":"CA1","tracks":["inbound"],"customParameters":'
    '{"call_token":"t"},"mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000,'
    '"channels":1}}}'
)


def media(**overrides: object) -> str:
    msg = {
        "event": "media",
        "sequenceNumber": "2",
        "streamSid": "MZ1",
        "media": {
            "track": "inbound",
            "chunk": "1",
            "timestamp": "0",
            "payload": base64.b64encode(b"\xff" * 160).decode(),
        },
    }
    msg["media"].update(overrides)  # type: ignore[union-attr]
    return orjson.dumps(msg).decode()


def test_parses_every_inbound_example() -> None:
    b = tm.InboundBuilder("MZ1", "CA1", "AC1", custom_parameters={"k": "v"})
    assert tm.parse_inbound(b.connected()) == tm.Connected("Call", "1.0.0")
    start = tm.parse_inbound(b.start())
    assert isinstance(start, tm.Start)
    assert (start.sequence, start.call_sid, start.custom_parameters) == (1, "CA1", {"k": "v"})
    assert start.media_format == tm.MediaFormat("audio/x-mulaw", 8000, 1)
    m = tm.parse_inbound(b.media(b"\x01" * 160, 40))
    assert m == tm.Media(2, "MZ1", "inbound", 1, 40, b"\x01" * 160)
    assert tm.parse_inbound(b.dtmf("5")) == tm.Dtmf(3, "MZ1", "inbound_track", "5")
    assert tm.parse_inbound(b.mark("t3:seg2")) == tm.Mark(4, "MZ1", "t3:seg2")
    assert tm.parse_inbound(b.stop()) == tm.Stop(5, "MZ1", "AC1", "CA1")


def test_protocol_md_start_example() -> None:
    start = tm.parse_inbound(START)
    assert isinstance(start, tm.Start)
    assert start.tracks == ("inbound",)


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        ("not json", "not JSON"),
        ("[]", "expected an object"),
        ('{"event":"bogus"}', "unknown event"),
        ('{"foo":1}', "unknown event None"),
        (media(timestamp=0), "media.timestamp: expected a string"),
        (media(timestamp="-20"), "expected a decimal string"),
        (media(chunk="1e3"), "expected a decimal string"),
        (media(payload="@@@"), "not base64"),
        ('{"event":"media","sequenceNumber":"2","streamSid":"MZ1"}', "media: expected an object"),
        (
            '{"event":"dtmf","sequenceNumber":"3","streamSid":"MZ1","dtmf":{"track":"x","digit":"55"}}',
            "not a DTMF digit",
        ),
        (
            START.replace('"sampleRate":8000', '"sampleRate":"8000"'),
            "sampleRate: expected a number",
        ),
    ],
)
def test_rejects_malformed_with_reason(frame: str, reason: str) -> None:
    with pytest.raises(tm.MessageError, match=reason):
        tm.parse_inbound(frame)


def test_outbound_builders_round_trip_through_twilio_rules() -> None:
    audio = bytes(range(160))
    assert tm.parse_outbound(tm.media_message("MZ1", audio), "MZ1") == tm.OutboundMedia(audio)
    name = 'he said "hi" & <left>'
    assert tm.parse_outbound(tm.mark_message("MZ1", name), "MZ1") == tm.OutboundMark(name)
    assert tm.parse_outbound(tm.clear_message("MZ1"), "MZ1") == tm.OutboundClear()


def test_outbound_media_is_exactly_twilios_shape() -> None:
    msg = orjson.loads(tm.media_message("MZ9", b"\xff" * 160))
    assert msg == {
        "event": "media",
        "streamSid": "MZ9",
        "media": {"payload": base64.b64encode(b"\xff" * 160).decode()},
    }
    assert len(msg["media"]["payload"]) == 216  # 20 ms = 216 base64 chars


@pytest.mark.parametrize(
    "frame",
    [
        tm.clear_message("MZ2"),  # wrong streamSid
        '{"event":"clear","streamSid":"MZ1","extra":1}',
        '{"event":"media","streamSid":"MZ1","media":{"payload":"AA==","track":"x"}}',
        '{"event":"play","streamSid":"MZ1"}',
        "nope",
    ],
)
def test_outbound_strictness_matches_warning_31951(frame: str) -> None:
    with pytest.raises(tm.MessageError, match="31951"):
        tm.parse_outbound(frame, "MZ1")
