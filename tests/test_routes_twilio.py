"""The webhook and the media socket, through real uvicorn on loopback."""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from telephony.twilio import messages as tm
from telephony.twilio.security import sign
from tests.conftest import AUTH_TOKEN, RunningApp, finished

pytestmark = pytest.mark.clock(4)  # timers run 4x real time (tests/fast_clock.py)


async def post_webhook(app: RunningApp, params: dict[str, str], signature: str | None = None):
    if signature is None:
        signature = sign(AUTH_TOKEN, app.url + "/twilio/voice", params)
    async with app.http() as client:
        return await client.post(
            "/twilio/voice", data=params, headers={"X-Twilio-Signature": signature}
        )


def call_params(call_sid: str = "CA1", to: str = "+15550001000", frm: str = "+15557654321"):
    return {
        "CallSid": call_sid,
        "AccountSid": "AC1",
        "From": frm,
        "To": to,
        "CallStatus": "ringing",
    }


def stream_params(twiml: str) -> tuple[str, dict[str, str]]:
    root = ET.fromstring(twiml)
    stream = root.find("./Connect/Stream")
    assert stream is not None, twiml
    params = {p.get("name"): p.get("value") for p in stream.findall("Parameter")}
    return stream.get("url"), params  # type: ignore[return-value]


async def open_media(app: RunningApp, signature: str | None = None) -> ClientConnection:
    if signature is None:
        signature = sign(AUTH_TOKEN, app.ws_url, {})
    return await connect(app.ws_url, additional_headers={"X-Twilio-Signature": signature})


async def start_stream(app: RunningApp, call_sid: str = "CA1", **start_kw):
    resp = await post_webhook(app, call_params(call_sid))
    _, params = stream_params(resp.text)
    ws = await open_media(app)
    b = tm.InboundBuilder("MZ" + call_sid, call_sid, "AC1", custom_parameters=params)
    await ws.send(b.connected())
    await ws.send(b.start(**start_kw))
    return ws, b


async def closed_with(ws: ClientConnection) -> tuple[int | None, str]:
    with pytest.raises(ConnectionClosed):
        for _ in range(200):
            await asyncio.wait_for(ws.recv(), 5)
    assert ws.close_code is not None
    return ws.close_code, ws.close_reason or ""


async def test_healthz(running_app: RunningApp) -> None:
    async with running_app.http() as client:
        resp = await client.get("/healthz")
    assert resp.status_code == 200
    assert resp.json()["status"] == "ok"


async def test_webhook_returns_connect_stream_with_escaped_parameters(
    running_app: RunningApp,
) -> None:
    nasty = '+1555 & <"x">'
    resp = await post_webhook(running_app, call_params(frm=nasty))
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/xml")
    url, params = stream_params(resp.text)
    assert url == running_app.ws_url and "?" not in url  # Twilio drops query strings
    assert params["profile"] == "support"
    assert params["from"] == nasty  # survived XML escaping intact
    assert params["to"] == "+15550001000"
    assert params["call_token"].startswith("v1.")


async def test_webhook_strips_control_characters_from_the_caller_id(
    running_app: RunningApp,
) -> None:
    # From is whatever the caller's network presents; XML cannot carry a NUL or an escape.
    resp = await post_webhook(running_app, call_params(frm="+1555\x00\x1b[31m\x7f0001\n"))
    assert resp.status_code == 200
    _, params = stream_params(resp.text)  # parses: the document is well-formed
    assert params["from"] == "+1555[31m0001"


@pytest.mark.parametrize("signature", ["", "bm9wZQ=="])
async def test_webhook_refuses_bad_signature(running_app: RunningApp, signature: str) -> None:
    resp = await post_webhook(running_app, call_params(), signature=signature)
    assert resp.status_code == 403


async def test_webhook_signature_covers_every_param(running_app: RunningApp) -> None:
    params = call_params()
    signature = sign(AUTH_TOKEN, running_app.url + "/twilio/voice", params)
    resp = await post_webhook(running_app, {**params, "To": "+15550002000"}, signature)
    assert resp.status_code == 403


async def test_unknown_number_is_refused_politely(running_app: RunningApp) -> None:
    resp = await post_webhook(running_app, call_params(to="+15559999999"))
    root = ET.fromstring(resp.text)
    assert root.find("Say") is not None and root.find("Say").text
    assert root.find("Hangup") is not None
    assert root.find("Connect") is None


async def test_media_upgrade_refused_without_signature(running_app: RunningApp) -> None:
    with pytest.raises(InvalidStatus) as info:
        await open_media(running_app, signature="bad")
    assert info.value.response.status_code == 403


async def test_stream_accepted_and_accounted(running_app: RunningApp) -> None:
    ws, b = await start_stream(running_app, "CA10")
    for i in range(25):
        await ws.send(b.media(b"\xff" * 160, i * 20))
    await ws.send(b.dtmf("7"))
    await ws.send(b.stop())
    code, reason = await closed_with(ws)
    assert (code, reason) == (1000, "stream stopped")
    summary = await finished(running_app, "CA10")
    assert (summary.end_reason, summary.end_detail) == ("caller-hangup", "stop")
    assert summary.profile == "support"
    assert summary.stats.media_frames == 25
    assert summary.stats.audio_bytes == 25 * 160
    assert summary.stats.audio_end_ms == 500
    assert summary.stats.dtmf == [(500, "7")]
    assert (summary.stats.sequence_gaps, summary.stats.timestamp_gap_ms) == (0, 0)


async def test_sequence_and_timestamp_gaps_are_tracked(running_app: RunningApp) -> None:
    ws, b = await start_stream(running_app, "CA11")
    await ws.send(b.media(b"\xff" * 160, 0))
    b.sequence += 3  # three messages lost upstream
    await ws.send(b.media(b"\xff" * 160, 100))  # 80 ms of audio missing
    await ws.send(b.stop())
    await closed_with(ws)
    stats = (await finished(running_app, "CA11")).stats
    assert stats.sequence_gaps == 3
    assert stats.timestamp_gap_ms == 80


async def test_replayed_token_is_refused(running_app: RunningApp) -> None:
    resp = await post_webhook(running_app, call_params("CA12"))
    _, params = stream_params(resp.text)
    first = await open_media(running_app)
    b = tm.InboundBuilder("MZ12", "CA12", "AC1", custom_parameters=params)
    await first.send(b.connected())
    await first.send(b.start())
    second = await open_media(running_app)
    await second.send(b.connected())
    await second.send(b.start())
    assert await closed_with(second) == (1008, "stream token already used")
    await first.send(b.stop())
    assert (await closed_with(first))[0] == 1000


async def test_token_for_another_call_is_refused(running_app: RunningApp) -> None:
    resp = await post_webhook(running_app, call_params("CA13"))
    _, params = stream_params(resp.text)
    ws = await open_media(running_app)
    b = tm.InboundBuilder("MZ14", "CA14", "AC1", custom_parameters=params)
    await ws.send(b.connected())
    await ws.send(b.start())
    assert await closed_with(ws) == (1008, "stream token does not match this call")


async def test_expired_token_is_refused(running_app: RunningApp) -> None:
    running_app.app.state.services.tokens.ttl_s = -1  # tokens minted now are already expired
    ws, _ = await start_stream(running_app, "CA15")
    assert await closed_with(ws) == (1008, "stream token expired")


async def test_missing_token_is_refused(running_app: RunningApp) -> None:
    ws = await open_media(running_app)
    b = tm.InboundBuilder("MZ16", "CA16", "AC1", custom_parameters={"profile": "support"})
    await ws.send(b.connected())
    await ws.send(b.start())
    assert await closed_with(ws) == (1008, "malformed stream token")


async def test_wrong_media_format_is_refused(running_app: RunningApp) -> None:
    ws, _ = await start_stream(running_app, "CA17", sample_rate=16000)
    code, reason = await closed_with(ws)
    assert code == 1008
    assert reason == "unsupported media format audio/x-mulaw 16000 Hz x1"


async def test_media_before_start_is_refused(running_app: RunningApp) -> None:
    ws = await open_media(running_app)
    b = tm.InboundBuilder("MZ18", "CA18", "AC1")
    await ws.send(b.connected())
    await ws.send(b.media(b"\xff" * 160, 0))
    assert await closed_with(ws) == (1008, "expected start, got media")


async def test_malformed_frames_are_skipped_then_a_flood_closes_only_that_call(
    running_app: RunningApp,
) -> None:
    good, gb = await start_stream(running_app, "CA20")
    bad, bb = await start_stream(running_app, "CA21")
    await bad.send(bb.media(b"\xff" * 160, 0))
    await bad.send("{not json")
    await bad.send(b"\x00binary")
    await bad.send('{"event":"media","sequenceNumber":"x"}')
    await bad.send(bb.media(b"\xff" * 160, 20))  # still accepted after bad frames
    for _ in range(5):  # limit is 5 within the window: the 6th bad frame ends the call
        await bad.send('{"event":"nonsense"}')
    assert await closed_with(bad) == (1008, "too many malformed frames")
    for i in range(5):
        await good.send(gb.media(b"\xff" * 160, i * 20))
    await good.send(gb.stop())
    assert (await closed_with(good))[0] == 1000
    assert (await finished(running_app, "CA21")).stats.media_frames == 2
    assert (await finished(running_app, "CA21")).stats.bad_frames == 6  # 3 + 3, then closed
    bad_end = await finished(running_app, "CA21")
    assert (bad_end.end_reason, bad_end.end_detail) == ("error", "too many malformed frames")
    assert (await finished(running_app, "CA20")).stats.media_frames == 5
    assert (await finished(running_app, "CA20")).stats.bad_frames == 0


async def test_wrong_stream_sid_counts_as_malformed(running_app: RunningApp) -> None:
    ws, b = await start_stream(running_app, "CA22")
    other = tm.InboundBuilder("MZother", "CA22", "AC1")
    other.sequence = b.sequence
    await ws.send(other.media(b"\xff" * 160, 0))
    await ws.send(b.stop())
    await closed_with(ws)
    stats = (await finished(running_app, "CA22")).stats
    assert (stats.bad_frames, stats.media_frames) == (1, 0)


async def test_send_many_is_one_write_through_uvicorn_and_refused_once_the_peer_left() -> None:
    """Under uvicorn's websockets-sansio protocol (what `telephony serve` runs) a playout wake's
    messages go out in one transport write, in order; after the caller hangs up they are
    refused the way a single send is."""
    from starlette.websockets import WebSocket, WebSocketDisconnect

    from routes.sansio import UVICORN_WS
    from routes.twilio import StarletteTwilioSocket
    from telephony.inprocess import InProcessServer, bind_loopback

    outcome: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    writes: list[bytes] = []
    writes_for_three: list[int] = []

    async def app(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        ws = WebSocket(scope, receive, send)
        await ws.accept()
        socket = StarletteTwilioSocket(ws)
        assert socket._write_many is not None, "uvicorn's sans-I/O protocol not recognised"
        transport = send.__self__.transport
        real_write = transport.write
        transport.write = lambda data: (writes.append(data), real_write(data))[1]
        await socket.send_many(["one", "two", "three"])
        writes_for_three.append(len(writes))
        assert await socket.receive() is None  # the client closes
        try:
            await socket.send_many(["late"])
        except WebSocketDisconnect:
            outcome.set_result("refused")
        else:
            outcome.set_result("sent after close")

    sock = bind_loopback()
    async with InProcessServer(app, sock, **UVICORN_WS):
        async with connect(f"ws://127.0.0.1:{sock.getsockname()[1]}/") as client:
            assert [await client.recv() for _ in range(3)] == ["one", "two", "three"]
        assert await asyncio.wait_for(outcome, 5) == "refused"
    assert writes_for_three == [1]  # the three messages: one write
