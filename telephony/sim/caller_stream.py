"""One media WebSocket of a fake Twilio caller, as Twilio runs it (docs/protocol.md §1.2-1.3).

The signed upgrade, then `connected`, `start`, real-time 20 ms μ-law frames (both tracks on a
`both_tracks` fork), the script's DTMF, gaps and raw frames, and `stop`. What the service sends
back is parsed as strictly as Twilio does and played out by the play-out buffer, whose mark
echoes go back on the socket. Message formats come from telephony.twilio.messages.

A stream costs the dialling coroutine's send loop plus one receive task: no task per frame.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.protocol import State

from telephony.audio import FRAME_BYTES, FRAME_MS, silence
from telephony.sim.call_result import CallClock, CallResult, loop_now
from telephony.sim.caller_script import (
    Action,
    AudioSource,
    HangUp,
    PauseStream,
    SendDtmf,
    SendRaw,
    StreamScript,
)
from telephony.sim.playout import MarkEcho, PlayoutBuffer
from telephony.sim.webhook import STREAM_TRACKS
from telephony.twilio import messages as tm
from telephony.twilio.security import sign as twilio_sign

if TYPE_CHECKING:
    from telephony.sim.twilio_caller import FakeTwilioCaller

SILENCE_FRAME = silence(FRAME_MS)
# Twilio's media client identifies itself like this (observed, unverified); harmless either way.
USER_AGENT = "Twilio.TmeWs/1.0"


class MediaStream:
    """The media WebSocket of one call: a send loop (this coroutine) and one receive task."""

    def __init__(
        self, caller: FakeTwilioCaller, result: CallResult, clock: CallClock, script: StreamScript
    ) -> None:
        self.caller = caller
        self.result = result
        self.clock = clock
        self.script = script
        params = {**result.parameters, **script.parameter_overrides}
        self.builder = tm.InboundBuilder(
            result.stream_sid,
            result.call_sid,
            caller.account_sid,
            custom_parameters={k: v for k, v in params.items() if v is not None},
        )
        self.player = PlayoutBuffer(loop_now(), keep_audio=script.keep_audio)
        self.closed = False  # the socket is gone (either side)
        self.stopped = False  # we sent `stop`: the caller sends nothing more
        self.t0 = 0.0  # loop-clock start of the stream (0: it never opened)
        self.tracks = STREAM_TRACKS[result.track]

    async def run(self) -> None:
        ws = await self._open()
        if ws is None:
            return
        receiver: asyncio.Task[None] | None = None
        try:
            t0 = self.t0 = loop_now()
            self.clock.start(t0)
            self.player.origin = t0
            await ws.send(self.builder.connected())
            await ws.send(self._start_message())
            self.clock.event("start")
            receiver = asyncio.create_task(self._receive(ws))
            await self._send_frames(ws, t0)
        except ConnectionClosed:
            pass
        finally:
            await self._hang_up(ws)
            if receiver is not None:
                await receiver
            self._finish(ws)

    async def _open(self) -> ClientConnection | None:
        result, script = self.result, self.script
        assert result.stream_url is not None
        parts = urlsplit(result.stream_url)
        if parts.query:
            self.clock.event("query_dropped", parts.query)  # Twilio drops the query string
        url = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
        headers = {}
        if script.ws_sign is True:
            headers["X-Twilio-Signature"] = twilio_sign(self.caller.auth_token, url, {})
        elif script.ws_sign:
            headers["X-Twilio-Signature"] = script.ws_sign
        target = script.connect_url or self.caller.connect_target(url)
        try:
            ws = await connect(
                target,
                additional_headers=headers,
                user_agent_header=USER_AGENT,
                compression=None,
                proxy=None,
                max_size=16 * 1024 * 1024,
            )
        except InvalidStatus as exc:
            result.ws_status = exc.response.status_code
            self.clock.event("ws_refused", str(result.ws_status))
            return None
        except (OSError, InvalidHandshake, TimeoutError) as exc:
            result.error = f"media socket failed: {exc!r}"
            return None
        self.clock.event("ws_open", target)
        return ws

    def _start_message(self) -> str:
        fmt = self.script.stream_format
        tracks = self.tracks if self.result.fork else fmt.tracks
        text = self.builder.start(fmt.encoding, fmt.sample_rate, tracks)
        if fmt.channels == 1:
            return text
        msg = orjson.loads(text)  # InboundBuilder fixes channels=1; patch for format tests
        msg["start"]["mediaFormat"]["channels"] = fmt.channels
        return orjson.dumps(msg).decode()

    # -- sending: one loop ticking every 20 ms on the call clock --

    def _end_tick(self) -> int | None:
        """Exclusive end of the frame ticks, or None to run until the server closes."""
        script = self.script
        if script.tail_ms is None:
            return None
        tail_ticks = math.ceil(script.tail_ms / FRAME_MS)
        audio_ticks = math.ceil(len(script.audio) / FRAME_BYTES)
        last_action = script.timeline[-1].at_ms if script.timeline else -FRAME_MS
        end = max(audio_ticks + tail_ticks, math.ceil(last_action / FRAME_MS) + 1)
        if "outbound" in self.tracks:  # the dialled person's audio counts from the fork's start
            agent_ticks = math.ceil(len(script.agent_audio) / FRAME_BYTES)
            end = max(end, script.offset_ms // FRAME_MS + agent_ticks + tail_ticks)
        return end

    @staticmethod
    def _frame_of(audio: AudioSource, n: int) -> bytes:
        if n * FRAME_BYTES >= len(audio):
            return SILENCE_FRAME  # the tail: a live line keeps sending
        frame = bytes(audio[n * FRAME_BYTES : (n + 1) * FRAME_BYTES])
        if len(frame) == FRAME_BYTES:
            return frame
        return frame + SILENCE_FRAME[len(frame) :]

    def _frame(self, n: int) -> bytes:
        return self._frame_of(self.script.audio, n)

    async def _send_frames(self, ws: ClientConnection, t0: float) -> None:
        """Tick n of this stream is tick `base + n` of the call: timestamps restart at 0 on a
        later stream of the call, the caller's audio and the timeline go on."""
        script = self.script
        base = script.offset_ms // FRAME_MS
        actions = deque(a for a in script.timeline if a.at_ms >= script.offset_ms)
        end = self._end_tick()
        audio_ticks = math.ceil(len(script.audio) / FRAME_BYTES)
        inbound, outbound = "inbound" in self.tracks, "outbound" in self.tracks
        pace_t, pace_n = t0, 0  # deadline of tick n = pace_t + (n - pace_n) * 20 ms
        paused_until = 0
        n = 0
        while not self.closed and (end is None or base + n < end):
            ts = n * FRAME_MS
            call_ts = script.offset_ms + ts
            if call_ts >= script.max_call_ms or (script.hangup and script.hangup.is_set()):
                return
            if script.updates is not None and not script.updates.empty():
                self.clock.event("twiml_update", "the stream ends")  # Twilio runs the new TwiML
                return
            # An open-ended tail is always real time: unpaced, it would flood the server.
            paced = script.realtime or (end is None and base + n >= audio_ticks)
            if paced and not script.realtime and base + n == audio_ticks:
                pace_t, pace_n = loop_now(), n
            await self._tick_wait(paced, pace_t + (n - pace_n) * FRAME_MS / 1000)
            while actions and actions[0].at_ms <= call_ts:
                action = actions.popleft()
                if isinstance(action, HangUp):
                    self.clock.event("hangup", f"at {call_ts}")
                    return
                if isinstance(action, PauseStream):
                    paused_until = max(paused_until, action.at_ms + action.ms)
                await self._act(ws, action, ts)
            await self._echo(ws, self.player.advance(loop_now()))
            if call_ts >= paused_until and not self.closed:
                if inbound:
                    await ws.send(self.builder.media(self._frame(base + n), ts))
                    self.result.sent_frames += 1
                if outbound:  # same timestamp: both tracks count from the stream's start
                    frame = self._frame_of(script.agent_audio, n)
                    await ws.send(self.builder.media(frame, ts, "outbound"))
                    self.result.sent_frames += 1
            n += 1

    @staticmethod
    async def _tick_wait(paced: bool, deadline: float) -> None:
        if paced:
            # Sleep to an absolute deadline so scheduling delays never accumulate.
            await asyncio.sleep(max(0.0, deadline - loop_now()))
        else:
            await asyncio.sleep(0)  # let the receive task and the server run

    async def _act(self, ws: ClientConnection, action: Action, ts: int) -> None:
        if isinstance(action, SendDtmf):
            await ws.send(self.builder.dtmf(action.digit))
            self.clock.event("dtmf", action.digit)
        elif isinstance(action, PauseStream):
            self.clock.event("pause", f"{action.ms} ms from {ts}")
        elif isinstance(action, SendRaw):
            await ws.send(action.data)
            self.clock.event("raw", repr(action.data[:40]))

    async def _hang_up(self, ws: ClientConnection) -> None:
        if self.closed or ws.state is not State.OPEN:
            return  # the server closed first
        self.result.closed_by = self.result.closed_by or "caller"
        self.player.advance(loop_now())  # playback ends with the call
        self.stopped = True
        try:
            await ws.send(self.builder.stop())
            self.clock.event("stop")
        except ConnectionClosed:
            pass
        await ws.close(1000)

    # -- receiving: the service's media/mark/clear --

    async def _receive(self, ws: ClientConnection) -> None:
        try:
            async for data in ws:
                await self._handle(ws, data, loop_now())
        except ConnectionClosed:
            pass
        finally:
            if not self.stopped:  # else playback already ended at the hang-up
                self.player.advance(loop_now())
            self.closed = True
            self.result.closed_by = self.result.closed_by or "server"
            self.clock.event("closed", f"{ws.close_code} {ws.close_reason or ''}".strip())

    async def _handle(self, ws: ClientConnection, data: str | bytes, now: float) -> None:
        if self.stopped:
            return  # we hung up: nothing plays any more
        if self.result.fork:  # Twilio plays nothing from a one-way stream (reaction unverified)
            self._warn(f"one-way <Start><Stream>: message ignored: {data[:60]!r}", now)
            return
        if isinstance(data, bytes):
            self._warn(f"31950: binary frame ({len(data)} bytes)", now)
            return
        try:
            msg = tm.parse_outbound(data, self.result.stream_sid)
        except tm.MessageError as exc:
            self._warn(str(exc), now)
            return
        player = self.player
        if isinstance(msg, tm.OutboundMedia):
            runs = len(player.segments)
            echoes = player.media(msg.payload, now)
            self.result.received_audio_bytes += len(msg.payload)
            if len(player.segments) > runs:
                self.clock.event("audio_start", "", now)
            for warning in player.warnings:
                self._warn(warning, now)
            player.warnings.clear()
        elif isinstance(msg, tm.OutboundMark):
            self.clock.event("mark", msg.name, now)
            echoes = player.mark(msg.name, now)
        else:
            self.result.clears.append(self.clock.ms(now))
            self.clock.event("clear", f"{player.buffered} bytes", now)
            echoes = player.clear(now)
        await self._echo(ws, echoes)

    def _warn(self, warning: str, now: float) -> None:
        self.result.outbound_errors.append(warning)
        self.clock.event("warning", warning, now)

    async def _echo(self, ws: ClientConnection, echoes: list[MarkEcho]) -> None:
        for echo in echoes:
            self.result.marks.append(echo)
            self.clock.event("mark_echo", echo.name + (" (cleared)" if echo.cleared else ""))
            if not self.stopped and not self.closed:
                await ws.send(self.builder.mark(echo.name))

    def _finish(self, ws: ClientConnection) -> None:
        result, player = self.result, self.player
        result.close_code = ws.close_code
        result.close_reason = ws.close_reason or ""
        result.heard_segments = player.segments
        result.heard = player.heard
        result.cleared_bytes = player.cleared_bytes
        result.unplayed_bytes = player.buffered
        result.unechoed_marks = [name for name, _, _ in player.marks]
