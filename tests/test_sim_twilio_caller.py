"""The fake Twilio caller against a tiny Twilio-facing app under real uvicorn.

The app checks both signatures the way Twilio's docs say, answers TwiML built with the SDK and
plays a per-test script on the media socket, recording every frame with its arrival time.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket
from twilio.request_validator import RequestValidator
from twilio.twiml.voice_response import Connect, Stream, VoiceResponse

from telephony.inprocess import bind_loopback, serve_app
from telephony.sim.playout import MAX_BUFFER_BYTES, PlayoutBuffer
from telephony.sim.twilio_caller import (
    FRAME_BYTES,
    FakeTwilioCaller,
    HangUp,
    PauseStream,
    SendDtmf,
    SendRaw,
    StreamFormat,
    run_calls,
    silence,
    tone,
    wav,
)
from telephony.twilio import messages as tm

pytestmark = pytest.mark.clock(4)  # timers run 4x real time (tests/fast_clock.py)

AUTH = "caller-test-auth-token"
REFUSED = "+15550009999"
TRICKY = "a&b<c>\"d'e"  # must survive XML escaping in TwiML and come back in `start`


@dataclass
class Item:
    t: float
    raw: str | bytes
    msg: tm.InboundMessage | None  # None: not a valid Twilio message (e.g. SendRaw)


class Peer:
    """The service's end of one media socket: records frames, waits for messages, sends."""

    def __init__(self, ws: WebSocket) -> None:
        self.ws = ws
        self.items: list[Item] = []
        self.stream_sid = ""
        self._changed = asyncio.Event()

    async def read(self) -> None:
        while True:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                break
            text = message.get("text")
            raw = text if text is not None else message.get("bytes", b"")
            try:
                parsed: tm.InboundMessage | None = tm.parse_inbound(raw)
            except tm.MessageError:
                parsed = None
            self.items.append(Item(asyncio.get_running_loop().time(), raw, parsed))
            self._changed.set()

    async def wait_for(self, pred: Callable[[Any], bool]) -> Item:
        async with asyncio.timeout(3):
            while True:
                for item in self.items:
                    if item.msg is not None and pred(item.msg):
                        return item
                self._changed.clear()
                await self._changed.wait()

    async def started(self) -> tm.Start:
        item = await self.wait_for(lambda m: isinstance(m, tm.Start))
        assert isinstance(item.msg, tm.Start)
        self.stream_sid = item.msg.stream_sid
        return item.msg

    async def echo_of(self, name: str) -> float:
        item = await self.wait_for(lambda m: isinstance(m, tm.Mark) and m.name == name)
        return item.t

    async def send(self, text: str | bytes) -> float:
        if isinstance(text, bytes):
            await self.ws.send_bytes(text)
        else:
            await self.ws.send_text(text)
        return asyncio.get_running_loop().time()

    def of(self, kind: type) -> list[Any]:
        return [item.msg for item in self.items if isinstance(item.msg, kind)]


Script = Callable[[Peer], Awaitable[None]]


@dataclass
class FakeService:
    url: str
    public_url: str
    stream_query: str = ""  # appended to the Stream URL: Twilio must drop it
    script: Script | None = None
    webhooks: list[tuple[dict[str, str], bool]] = field(default_factory=list)
    upgrades: list[bool] = field(default_factory=list)
    peers: list[Peer] = field(default_factory=list)
    notes: dict[str, float] = field(default_factory=dict)
    errors: list[BaseException] = field(default_factory=list)

    @property
    def media_url(self) -> str:
        return self.public_url.replace("http", "ws", 1) + "/twilio/media"

    def caller(self, **kw: Any) -> FakeTwilioCaller:
        return FakeTwilioCaller(self.url, auth_token=AUTH, public_url=self.public_url, **kw)


def make_app(svc: FakeService) -> Starlette:
    validator = RequestValidator(AUTH)

    async def voice(request: Request) -> Response:
        # parse_qsl, not request.form(): that needs python-multipart, which is not a dependency.
        form = dict(parse_qsl((await request.body()).decode(), keep_blank_values=True))
        signature = request.headers.get("x-twilio-signature", "")
        ok = validator.validate(svc.public_url + "/twilio/voice", form, signature)
        svc.webhooks.append((form, ok))
        if not ok:
            return Response("invalid signature", status_code=403)
        resp = VoiceResponse()
        if form["To"] == REFUSED:
            resp.say("Not in service.")
            resp.hangup()
        else:
            stream = Stream(url=svc.media_url + svc.stream_query)
            stream.parameter(name="token", value=TRICKY)
            stream.parameter(name="to", value=form["To"])
            connect = Connect()
            connect.append(stream)
            resp.append(connect)
        return Response(str(resp), media_type="text/xml")

    async def media(ws: WebSocket) -> None:
        ok = validator.validate(svc.media_url, {}, ws.headers.get("x-twilio-signature", ""))
        svc.upgrades.append(ok)
        if not ok:
            await ws.close(1008)  # before accept: the client sees HTTP 403
            return
        await ws.accept()
        peer = Peer(ws)
        svc.peers.append(peer)
        reader = asyncio.create_task(peer.read())
        try:
            if svc.script is not None:
                await svc.script(peer)
        except BaseException as exc:
            svc.errors.append(exc)
            raise
        finally:
            await reader

    return Starlette(
        routes=[
            Route("/twilio/voice", voice, methods=["POST"]),
            WebSocketRoute("/twilio/media", media),
        ]
    )


def bind_tcp() -> socket.socket:
    """A loopback listener whose connections get TCP_NODELAY.

    asyncio sets TCP_NODELAY only when sock.proto == IPPROTO_TCP, and socket.socket(AF_INET,
    SOCK_STREAM) has proto 0: Nagle would then hold the service's second small frame until the
    caller's next 20 ms frame carried the ACK, and marks would look ~20 ms late.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


@pytest.fixture
async def svc() -> AsyncIterator[FakeService]:
    sock = bind_tcp()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    service = FakeService(url=url, public_url=url)
    async with serve_app(make_app(service), sock):
        yield service
    assert service.errors == []


def pattern(n: int) -> bytes:
    return bytes(i % 251 for i in range(n))


# --- call set-up ---------------------------------------------------------------------------


async def test_signed_call_with_counters_and_payloads(svc: FakeService) -> None:
    audio = pattern(9 * FRAME_BYTES + 60)  # the last frame is padded with silence
    result = await svc.caller().dial("+15550001000", audio=audio, realtime=False, tail_ms=0)

    [(form, ok)] = svc.webhooks
    assert ok
    assert form == {
        "CallSid": result.call_sid,
        "AccountSid": "AC" + "0" * 32,
        "From": "+15550001111",
        "To": "+15550001000",
        "CallStatus": "ringing",
        "Direction": "inbound",
        "ApiVersion": "2010-04-01",
    }
    assert svc.upgrades == [True]
    assert result.http_status == 200 and result.stream_url == svc.media_url
    assert result.parameters == {"token": TRICKY, "to": "+15550001000"}

    [peer] = svc.peers
    msgs = [item.msg for item in peer.items]
    assert isinstance(msgs[0], tm.Connected) and isinstance(msgs[-1], tm.Stop)
    start = msgs[1]
    assert isinstance(start, tm.Start)
    assert start.custom_parameters == result.parameters
    assert start.media_format == tm.MediaFormat(tm.MULAW_ENCODING, 8000, 1)
    assert start.tracks == ("inbound",)
    assert (start.call_sid, start.stream_sid) == (result.call_sid, result.stream_sid)
    assert [m.sequence for m in msgs[1:]] == list(range(1, 13))  # counts every message
    media = peer.of(tm.Media)
    assert [m.chunk for m in media] == list(range(1, 11))
    assert [m.timestamp for m in media] == list(range(0, 200, 20))
    assert b"".join(m.payload for m in media) == audio + b"\xff" * 100
    assert result.sent_frames == 10
    assert (result.closed_by, result.close_code) == ("caller", 1000)


@pytest.mark.parametrize("sign", [False, "bogus"])
async def test_bad_webhook_signature_is_refused(svc: FakeService, sign: bool | str) -> None:
    result = await svc.caller().dial("+15550001000", sign=sign, realtime=False)
    assert [ok for _, ok in svc.webhooks] == [False]
    assert result.http_status == 403 and result.stream_url is None
    assert svc.upgrades == []


@pytest.mark.parametrize("ws_sign", [False, "bogus"])
async def test_bad_upgrade_signature_is_refused(svc: FakeService, ws_sign: bool | str) -> None:
    result = await svc.caller().dial("+15550001000", ws_sign=ws_sign, realtime=False)
    assert svc.upgrades == [False]
    assert result.ws_status == 403 and result.sent_frames == 0


async def test_say_hangup_twiml(svc: FakeService) -> None:
    result = await svc.caller().dial(REFUSED, realtime=False)
    assert result.said == ["Not in service."]
    assert result.hung_up and result.verbs == ["Say", "Hangup"]
    assert result.stream_url is None and svc.upgrades == []


async def test_public_url_behind_a_proxy_and_query_dropped(svc: FakeService) -> None:
    svc.public_url = "https://bridge.example.com"
    svc.stream_query = "?secret=1"
    result = await svc.caller().dial("+15550001000", realtime=False, tail_ms=40)
    assert [ok for _, ok in svc.webhooks] == [True]
    assert result.stream_url == "wss://bridge.example.com/twilio/media?secret=1"
    assert svc.upgrades == [True]  # signed over the wss URL without its query
    assert any(e.kind == "query_dropped" for e in result.events)
    assert len(svc.peers[0].of(tm.Media)) == 2


async def test_unreachable_service_is_a_result_not_an_exception() -> None:
    sock = bind_loopback()
    port = sock.getsockname()[1]
    sock.close()
    result = await FakeTwilioCaller(f"http://127.0.0.1:{port}", auth_token=AUTH).dial("+1")
    assert result.error is not None and result.http_status is None


async def test_format_and_parameter_overrides(svc: FakeService) -> None:
    await svc.caller().dial(
        "+15550001000",
        realtime=False,
        tail_ms=0,
        stream_format=StreamFormat("audio/x-l16", 16000, 2, ("inbound", "outbound")),
        parameter_overrides={"token": "forged", "to": None},
    )
    [start] = svc.peers[0].of(tm.Start)
    assert start.media_format == tm.MediaFormat("audio/x-l16", 16000, 2)
    assert start.tracks == ("inbound", "outbound")
    assert start.custom_parameters == {"token": "forged"}


async def test_concurrent_calls_are_independent(svc: FakeService) -> None:
    results = await run_calls(
        svc.caller(), 3, "+15550001000", audio=pattern(480), realtime=False, tail_ms=0
    )
    assert len({r.call_sid for r in results}) == 3
    assert {p.of(tm.Start)[0].call_sid for p in svc.peers} == {r.call_sid for r in results}
    assert all(len(p.of(tm.Media)) == 3 for p in svc.peers)


# --- timing --------------------------------------------------------------------------------


async def test_frames_are_paced_in_real_time(svc: FakeService) -> None:
    began = asyncio.get_running_loop().time()
    await svc.caller().dial("+15550001000", audio=silence(1000), tail_ms=0)
    elapsed = asyncio.get_running_loop().time() - began
    arrivals = [item.t for item in svc.peers[0].items if isinstance(item.msg, tm.Media)]
    assert len(arrivals) == 50
    # A functional check of pacing (not a speed target): 49 intervals of 20 ms, no burst.
    assert 0.9 <= arrivals[-1] - arrivals[0] <= 1.3
    assert arrivals[25] - arrivals[0] >= 0.45
    assert elapsed < 1.6


async def test_mark_echoes_only_after_its_audio_played(svc: FakeService) -> None:
    bot_audio = pattern(3200)  # 400 ms

    async def script(peer: Peer) -> None:
        await peer.started()
        sid = peer.stream_sid
        svc.notes["idle_sent"] = await peer.send(tm.mark_message(sid, "idle"))
        svc.notes["idle_echo"] = await peer.echo_of("idle")
        svc.notes["audio_sent"] = asyncio.get_running_loop().time()
        for i in range(0, len(bot_audio), FRAME_BYTES):
            await peer.send(tm.media_message(sid, bot_audio[i : i + FRAME_BYTES]))
        await peer.send(tm.mark_message(sid, "played"))
        svc.notes["played_echo"] = await peer.echo_of("played")

    svc.script = script
    result = await svc.caller().dial("+15550001000", audio=silence(800), tail_ms=0)

    notes = svc.notes
    assert notes["idle_echo"] - notes["idle_sent"] < 0.1  # nothing buffered: at once
    waited = notes["played_echo"] - notes["audio_sent"]
    assert 0.39 <= waited <= 0.6
    played = result.mark("played")
    assert played is not None and not played.cleared
    assert played.echoed_at_ms - played.received_at_ms >= 380
    assert result.heard == bot_audio and result.unechoed_marks == []
    assert len(result.heard_segments) == 1


async def test_clear_drops_unplayed_audio_and_returns_marks(svc: FakeService) -> None:
    bot_audio = pattern(8000)  # 1 s, marks at 500 ms and 1000 ms

    async def script(peer: Peer) -> None:
        await peer.started()
        sid = peer.stream_sid
        await peer.send(tm.media_message(sid, bot_audio[:4000]))
        await peer.send(tm.mark_message(sid, "a"))
        await peer.send(tm.media_message(sid, bot_audio[4000:]))
        await peer.send(tm.mark_message(sid, "b"))
        await asyncio.sleep(0.2)
        svc.notes["clear_sent"] = await peer.send(tm.clear_message(sid))
        svc.notes["b_echo"] = await peer.echo_of("b")
        await peer.send(tm.mark_message(sid, "after"))
        await peer.echo_of("after")

    svc.script = script
    result = await svc.caller().dial("+15550001000", audio=silence(600), tail_ms=0)

    assert svc.notes["b_echo"] - svc.notes["clear_sent"] < 0.1
    assert [(m.name, m.cleared) for m in result.marks] == [
        ("a", True),
        ("b", True),
        ("after", False),
    ]
    assert len(result.clears) == 1
    heard = result.heard
    assert 0.15 * 8000 <= len(heard) <= 0.35 * 8000
    assert heard == bot_audio[: len(heard)]
    assert result.cleared_bytes + len(heard) == len(bot_audio)


def test_audio_source_helpers(tmp_path: Path) -> None:
    from telephony.audio import write_wav

    path = tmp_path / "hello.wav"
    write_wav(path, b"\x00\x00" * 800, 8000)  # 100 ms of PCM16 silence
    assert len(wav(path)) == 800
    assert len(tone(440, 100)) == 800
    assert silence(100) == b"\xff" * 800


async def test_playout_buffer_on_a_fake_clock() -> None:
    player = PlayoutBuffer(100.0)
    assert player.media(b"\x01" * 800, 100.0) == []  # 100 ms of audio
    assert player.mark("m", 100.0) == []
    assert player.advance(100.099) == []
    [echo] = player.advance(100.1)
    assert (echo.name, echo.received_at_ms, echo.cleared) == ("m", 0.0, False)
    assert echo.echoed_at_ms == pytest.approx(100)
    player.media(b"\x02" * 1600, 101.0)  # after an idle second: a new run
    player.mark("n", 101.0)
    [cleared] = player.clear(101.05)
    assert cleared.cleared and cleared.name == "n"
    assert [(s.start_ms, s.length) for s in player.segments] == [(0.0, 800), (1000.0, 400)]
    assert player.heard == b"\x01" * 800 + b"\x02" * 400
    assert player.cleared_bytes == 1200


async def test_playout_buffer_overflow_warns_31931_once() -> None:
    player = PlayoutBuffer(0.0, keep_audio=False)
    player.media(b"\x00" * (MAX_BUFFER_BYTES + 100), 0.0)
    player.media(b"\x00" * 100, 0.0)
    assert player.buffered == MAX_BUFFER_BYTES
    assert not player.pending  # positions only: no audio copied
    assert [w[:5] for w in player.warnings] == ["31931"]
    player.advance(1.0)
    assert player.segments[0].length == 8000 and player.heard == b""


# --- malformed output from the service ------------------------------------------------------


async def test_bad_outbound_frames_are_recorded_and_the_call_goes_on(svc: FakeService) -> None:
    async def script(peer: Peer) -> None:
        await peer.started()
        sid = peer.stream_sid
        await peer.send(b"\x00\x01")
        await peer.send("{not json")
        await peer.send(tm.mark_message("MZwrong", "x"))
        bad_media = {"event": "media", "streamSid": sid, "media": {"payload": "", "track": "x"}}
        await peer.send(orjson.dumps(bad_media).decode())
        await peer.send(tm.mark_message(sid, "ok"))
        await peer.echo_of("ok")
        await peer.ws.close(1000)

    svc.script = script
    # tail_ms=None: stream silence in real time until the service closes.
    result = await svc.caller().dial("+15550001000", realtime=False, tail_ms=None)

    codes = [e.split(":")[0] for e in result.outbound_errors]
    assert codes == ["31950", "31951", "31951", "31951"]
    assert "not JSON" in result.outbound_errors[1]
    assert "wrong streamSid" in result.outbound_errors[2]
    assert [m.name for m in result.marks] == ["ok"]
    assert (result.closed_by, result.close_code) == ("server", 1000)


# --- the caller's timeline -------------------------------------------------------------------


async def test_timeline_dtmf_pause_and_raw_frame(svc: FakeService) -> None:
    audio = b"".join(bytes([i]) * FRAME_BYTES for i in range(12))
    timeline = [SendRaw(200, "garbage"), SendDtmf(60, "5"), PauseStream(100, 60)]
    result = await svc.caller().dial(
        "+15550001000", audio=audio, timeline=timeline, realtime=False, tail_ms=0
    )
    items = svc.peers[0].items
    kinds = [
        f"media {m.timestamp}"
        if isinstance(m, tm.Media)
        else (f"dtmf {m.digit}" if isinstance(m, tm.Dtmf) else type(m).__name__)
        for m in (item.msg for item in items)
    ]
    assert kinds == [
        "Connected",
        "Start",
        *("media 0", "media 20", "media 40", "dtmf 5", "media 60", "media 80"),
        *("media 160", "media 180", "NoneType", "media 200", "media 220", "Stop"),
    ]
    assert items[kinds.index("NoneType")].raw == "garbage"
    parsed = [item.msg for item in items[1:] if item.msg is not None]
    assert [m.sequence for m in parsed] == list(range(1, len(parsed) + 1))
    media = svc.peers[0].of(tm.Media)
    assert [m.chunk for m in media] == list(range(1, 10))
    assert media[5].payload == bytes([8]) * FRAME_BYTES  # the gap's frames were lost
    assert result.sent_frames == 9


async def test_hang_up_action(svc: FakeService) -> None:
    result = await svc.caller().dial(
        "+15550001000", audio=silence(1000), timeline=[HangUp(100)], realtime=False
    )
    media = svc.peers[0].of(tm.Media)
    assert [m.timestamp for m in media] == [0, 20, 40, 60, 80]
    assert isinstance(svc.peers[0].items[-1].msg, tm.Stop)
    assert (result.closed_by, result.close_code) == ("caller", 1000)


async def test_hang_up_event_ends_an_open_ended_call(svc: FakeService) -> None:
    hangup = asyncio.Event()

    async def script(peer: Peer) -> None:  # hang up 150 ms into the stream (not the webhook)
        await peer.started()
        asyncio.get_running_loop().call_later(0.15, hangup.set)

    svc.script = script
    result = await svc.caller().dial("+15550001000", tail_ms=None, hangup=hangup)
    assert result.closed_by == "caller"
    assert 5 <= result.sent_frames <= 12


async def test_server_close_ends_the_call(svc: FakeService) -> None:
    async def script(peer: Peer) -> None:
        await peer.started()
        await peer.ws.close(1008, "bad token")

    svc.script = script
    began = asyncio.get_running_loop().time()
    result = await svc.caller().dial("+15550001000", audio=silence(5000))
    # Well short of the 5 s of audio it was given (a bound with room for a stalled CI host).
    assert asyncio.get_running_loop().time() - began < 2.5
    assert (result.close_code, result.close_reason, result.closed_by) == (
        1008,
        "bad token",
        "server",
    )
    assert not any(isinstance(item.msg, tm.Stop) for item in svc.peers[0].items)
