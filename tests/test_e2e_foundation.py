"""End to end: the fake Twilio caller dials the real app under uvicorn on loopback."""

from __future__ import annotations

import asyncio

import pytest

from telephony.sim.deepgram_server import FakeDeepgram, Script, ScriptedTurn
from telephony.sim.twilio_caller import FakeTwilioCaller, HangUp, SendDtmf, SendRaw, StreamFormat
from telephony.sim.twilio_caller import silence as silence_ms
from tests.conftest import AUTH_TOKEN, NUMBERS_YAML, RunningApp, finished

pytestmark = pytest.mark.clock(4)  # timers run 4x real time (tests/fast_clock.py)


def caller(app: RunningApp) -> FakeTwilioCaller:
    return FakeTwilioCaller(app.url, auth_token=AUTH_TOKEN)


async def test_fake_caller_call_is_accepted_and_streamed(running_app: RunningApp) -> None:
    result = await caller(running_app).dial(
        "+15550001000",
        call_sid="CAe2e1",
        audio=silence_ms(400),
        timeline=[SendDtmf(200, "4"), HangUp(600)],
        realtime=False,
        tail_ms=None,
    )
    assert result.http_status == 200
    assert result.parameters["profile"] == "support"
    assert result.close_code == 1000, (result.close_code, result.close_reason, result.events)
    summary = await finished(running_app, "CAe2e1")
    assert summary is not None and summary.end_reason == "caller-hangup"
    assert summary.stats.media_frames == result.sent_frames == 30
    assert summary.stats.dtmf == [(200, "4")]
    assert summary.stats.bad_frames == 0


async def test_refusals_carry_a_clear_reason(running_app: RunningApp) -> None:
    dial = caller(running_app).dial
    bad_webhook = await dial("+15550001000", sign="bm9wZQ==")
    assert bad_webhook.http_status == 403
    bad_upgrade = await dial("+15550001000", ws_sign="bm9wZQ==")
    assert bad_upgrade.ws_status == 403
    forged = await dial("+15550001000", parameter_overrides={"call_token": "v1.9.x.y"})
    assert (forged.close_code, forged.close_reason) == (
        1008,
        "stream token does not match this call",
    )
    wrong = await dial("+15550001000", stream_format=StreamFormat(sample_rate=16000))
    assert wrong.close_code == 1008 and "unsupported media format" in wrong.close_reason
    unknown = await dial("+15559999999")
    assert unknown.hung_up and unknown.said


async def test_one_bad_caller_among_good_ones(running_app: RunningApp) -> None:
    flood = [SendRaw(100 + i, "{garbage") for i in range(10)]
    good = [
        caller(running_app).dial(
            "+15550001000", audio=silence_ms(300), timeline=[HangUp(400)], realtime=False
        )
        for _ in range(5)
    ]
    bad = caller(running_app).dial(
        "+15550001000", audio=silence_ms(300), timeline=[*flood, HangUp(400)], realtime=False
    )
    results = await asyncio.gather(bad, *good)
    assert (results[0].close_code, results[0].close_reason) == (1008, "too many malformed frames")
    assert all(r.close_code == 1000 for r in results[1:]), [r.close_reason for r in results]


async def test_hot_reload_new_calls_new_config_live_calls_keep_theirs(
    running_app: RunningApp,
) -> None:
    store = running_app.app.state.services.config
    version = store.version
    live = asyncio.create_task(
        caller(running_app).dial(
            "+15550001000", call_sid="CAlive", audio=silence_ms(3000), realtime=True, tail_ms=0
        )
    )
    for _ in range(200):
        if "CAlive" in running_app.app.state.services.registry.live:
            break
        await asyncio.sleep(0.01)
    live_call = running_app.app.state.services.registry.live["CAlive"]
    old_profile = live_call.profile
    running_app.yaml_path.write_text(
        NUMBERS_YAML.replace('"+15550001000": support', '"+15550001000": sales')
    )
    for _ in range(500):
        if store.version > version:
            break
        await asyncio.sleep(0.01)
    assert store.version > version, "the watcher did not pick up the change"
    after = await caller(running_app).dial(
        "+15550001000", audio=silence_ms(100), timeline=[HangUp(200)], realtime=False
    )
    assert after.parameters["profile"] == "sales"
    assert live_call.profile is old_profile  # the live call kept its configuration
    running_app.yaml_path.write_text("numbers: [broken")
    store.reload()
    assert store.last_error and store.version > version
    assert store.current.numbers["+15550001000"] == "sales"  # previous config kept
    live.cancel()


async def test_a_call_lands_in_the_transcript_store(running_app: RunningApp) -> None:
    await caller(running_app).dial(
        "+15550001000",
        call_sid="CAstored",
        audio=silence_ms(300),
        timeline=[SendDtmf(100, "9"), HangUp(400)],
        realtime=False,
    )
    await finished(running_app, "CAstored")
    store = running_app.app.state.services.transcripts
    stored = None
    for _ in range(300):  # write-behind: committed within about a second
        stored = await store.get_call("CAstored")
        if stored and stored.get("ended_at") and stored["events"]:
            break
        await asyncio.sleep(0.01)
    assert stored is not None and stored["profile"] == "support" and stored["mode"] == "flux"
    assert (stored["end_reason"], stored["end_detail"]) == ("caller-hangup", "stop")
    assert sorted(e["kind"] for e in stored["events"]) == [
        "dtmf",
        "flux-connection",
        "speak-connection",
    ]


async def test_card_numbers_never_reach_the_store(
    running_app: RunningApp, fake_deepgram: FakeDeepgram
) -> None:
    said = "my card is four one one one one one one one one one one one one one one one"
    fake_deepgram.set_script(None, Script(turns=[ScriptedTurn(300, 1200, said)]))
    await caller(running_app).dial(
        "+15550001000", call_sid="CApii", audio=silence_ms(3000), timeline=[HangUp(3000)]
    )
    await finished(running_app, "CApii")
    store = running_app.app.state.services.transcripts
    stored = None
    for _ in range(300):
        stored = await store.get_call("CApii")
        if stored and any(t["role"] == "caller" for t in stored["turns"]):
            break
        await asyncio.sleep(0.01)
    caller_turn = next(t for t in stored["turns"] if t["role"] == "caller")
    assert caller_turn["text"] == "my card is [REDACTED:card]"
    assert caller_turn["meta"]["redacted"][0][2] == "card"
