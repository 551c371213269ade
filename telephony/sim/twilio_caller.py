"""A fake Twilio caller: dials the service the way Twilio does and listens like a phone.

One call is: the voice webhook POST (signed), the TwiML answer, then the media WebSocket
(signed upgrade) carrying `connected`, `start`, real-time 20 ms μ-law frames, DTMF, mark echoes
and `stop`. What the service sends back is parsed as strictly as Twilio does and played out at
real time, so a mark is echoed only once the audio before it has played and `clear` drops
unplayed audio. Message formats come from telephony.twilio.messages, never from here.

`<Connect><Stream>` is the bidirectional stream; `<Start><Stream track="both_tracks">` then
`<Dial>` is a one-way fork while a person takes the call: each 20 ms tick then carries an
`inbound` frame (the caller's audio) and an `outbound` frame (what the caller hears: the
dialled person's `agent_audio`, from the fork's start), with the same timestamp. TwiML that a
REST update runs on the live call (`twiml_updates`, e.g. a transfer) ends the current stream
with `stop`, as Twilio does, and a `<Start><Stream>` in it opens a new stream for the same
call, whose caller audio carries on where the call clock is (`CallResult.forks`).

Used by tests and by `telephony call`. This module dials and follows the call's TwiML; the
parts: sim/webhook.py the webhook hop and TwiML reading (shared with the load generator),
sim/caller_stream.py one media socket, sim/playout.py Twilio's play-out buffer (also shared),
sim/caller_script.py the caller's audio and timeline, sim/call_result.py what it observed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
from collections.abc import Mapping, Sequence
from urllib.parse import urlsplit, urlunsplit

import httpx

# The script's vocabulary and the audio helpers are imported from here by tests and scripts.
from telephony.audio import FRAME_BYTES as FRAME_BYTES
from telephony.audio import FRAME_MS
from telephony.audio import silence as silence
from telephony.audio import tone as tone
from telephony.sim.call_result import CallClock, CallResult, Whispered, loop_now
from telephony.sim.call_result import Event as Event
from telephony.sim.caller_script import Action, AudioSource, StreamFormat, StreamScript
from telephony.sim.caller_script import HangUp as HangUp
from telephony.sim.caller_script import PauseStream as PauseStream
from telephony.sim.caller_script import SendDtmf as SendDtmf
from telephony.sim.caller_script import SendRaw as SendRaw
from telephony.sim.caller_script import wav as wav
from telephony.sim.caller_stream import MediaStream
from telephony.sim.webhook import (
    DEFAULT_ACCOUNT_SID,
    TwimlAnswer,
    post_webhook,
    read_twiml,
    signature_header,
    webhook_params,
)


def _ws_scheme(scheme: str) -> str:
    return {"https": "wss", "http": "ws"}.get(scheme, scheme)


def _new_sid(prefix: str) -> str:
    return prefix + secrets.token_hex(16)


def _take_twiml(result: CallResult, body: bytes | str, clock: CallClock) -> TwimlAnswer:
    """Record what the TwiML says (`opens_stream`: whether a stream is to be opened)."""
    answer = read_twiml(body)
    result.take(answer)
    if answer.error is None:
        stream = answer.stream_url
        clock.event("twiml", f"stream {stream}" if stream is not None else ",".join(answer.verbs))
    return answer


class FakeTwilioCaller:
    """Places calls on the service like Twilio. One instance can dial many concurrent calls;
    all per-call state lives in the call (see MediaStream)."""

    def __init__(
        self,
        base_url: str,
        *,
        auth_token: str,
        account_sid: str = DEFAULT_ACCOUNT_SID,
        public_url: str | None = None,
        from_number: str = "+15550001111",
        webhook_path: str = "/twilio/voice",
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        # The URL Twilio believes it calls: what both signatures cover.
        self.public_url = (public_url or base_url).rstrip("/")
        self.auth_token = auth_token
        self.account_sid = account_sid
        self.from_number = from_number
        self.webhook_path = webhook_path
        self.http = http

    async def dial(
        self,
        to: str,
        *,
        audio: AudioSource = b"",
        call_sid: str | None = None,
        timeline: Sequence[Action] = (),
        realtime: bool = True,
        tail_ms: int | None = 500,
        sign: bool | str = True,
        ws_sign: bool | str = True,
        connect_url: str | None = None,
        stream_format: StreamFormat | None = None,
        parameter_overrides: Mapping[str, str | None] | None = None,
        extra_params: Mapping[str, str] | None = None,
        hangup: asyncio.Event | None = None,
        keep_audio: bool = True,
        max_call_ms: int = 600_000,
        agent_audio: AudioSource = b"",
        twiml_updates: asyncio.Queue[str] | None = None,
    ) -> CallResult:
        """Place one call and return what happened.

        audio: μ-law 8 kHz sent as 20 ms frames from timestamp 0. After it, `tail_ms` of
        silence frames (a live line keeps sending), then `stop` and close; `tail_ms=None` keeps
        sending silence in real time until the server closes, `hangup` is set or `max_call_ms`.
        The call lasts at least until the last timeline action. realtime=False sends frames
        without pacing (content-only tests). sign/ws_sign: True = correct X-Twilio-Signature,
        False = none, a str = send that. parameter_overrides: change (None = drop) the
        customParameters echoed in `start`, e.g. to forge a token. agent_audio: what the
        dialled person says on a both_tracks fork (the outbound track), from the fork's start.
        twiml_updates: TwiML run on the live call by a REST update (put it here when the fake
        REST API receives it): the stream ends and a `<Start><Stream>` in it is followed.
        """
        result = CallResult(
            call_sid=call_sid or _new_sid("CA"),
            stream_sid=_new_sid("MZ"),
            to=to,
            from_number=self.from_number,
        )
        clock = CallClock(result)
        if not await self._webhook(result, clock, sign, extra_params or {}):
            clock.finish()
            return result
        script = StreamScript(
            audio=audio,
            timeline=sorted(timeline, key=lambda action: action.at_ms),
            realtime=realtime,
            tail_ms=tail_ms,
            ws_sign=ws_sign,
            connect_url=connect_url,
            stream_format=stream_format or StreamFormat(),
            parameter_overrides=parameter_overrides or {},
            hangup=hangup,
            keep_audio=keep_audio,
            max_call_ms=max_call_ms,
            agent_audio=agent_audio,
            updates=twiml_updates,
        )
        stream = MediaStream(self, result, clock, script)
        await stream.run()
        self._after_stream(result, script, clock)
        clock.finish()
        await self._follow_updates(result, script, stream.t0)
        return result

    @staticmethod
    def _after_stream(result: CallResult, script: StreamScript, clock: CallClock) -> None:
        """Our server ended a <Connect> stream with no REST update in between (those end the
        stream themselves: a hang-up, a redirect or new TwiML): Twilio goes on with the verbs
        after </Connect>."""
        after = result.after_stream
        replaced = (script.hangup is not None and script.hangup.is_set()) or (
            script.updates is not None and not script.updates.empty()
        )
        if after is None or result.closed_by != "server" or replaced or result.fork:
            return
        result.ran_after_stream = True
        result.said += after.said
        result.hung_up = result.hung_up or after.hung_up
        result.dialled += after.dialled
        clock.event("twiml", "after the stream: " + ",".join(after.verbs))

    async def _follow_updates(
        self, result: CallResult, script: StreamScript, origin: float
    ) -> None:
        """New TwiML on the live call: a `<Start><Stream>` in it is a new stream of the call,
        on the same call clock (origin: the first stream's start)."""
        updates = script.updates
        while updates is not None and not updates.empty() and origin:
            if script.hangup is not None and script.hangup.is_set():
                return
            fork = CallResult(
                call_sid=result.call_sid,
                stream_sid=_new_sid("MZ"),
                to=result.to,
                from_number=result.from_number,
            )
            fork.twiml = updates.get_nowait()
            result.forks.append(fork)
            clock = CallClock(fork)
            answer = _take_twiml(fork, fork.twiml, clock)
            # The person answers at once here: their whisper runs (while a fork's stream, which
            # <Start> opened before <Dial> rang, carries on beside it).
            whispers = asyncio.ensure_future(self._whispers(fork, answer, clock))
            if not answer.opens_stream:
                await whispers
                clock.finish()
                return
            offset_ms = round((loop_now() - origin) * 1000 / FRAME_MS) * FRAME_MS
            later = dataclasses.replace(
                script, offset_ms=offset_ms, parameter_overrides={}, stream_format=StreamFormat()
            )
            stream = MediaStream(self, fork, clock, later)
            try:
                await stream.run()
            finally:
                await whispers
            clock.finish()

    async def _whispers(self, result: CallResult, answer: TwimlAnswer, clock: CallClock) -> None:
        """Each `<Dial><Number url>`: when that person answers, Twilio requests the URL for the
        new (child) leg, signed like any webhook, and plays its TwiML to them alone before
        bridging; that TwiML may not `<Dial>` (docs/protocol.md §1.7)."""
        for number, url, method in answer.number_urls:
            params = {
                **webhook_params(
                    _new_sid("CA"),
                    number,
                    from_number=result.from_number,
                    account_sid=self.account_sid,
                ),
                "ParentCallSid": result.call_sid,
                "CallStatus": "in-progress",
                "Direction": "outbound-dial",
            }
            if method != "POST":  # Twilio would GET with the form in the query; we never ask
                result.whispers.append(Whispered(number, url, None, [], f"{method}: not faked"))
                continue
            headers = signature_header(self.auth_token, url, params)
            try:
                response = await post_webhook(self.http, self.http_target(url), params, headers)
            except httpx.HTTPError as exc:
                result.whispers.append(Whispered(number, url, None, [], f"{exc!r}"))
                continue
            whisper = read_twiml(response.content) if response.status_code == 200 else None
            error = None if whisper is None else whisper.error
            if whisper is not None and whisper.dialled:
                error = "<Dial> is not allowed in a <Number url> document"
            said = whisper.said if whisper is not None and error is None else []
            result.whispers.append(Whispered(number, url, response.status_code, said, error))
            clock.event("whisper", f"{response.status_code} {number}")

    # -- the webhook hop --

    def webhook_params(self, result: CallResult, extra: Mapping[str, str]) -> dict[str, str]:
        return webhook_params(
            result.call_sid,
            result.to,
            from_number=result.from_number,
            account_sid=self.account_sid,
            extra=extra,
        )

    async def _webhook(
        self, result: CallResult, clock: CallClock, sign: bool | str, extra: Mapping[str, str]
    ) -> bool:
        """POST the voice webhook and read the TwiML; True when it says to open a stream."""
        params = self.webhook_params(result, extra)
        signed_url = self.public_url + self.webhook_path
        headers = signature_header(self.auth_token, signed_url, params, sign)
        try:
            response = await post_webhook(
                self.http, self.base_url + self.webhook_path, params, headers
            )
        except httpx.HTTPError as exc:
            result.error = f"webhook failed: {exc!r}"
            return False
        result.http_status = response.status_code
        result.twiml = response.text
        clock.event("webhook", str(response.status_code))
        if response.status_code != 200:
            return False
        return _take_twiml(result, response.content, clock).opens_stream

    def http_target(self, url: str) -> str:
        """Where to really send a request for a URL on the public host: base_url's host."""
        parts, public, base = urlsplit(url), urlsplit(self.public_url), urlsplit(self.base_url)
        if parts.netloc != public.netloc:
            return url
        return urlunsplit((base.scheme, base.netloc, parts.path, parts.query, ""))

    def connect_target(self, stream_url: str) -> str:
        """Where to really connect: the public host is swapped for base_url's (tests, proxies)."""
        stream, public, base = (
            urlsplit(stream_url),
            urlsplit(self.public_url),
            urlsplit(self.base_url),
        )
        if stream.netloc != public.netloc:
            return stream_url
        return urlunsplit((_ws_scheme(base.scheme), base.netloc, stream.path, "", ""))


async def run_calls(
    caller: FakeTwilioCaller, n: int, to: str, *, stagger_ms: int = 0, **dial_kwargs: object
) -> list[CallResult]:
    """n concurrent calls to one number, started `stagger_ms` apart."""

    async def one(i: int) -> CallResult:
        await asyncio.sleep(i * stagger_ms / 1000)
        return await caller.dial(to, **dial_kwargs)  # type: ignore[arg-type]

    return await asyncio.gather(*(one(i) for i in range(n)))
