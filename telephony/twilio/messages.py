"""Twilio Media Streams messages: strict parsing and building, both directions.

The service parses what Twilio sends (connected, start, media, dtmf, mark, stop) and builds
what it sends back (media, mark, clear). The fake Twilio caller in telephony/sim does the
opposite, with the same definitions, so the two can never disagree about the wire format.

Media frames are the hot path (50 per second per call): they are parsed with orjson and plain
dict access, not a validation framework.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from dataclasses import dataclass, field

import orjson

from telephony.audio import FRAME_BYTES

MULAW_ENCODING = "audio/x-mulaw"
SAMPLE_RATE = 8000
# The most audio one media frame may carry. Twilio sends 20 ms frames (FRAME_BYTES = 160 bytes
# of μ-law); 4 frames' worth leaves room for a sender that batches a few, and no single frame
# can carry seconds of audio (or tens of KB for every buffer downstream to hold). A longer
# payload is a malformed frame: refused by its base64 length, before it is decoded, and counted
# toward the bad-frame limit. 856 characters decode to at most 642 bytes (base64 comes in
# 3-byte quanta).
MAX_MEDIA_PAYLOAD_B64 = 4 * -(-4 * FRAME_BYTES // 3)
MAX_MEDIA_PAYLOAD_BYTES = MAX_MEDIA_PAYLOAD_B64 // 4 * 3


class MessageError(ValueError):
    """A frame that is not a valid Media Streams message; the reason says why."""


@dataclass(slots=True, frozen=True)
class Connected:
    protocol: str
    version: str


@dataclass(slots=True, frozen=True)
class MediaFormat:
    encoding: str
    sample_rate: int
    channels: int


@dataclass(slots=True, frozen=True)
class Start:
    sequence: int
    stream_sid: str
    account_sid: str
    call_sid: str
    tracks: tuple[str, ...]
    custom_parameters: dict[str, str]
    media_format: MediaFormat


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs ~4x, per frame
class Media:
    sequence: int
    stream_sid: str
    track: str
    chunk: int
    timestamp: int  # ms since the stream started: the call's audio clock
    payload: bytes  # raw μ-law 8 kHz


@dataclass(slots=True, frozen=True)
class Dtmf:
    sequence: int
    stream_sid: str
    track: str
    digit: str


@dataclass(slots=True, frozen=True)
class Mark:
    sequence: int
    stream_sid: str
    name: str


@dataclass(slots=True, frozen=True)
class Stop:
    sequence: int
    stream_sid: str
    account_sid: str
    call_sid: str


InboundMessage = Connected | Start | Media | Dtmf | Mark | Stop


# --- parsing what Twilio sends -------------------------------------------------------------


def _obj(data: object, where: str) -> dict:
    if not isinstance(data, dict):
        raise MessageError(f"{where}: expected an object")
    return data


def _str(d: dict, key: str, where: str) -> str:
    value = d.get(key)
    if not isinstance(value, str):
        raise MessageError(f"{where}.{key}: expected a string, got {type(value).__name__}")
    return value


def _int_str(d: dict, key: str, where: str) -> int:
    """Twilio sends sequenceNumber, chunk and timestamp as decimal strings."""
    value = _str(d, key, where)
    if not _decimal(value):
        raise MessageError(f"{where}.{key}: expected a decimal string, got {value[:20]!r}")
    return int(value)


def _int(d: dict, key: str, where: str) -> int:
    value = d.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise MessageError(f"{where}.{key}: expected a number")
    return value


def _b64decode(text: str) -> bytes:
    """Strict base64 in C (base64.b64decode(validate=True) runs a regex over every payload)."""
    return binascii.a2b_base64(text, strict_mode=True)


def _decimal(value: object) -> bool:
    # At most 18 digits: fits 64 bits, and int() refuses strings past 4300 digits anyway.
    return type(value) is str and value.isascii() and value.isdigit() and len(value) <= 18


def _parse_media(msg: dict) -> Media:
    media = msg.get("media")
    if type(media) is dict:  # the hot path: every field checked in one pass, no error text
        b64, sid, track = media.get("payload"), msg.get("streamSid"), media.get("track")
        seq, chunk, ts = msg.get("sequenceNumber"), media.get("chunk"), media.get("timestamp")
        if (
            type(b64) is str
            and len(b64) <= MAX_MEDIA_PAYLOAD_B64
            and type(sid) is str
            and type(track) is str
            and _decimal(seq)
            and _decimal(chunk)
            and _decimal(ts)
        ):
            try:
                payload = _b64decode(b64)
            except ValueError as exc:  # binascii.Error, or a non-ASCII character in the string
                raise MessageError(f"media.payload: not base64 ({exc})") from None
            return Media(int(seq), sid, track, int(chunk), int(ts), payload)  # type: ignore[arg-type]
    return _parse_media_checked(msg)


def _parse_media_checked(msg: dict) -> Media:
    """The same checks one by one: a defective frame gets the reason it was refused."""
    media = _obj(msg.get("media"), "media")
    b64 = _str(media, "payload", "media")
    if len(b64) > MAX_MEDIA_PAYLOAD_B64:
        raise MessageError(
            f"media.payload: {len(b64)} base64 characters, over {MAX_MEDIA_PAYLOAD_BYTES} bytes"
        )
    try:
        payload = _b64decode(b64)
    except ValueError as exc:
        raise MessageError(f"media.payload: not base64 ({exc})") from None
    return Media(
        sequence=_int_str(msg, "sequenceNumber", "media"),
        stream_sid=_str(msg, "streamSid", "media"),
        track=_str(media, "track", "media"),
        chunk=_int_str(media, "chunk", "media"),
        timestamp=_int_str(media, "timestamp", "media"),
        payload=payload,
    )


def _parse_start(msg: dict) -> Start:
    start = _obj(msg.get("start"), "start")
    fmt = _obj(start.get("mediaFormat"), "start.mediaFormat")
    params = start.get("customParameters", {})
    params = _obj(params, "start.customParameters")
    if not all(isinstance(v, str) for v in params.values()):
        raise MessageError("start.customParameters: values must be strings")
    tracks = start.get("tracks", ["inbound"])
    if not isinstance(tracks, list) or not all(isinstance(t, str) for t in tracks):
        raise MessageError("start.tracks: expected a list of strings")
    return Start(
        sequence=_int_str(msg, "sequenceNumber", "start"),
        stream_sid=_str(msg, "streamSid", "start"),
        account_sid=_str(start, "accountSid", "start"),
        call_sid=_str(start, "callSid", "start"),
        tracks=tuple(tracks),
        custom_parameters=dict(params),
        media_format=MediaFormat(
            encoding=_str(fmt, "encoding", "start.mediaFormat"),
            sample_rate=_int(fmt, "sampleRate", "start.mediaFormat"),
            channels=_int(fmt, "channels", "start.mediaFormat"),
        ),
    )


def _parse_dtmf(msg: dict) -> Dtmf:
    dtmf = _obj(msg.get("dtmf"), "dtmf")
    digit = _str(dtmf, "digit", "dtmf")
    if len(digit) != 1 or digit not in "0123456789*#ABCD":
        raise MessageError(f"dtmf.digit: not a DTMF digit: {digit[:10]!r}")
    return Dtmf(
        sequence=_int_str(msg, "sequenceNumber", "dtmf"),
        stream_sid=_str(msg, "streamSid", "dtmf"),
        track=_str(dtmf, "track", "dtmf"),
        digit=digit,
    )


def _parse_mark(msg: dict) -> Mark:
    mark = _obj(msg.get("mark"), "mark")
    return Mark(
        sequence=_int_str(msg, "sequenceNumber", "mark"),
        stream_sid=_str(msg, "streamSid", "mark"),
        name=_str(mark, "name", "mark"),
    )


def _parse_stop(msg: dict) -> Stop:
    stop = _obj(msg.get("stop"), "stop")
    return Stop(
        sequence=_int_str(msg, "sequenceNumber", "stop"),
        stream_sid=_str(msg, "streamSid", "stop"),
        account_sid=_str(stop, "accountSid", "stop"),
        call_sid=_str(stop, "callSid", "stop"),
    )


def _parse_connected(msg: dict) -> Connected:
    return Connected(
        protocol=_str(msg, "protocol", "connected"), version=_str(msg, "version", "connected")
    )


_PARSERS: dict[str, Callable[[dict], InboundMessage]] = {
    "media": _parse_media,
    "start": _parse_start,
    "dtmf": _parse_dtmf,
    "mark": _parse_mark,
    "stop": _parse_stop,
    "connected": _parse_connected,
}


def parse_inbound(text: str | bytes) -> InboundMessage:
    """Parse one text frame from Twilio. Raises MessageError with a reason on any defect."""
    try:
        msg = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise MessageError(f"not JSON: {exc}") from None
    msg = _obj(msg, "message")
    event = msg.get("event")
    parser = _PARSERS.get(event) if isinstance(event, str) else None
    if parser is None:
        raise MessageError(f"unknown event {event!r}")
    return parser(msg)


# --- building what we send Twilio ----------------------------------------------------------


def media_message(stream_sid: str, payload: bytes) -> str:
    """Outbound audio: raw μ-law 8 kHz, base64, no file header."""
    b64 = base64.b64encode(payload).decode("ascii")
    # streamSid is alphanumeric and base64 needs no escaping, so a format string is exact.
    return f'{{"event":"media","streamSid":"{stream_sid}","media":{{"payload":"{b64}"}}}}'


def mark_message(stream_sid: str, name: str) -> str:
    return orjson.dumps({"event": "mark", "streamSid": stream_sid, "mark": {"name": name}}).decode()


def clear_message(stream_sid: str) -> str:
    return orjson.dumps({"event": "clear", "streamSid": stream_sid}).decode()


# --- the other direction: what the fake Twilio caller sends and parses ---------------------


@dataclass(slots=True, frozen=True)
class OutboundMedia:
    payload: bytes


@dataclass(slots=True, frozen=True)
class OutboundMark:
    name: str


@dataclass(slots=True, frozen=True)
class OutboundClear:
    pass


OutboundMessage = OutboundMedia | OutboundMark | OutboundClear

_OUTBOUND_KEYS = {"media": {"event", "streamSid", "media"}, "mark": {"event", "streamSid", "mark"}}


def parse_outbound(text: str | bytes, stream_sid: str) -> OutboundMessage:
    """Parse a frame the service sent to Twilio, as strictly as Twilio does (warning 31951)."""
    try:
        msg = _obj(orjson.loads(text), "message")
    except orjson.JSONDecodeError as exc:
        raise MessageError(f"31951: not JSON: {exc}") from None
    event = msg.get("event")
    if not isinstance(event, str):
        raise MessageError(f"31951: unknown event {event!r}")
    if msg.get("streamSid") != stream_sid:
        raise MessageError(f"31951: wrong streamSid {msg.get('streamSid')!r}")
    allowed = _OUTBOUND_KEYS.get(event, {"event", "streamSid"})
    if set(msg) != allowed:
        raise MessageError(f"31951: fields {sorted(msg)} do not match {sorted(allowed)}")
    if event == "media":
        media = _obj(msg["media"], "media")
        if set(media) != {"payload"}:
            raise MessageError("31951: media must have only payload")
        b64 = _str(media, "payload", "media")
        try:
            return OutboundMedia(_b64decode(b64))
        except ValueError:  # binascii.Error, or a non-ASCII character in the string
            raise MessageError("31951: media.payload is not base64") from None
    if event == "mark":
        mark = _obj(msg["mark"], "mark")
        return OutboundMark(_str(mark, "name", "mark"))
    if event == "clear":
        return OutboundClear()
    raise MessageError(f"31951: unknown event {event!r}")


@dataclass(slots=True)
class InboundBuilder:
    """Builds Twilio's side of a stream with correct sequenceNumber/chunk/timestamp counting."""

    stream_sid: str
    call_sid: str
    account_sid: str
    sequence: int = 0
    chunk: int = 0  # media chunks of the inbound track
    outbound_chunk: int = 0  # of the outbound track (counted per track: unverified)
    custom_parameters: dict[str, str] = field(default_factory=dict)

    def _next(self) -> str:
        self.sequence += 1
        return str(self.sequence)

    def connected(self) -> str:
        return orjson.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}).decode()

    def start(
        self,
        encoding: str = MULAW_ENCODING,
        sample_rate: int = SAMPLE_RATE,
        tracks: tuple[str, ...] = ("inbound",),
    ) -> str:
        return orjson.dumps(
            {
                "event": "start",
                "sequenceNumber": self._next(),
                "streamSid": self.stream_sid,
                "start": {
                    "accountSid": self.account_sid,
                    "streamSid": self.stream_sid,
                    "callSid": self.call_sid,
                    "tracks": list(tracks),
                    "customParameters": self.custom_parameters,
                    "mediaFormat": {"encoding": encoding, "sampleRate": sample_rate, "channels": 1},
                },
            }
        ).decode()

    def media(self, payload: bytes, timestamp_ms: int, track: str = "inbound") -> str:
        if track == "outbound":
            self.outbound_chunk += 1
            chunk = self.outbound_chunk
        else:
            self.chunk += 1
            chunk = self.chunk
        b64 = base64.b64encode(payload).decode("ascii")
        return (
            f'{{"event":"media","sequenceNumber":"{self._next()}","streamSid":"{self.stream_sid}",'
            f'"media":{{"track":"{track}","chunk":"{chunk}",'
            f'"timestamp":"{timestamp_ms}","payload":"{b64}"}}}}'
        )

    def dtmf(self, digit: str) -> str:
        return orjson.dumps(
            {
                "event": "dtmf",
                "sequenceNumber": self._next(),
                "streamSid": self.stream_sid,
                "dtmf": {"track": "inbound_track", "digit": digit},
            }
        ).decode()

    def mark(self, name: str) -> str:
        return orjson.dumps(
            {
                "event": "mark",
                "sequenceNumber": self._next(),
                "streamSid": self.stream_sid,
                "mark": {"name": name},
            }
        ).decode()

    def stop(self) -> str:
        return orjson.dumps(
            {
                "event": "stop",
                "sequenceNumber": self._next(),
                "streamSid": self.stream_sid,
                "stop": {"accountSid": self.account_sid, "callSid": self.call_sid},
            }
        ).decode()
