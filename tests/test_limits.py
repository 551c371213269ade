"""Bounds that protect the service: capacity, message size, stream pace, control floods, call
duration; and Twilio's status callbacks (signed, recorded once)."""

from __future__ import annotations

import asyncio
import contextlib
import xml.etree.ElementTree as ET

import pytest
from sqlalchemy import text
from websockets.exceptions import ConnectionClosed

from telephony.outcome import Outcome
from telephony.sim.twilio_rest import FakeTwilioRest
from telephony.store import transcripts as transcripts_module
from telephony.store.engine import make_engine
from telephony.store.queries import get_call
from telephony.twilio import messages as tm
from telephony.twilio.security import sign
from tests.conftest import AUTH_TOKEN, RunningApp, finished
from tests.test_routes_twilio import (
    call_params,
    closed_with,
    open_media,
    post_webhook,
    start_stream,
    stream_params,
)

pytestmark = pytest.mark.clock(8)  # timers run 8x real time (tests/fast_clock.py)

FRAME = b"\xff" * 160


def _busy(twiml: str) -> ET.Element:
    root = ET.fromstring(twiml)
    assert root.find("Connect") is None, twiml
    return root


async def test_capacity_turns_callers_away_politely(running_app: RunningApp) -> None:
    running_app.settings.max_calls = 2
    ws, b = await start_stream(running_app, "CA1")  # live
    answered = await post_webhook(running_app, call_params("CA2"))  # socket on its way
    assert ET.fromstring(answered.text).find("Connect") is not None
    busy = _busy((await post_webhook(running_app, call_params("CA3"))).text)
    assert "lines are busy" in (busy.find("Say").text or "")
    assert busy.find("Hangup") is not None
    assert ("CA3", "at capacity (2)") in running_app.app.state.services.registry.refused

    running_app.settings.overflow_redirect_url = "https://lb.example.com/twilio/voice"
    redirect = _busy((await post_webhook(running_app, call_params("CA4"))).text)
    assert redirect.find("Redirect").text == "https://lb.example.com/twilio/voice"

    await ws.send(b.stop())
    await closed_with(ws)
    await finished(running_app, "CA1")
    # CA2 never connected: its reservation lapses with the stream token's TTL.
    running_app.app.state.services.registry.reserved["CA2"] = asyncio.get_running_loop().time() - 1
    again = await post_webhook(running_app, call_params("CA5"))
    assert ET.fromstring(again.text).find("Connect") is not None


async def test_draining_instance_takes_no_new_calls(running_app: RunningApp) -> None:
    running_app.app.state.services.drain.draining = True
    busy = _busy((await post_webhook(running_app, call_params("CA6"))).text)
    assert busy.find("Say") is not None and busy.find("Hangup") is not None
    async with running_app.http() as client:
        assert (await client.get("/readyz")).status_code == 503


async def test_oversized_message_closes_only_that_call(running_app: RunningApp) -> None:
    good, gb = await start_stream(running_app, "CA7")
    bad, bb = await start_stream(running_app, "CA8")
    await bad.send(bb.media(b"\xff" * 60_000, 0))  # ~80 KB of JSON: over the 64 KiB bound
    code, _ = await closed_with(bad)
    assert code == 1009  # message too big
    for i in range(3):
        await good.send(gb.media(FRAME, i * 20))
    await good.send(gb.stop())
    assert (await closed_with(good))[0] == 1000
    assert (await finished(running_app, "CA7")).stats.media_frames == 3


async def test_audio_faster_than_real_time_is_cut_off(running_app: RunningApp) -> None:
    """A script pumping audio to burn Deepgram credit: 10 s of audio sent at once."""
    ws, b = await start_stream(running_app, "CA9")
    with contextlib.suppress(ConnectionClosed):  # the server may close mid-send
        for i in range(500):
            await ws.send(b.media(FRAME, i * 20))
    code, reason = await closed_with(ws)
    assert (code, reason) == (1008, "media faster than real time")
    summary = await finished(running_app, "CA9")
    assert (summary.end_reason, summary.end_detail) == ("error", "media faster than real time")
    assert summary.stats.media_frames < 200  # cut off within a few seconds of audio


async def test_real_time_audio_is_not_cut_off(running_app: RunningApp) -> None:
    """The pace check does not fire on a stream that runs at real time (here: 3 s)."""
    ws, b = await start_stream(running_app, "CA10")
    start = asyncio.get_running_loop().time()
    for i in range(150):
        await asyncio.sleep(max(0.0, start + i * 0.02 - asyncio.get_running_loop().time()))
        await ws.send(b.media(FRAME, i * 20))
    await ws.send(b.stop())
    assert (await closed_with(ws))[0] == 1000
    assert (await finished(running_app, "CA10")).end_reason == Outcome.CALLER_HANGUP


async def test_control_message_flood_is_cut_off(running_app: RunningApp) -> None:
    ws, b = await start_stream(running_app, "CA11")
    with contextlib.suppress(ConnectionClosed):
        for i in range(400):
            await ws.send(b.mark(f"m{i}"))
    assert await closed_with(ws) == (1008, "control message flood")
    summary = await finished(running_app, "CA11")
    assert (summary.end_reason, summary.end_detail) == ("error", "control message flood")


async def test_profile_time_limit_ends_the_call_with_a_goodbye(
    running_app: RunningApp, fake_rest: FakeTwilioRest
) -> None:
    running_app.yaml_path.write_text(
        running_app.yaml_path.read_text().replace(
            "    flux: {eot_timeout_ms: 1000}",
            "    flux: {eot_timeout_ms: 1000}\n    max_call_seconds: 1",
        )
    )
    assert running_app.app.state.services.config.reload()
    resp = await post_webhook(running_app, call_params("CA12", to="+15550002000"))
    _, params = stream_params(resp.text)
    ws = await open_media(running_app)
    b = tm.InboundBuilder("MZCA12", "CA12", "AC1", custom_parameters=params)
    await ws.send(b.connected())
    await ws.send(b.start())
    start = asyncio.get_running_loop().time()
    with contextlib.suppress(ConnectionClosed):  # closed by the server while we stream
        for i in range(200):
            await asyncio.sleep(max(0.0, start + i * 0.02 - asyncio.get_running_loop().time()))
            await ws.send(b.media(FRAME, i * 20))
    assert await closed_with(ws) == (1000, "max call duration")
    summary = await finished(running_app, "CA12")
    assert (summary.end_reason, summary.end_detail) == ("max-duration", "max call duration")
    assert 0.9 < asyncio.get_running_loop().time() - start < 3
    twiml = [r.form.get("Twiml", "") for r in fake_rest.requests if r.call_sid == "CA12"]
    goodbyes = [ET.fromstring(t) for t in twiml]
    assert any(
        [verb.tag for verb in root] == ["Say", "Hangup"]
        and "time limit" in root.findtext("Say", "")
        for root in goodbyes
    ), twiml
    assert [e.kind for e in summary.transcript.events].count("time-limit") == 1


# --- status callbacks ----------------------------------------------------------------------------


async def post_status(app: RunningApp, params: dict[str, str], signature: str | None = None):
    if signature is None:
        signature = sign(AUTH_TOKEN, app.url + "/twilio/status", params)
    async with app.http() as client:
        return await client.post(
            "/twilio/status", data=params, headers={"X-Twilio-Signature": signature}
        )


async def test_stream_twiml_asks_for_status_callbacks(running_app: RunningApp) -> None:
    resp = await post_webhook(running_app, call_params("CA13"))
    stream = ET.fromstring(resp.text).find("./Connect/Stream")
    assert stream is not None
    assert stream.get("statusCallback") == running_app.url + "/twilio/status"
    assert stream.get("statusCallbackMethod") == "POST"


async def test_status_callbacks_are_signed_and_recorded_once(
    running_app: RunningApp, database: str
) -> None:
    params = {
        "AccountSid": "AC1",
        "CallSid": "CA14",
        "StreamSid": "MZ14",
        "StreamEvent": "stream-error",
        "StreamError": "Stream - WebSocket - Connection Refused",
        "Timestamp": "2026-11-24T10:00:00Z",
    }
    store = running_app.app.state.services.transcripts
    store.call_started("CA14", profile="support")  # carried here
    assert (await post_status(running_app, params, signature="bm9wZQ==")).status_code == 403
    forged = {**params, "StreamEvent": "stream-stopped"}  # signature of the other params
    sig = sign(AUTH_TOKEN, running_app.url + "/twilio/status", params)
    assert (await post_status(running_app, forged, signature=sig)).status_code == 403
    assert (await post_status(running_app, params)).status_code == 204
    assert (await post_status(running_app, params)).status_code == 204  # Twilio's retry
    completed = {"AccountSid": "AC1", "CallSid": "CA14", "CallStatus": "completed"}
    assert (await post_status(running_app, {**completed, "CallDuration": "42"})).status_code == 204
    engine = make_engine(database)
    try:
        for _ in range(100):
            call = await get_call(engine, "CA14")
            if call and len(call["events"]) >= 2:
                break
            await asyncio.sleep(0.05)
    finally:
        await engine.dispose()
    assert call is not None
    kinds = [(e["kind"], e["ms"]) for e in call["events"]]
    assert kinds == [("stream-status", 0), ("call-status", 42_000)]
    assert call["events"][0]["data"]["StreamError"].startswith("Stream - WebSocket")


async def test_status_callback_for_a_call_never_carried_creates_no_row(
    running_app: RunningApp, database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 19: a signed callback for a CallSid we never carried used to create a live
    calls row (a stub for the event's foreign key) that showed as in progress for ever."""
    # Give up on it quickly (raising=False: the same test shows the old code's phantom row).
    monkeypatch.setattr(transcripts_module, "STATUS_WAIT_S", 0.5, raising=False)
    store = running_app.app.state.services.transcripts
    ghost = {"AccountSid": "AC1", "CallSid": "CAghost", "CallStatus": "completed"}
    assert (await post_status(running_app, {**ghost, "CallDuration": "7"})).status_code == 204
    assert (await post_status(running_app, {**ghost, "CallDuration": "7"})).status_code == 204
    engine = make_engine(database)
    try:
        for _ in range(300):  # until it is given up on, or (the bug) written with a row
            if getattr(store, "unknown_status", 0) or await get_call(engine, "CAghost"):
                break
            await asyncio.sleep(0.01)
        assert await get_call(engine, "CAghost") is None
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT count(*) FROM calls"))).scalar() == 0
    finally:
        await engine.dispose()
    assert store.unknown_status == 1  # counted (the retry was dropped as a duplicate)
