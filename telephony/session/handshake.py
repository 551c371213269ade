"""The handshake: what Twilio must send before a media stream becomes a call.

`connected` then `start`, within START_TIMEOUT_S; then the start's one-time stream token (bound
to the call SID and `token_scope`), the media format and the profile are checked. Anything wrong
is a `StreamRefused` (no start in time: `TimeoutError`), which `serve_call` (session/serve.py)
answers by closing the socket and, when the token proved the call is ours, a `refused` calls row.
A good handshake is a `CallSetup`, what `Call` is built from.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass

from telephony.config import Config, Profile
from telephony.session.media_socket import TwilioSocket
from telephony.twilio import messages as tm
from telephony.twilio.security import StreamTokens, TokenError

START_TIMEOUT_S = 10.0


class StreamRefused(Exception):
    """The stream cannot become a call (bad token, wrong format, no start).

    `start` is set once its stream token proved the call SID is one we answered (the token is
    ours, even if expired or used): only then is the refusal worth a calls row. The upgrade's
    signature does not prove it (Twilio signs the same URL for every stream)."""

    def __init__(
        self, reason: str, call_sid: str | None = None, *, start: tm.Start | None = None
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.call_sid = call_sid
        self.start = start


@dataclass(slots=True)
class CallSetup:
    """A good handshake: the start, its profile and, for a continuation, where it carries on."""

    start: tm.Start
    profile_name: str
    profile: Profile
    continuation: Continuation | None = None
    part: str = ""  # which of the call's streams: "" the webhook's, else its continuation's


@dataclass(frozen=True, slots=True)
class Continuation:
    """A stream that continues a call's transcript: transcription after the bot transferred
    the call to a person (`transcribe_after_transfer`). Its `<Parameter>`s say where."""

    offset_ms: int  # call time of this stream's timestamp 0 (the bot part's audio end)
    turn_base: int  # index of its first turn (after the bot part's turns)


def token_scope(params: Mapping[str, str]) -> str:
    """What a stream token is bound to besides the call SID: the profile and, for a
    continuation, where it continues (so none of them can be swapped)."""
    profile = params.get("profile", "")
    if "continues" not in params:
        return profile
    return f"{profile}|continues|{params.get('offset_ms', '')}|{params.get('turn_base', '')}"


def stream_part(params: Mapping[str, str]) -> str:
    """Which of its call's streams this is: "" for the one the webhook answered, and for a
    continuation where it continues (as its token says). A call has one live stream per part."""
    if "continues" not in params:
        return ""
    return f"continues|{params.get('offset_ms', '')}|{params.get('turn_base', '')}"[:128]


def _continuation(params: Mapping[str, str], sid: str, start: tm.Start) -> Continuation | None:
    if "continues" not in params:
        return None
    offset, base = params.get("offset_ms", ""), params.get("turn_base", "")
    if not (offset.isdigit() and base.isdigit() and offset.isascii() and base.isascii()):
        raise StreamRefused("malformed continuation parameters", sid, start=start)
    return Continuation(int(offset), int(base))


async def _receive_json_event(socket: TwilioSocket) -> tm.InboundMessage:
    frame = await socket.receive()
    if frame is None:
        raise StreamRefused("socket closed before start")
    if isinstance(frame, bytes):
        raise StreamRefused("binary frame before start")
    try:
        return tm.parse_inbound(frame)
    except tm.MessageError as exc:
        raise StreamRefused(f"malformed frame before start: {exc}") from None


async def handshake(socket: TwilioSocket, tokens: StreamTokens, config: Config) -> CallSetup:
    """Read `connected` then `start`; check token, profile and media format."""
    async with asyncio.timeout(START_TIMEOUT_S):
        msg = await _receive_json_event(socket)
        if isinstance(msg, tm.Connected):
            msg = await _receive_json_event(socket)
    if not isinstance(msg, tm.Start):
        raise StreamRefused(f"expected start, got {type(msg).__name__.lower()}")
    sid = msg.call_sid
    params = msg.custom_parameters
    profile_name = params.get("profile", "")
    try:
        tokens.redeem(params.get("call_token", ""), sid, token_scope(params))
    except TokenError as exc:
        raise StreamRefused(str(exc), sid, start=msg if exc.authentic else None) from None
    fmt = msg.media_format
    if (fmt.encoding, fmt.sample_rate, fmt.channels) != (tm.MULAW_ENCODING, tm.SAMPLE_RATE, 1):
        raise StreamRefused(
            f"unsupported media format {fmt.encoding} {fmt.sample_rate} Hz x{fmt.channels}",
            sid,
            start=msg,
        )
    profile = config.profiles.get(profile_name)
    if profile is None:
        raise StreamRefused(f"unknown profile {profile_name!r}", sid, start=msg)
    continuation = _continuation(params, sid, msg)
    return CallSetup(msg, profile_name, profile, continuation, stream_part(params))
