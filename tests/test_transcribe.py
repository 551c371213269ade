"""Transcribe mode: people talk, Nova (/v1/listen) transcribes both sides; and the transcription
that continues after a Flux bot transfers a call to a person.

Client-level tests drive `ListenClient` against the fake /v1/listen (which enforces Nova's
rules: an empty binary frame closes, 10 s without audio or a text message closes NET-0001).
End-to-end tests go through the real app with the fake Twilio caller streaming both tracks:
`inbound` is the caller, `outbound` what the caller hears (the staff member). Nova sockets are
tagged with the call SID and the side, so each side gets its own fake script
(`<sid>:caller`, `<sid>:staff`); script times are that socket's own audio time.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import subprocess
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import InvalidStatus

from telephony.config import Config, TranscribeConfig, load_config
from telephony.deepgram import messages as dm
from telephony.deepgram.clock import AudioMap
from telephony.deepgram.connection import NOVA_KEEPALIVE, open_socket
from telephony.deepgram.listen import ListenClient, ListenOptions
from telephony.session.deepgram_options import listen_options
from telephony.session.summary import CallSummary
from telephony.session.transcribe_engine import TrackTranscriber
from telephony.sim.deepgram_server import (
    AgentStep,
    FakeDeepgram,
    Script,
    ScriptedFunctionCall,
    ScriptedTurn,
)
from telephony.sim.twilio_caller import CallResult, FakeTwilioCaller, HangUp, PauseStream, silence
from telephony.sim.twilio_rest import FakeTwilioRest
from telephony.store.queries import get_call
from telephony.twilio.security import sign
from tests import fast_clock
from tests.conftest import AUTH_TOKEN, DEEPGRAM_KEY, RunningApp, finished
from tests.offline_context import offline_context
from tests.staff_helpers import STAFF, add_accounts, login
from tests.test_call_memory import CallWatch

pytestmark = pytest.mark.clock(8)  # timers run 8x real time (tests/fast_clock.py)

DESK, QUEUE_DESK, BOT, SHORT = "+15550005000", "+15550006000", "+15550007000", "+15550008000"
AGENT_BOT = "+15550007001"
AGENT_NUMBER, TRANSFER_NUMBER = "+15550009002", "+15557770000"
TOLERANCE_MS = 20  # one Twilio frame

NUMBERS = f"""\
numbers:
  "{DESK}": desk
  "{QUEUE_DESK}": queue-desk
  "{BOT}": bot
  "{SHORT}": short-desk
  "{AGENT_BOT}": agent-bot
profiles:
  desk:
    mode: transcribe
    transcribe:
      dial: "{AGENT_NUMBER}"
      keyterms: [Acme]
      redact: [pci]
      tags: [desk]
  queue-desk:
    mode: transcribe
    transcribe: {{queue: support}}
  short-desk:
    mode: transcribe
    transcribe: {{dial: "{AGENT_NUMBER}"}}
    max_call_seconds: 1
  bot:
    mode: flux
    greeting: "Hi."
    transfer_number: "{TRANSFER_NUMBER}"
    transcribe_after_transfer: true
    responder:
      type: scripted
      rules: [{{pattern: "human", reply: "Transferring you now.", action: transfer}}]
      fallback: "Sorry?"
  agent-bot:
    mode: agent
    greeting: "Hi."
    transfer_number: "{TRANSFER_NUMBER}"
    transcribe_after_transfer: true
    agent: {{think_prompt: "Test."}}
"""


@pytest.fixture
def numbers_yaml(tmp_path: Path) -> Path:  # overrides conftest's: the app serves these
    path = tmp_path / "numbers.yaml"
    path.write_text(NUMBERS)
    return path


def load_config_text(text: str) -> Config:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "numbers.yaml"
        path.write_text(text)
        return load_config(path)


def script(*turns: tuple[int, int, str]) -> Script:
    return Script(turns=[ScriptedTurn(start, end, text) for start, end, text in turns])


async def stored(app: RunningApp, sid: str, *, turns: int, within_s: float = 5.0) -> dict:
    """The call as the store has it, once it has ended and holds `turns` turns."""
    call = None
    async with asyncio.timeout(within_s):
        while True:
            call = await get_call(app.app.state.services.db, sid)
            if call and call["ended_at"] is not None and len(call["turns"]) >= turns:
                return call
            await asyncio.sleep(0.05)


def near(actual: int, expected: int) -> bool:
    return abs(actual - expected) <= TOLERANCE_MS


# --- the Nova client against the fake /v1/listen ------------------------------------------


def test_audio_map_follows_unfilled_gaps() -> None:
    m = AudioMap()
    m.note(0, 1000)  # the connection's first byte is call time 1000
    m.note(3000, 21000)  # 3 s later on the socket, the call jumped 18 s (a paused stream)
    assert m.to_call_ms(0.5) == 1500
    assert m.to_call_ms(3.0) == 4000  # a word ending on the jump ends before it
    assert m.to_call_ms(3.5) == 21500


def test_audio_map_is_bounded_whatever_the_timestamps() -> None:
    """Issue 21: timestamps that step back on every frame made a breakpoint per frame, for as
    long as the call lasted. The map keeps at most MAX_BREAKPOINTS; the newest maps right."""
    from telephony.deepgram.clock import MAX_BREAKPOINTS

    m = AudioMap()
    for i in range(MAX_BREAKPOINTS + 5000):
        m.note(i * 20, 1_000_000 - i * 20)  # every 20 ms frame stamped 20 ms before the last
    assert len(m.conn_ms) == len(m.call_ms) == MAX_BREAKPOINTS
    last = MAX_BREAKPOINTS + 4999
    assert m.to_call_ms(last * 0.02 + 0.01) == 1_000_000 - last * 20 + 10
    assert m.to_call_ms(0.01) == 1_000_010  # the early audio still maps as it did


async def test_listen_socket_carries_the_profile_options() -> None:
    cfg = TranscribeConfig(
        dial="+15550009002",
        language="en-US",
        endpointing=250,
        diarize=True,
        numerals=True,
        profanity_filter=True,
        redact=["pci", "ssn"],
        keyterms=["Acme", "Roadrunner"],
        tags=["desk"],
    )
    options = listen_options(cfg)
    async with FakeDeepgram(api_key=DEEPGRAM_KEY) as fake:
        client = ListenClient(fake.url, DEEPGRAM_KEY, options)
        await client.connect()  # the fake refuses (HTTP 400) any parameter Nova does not know
        await client.finish()
        log = fake.logs("listen")[0]
        await log.wait_closed()
    q = {k: v if len(v) > 1 else v[0] for k, v in log.query.items()}
    assert q == {
        "model": "nova-3",
        "encoding": "mulaw",
        "sample_rate": "8000",
        "language": "en-US",
        "interim_results": "true",
        "endpointing": "250",
        "utterance_end_ms": "1000",
        "vad_events": "true",
        "smart_format": "true",
        "punctuate": "true",
        "diarize": "true",
        "numerals": "true",
        "profanity_filter": "true",
        "redact": ["pci", "ssn"],
        "keyterm": ["Acme", "Roadrunner"],
        "tag": "desk",
    }
    assert not log.violations


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ("model=nova-3&keywords=Acme", "keywords is not supported on nova-3"),
        ("model=nova-3&smart_format=yes", "smart_format must be true or false"),
        ("model=nova-2&keyterm=Acme", "keyterm needs a nova-3 model"),
    ],
)
async def test_fake_listen_refuses_what_nova_refuses(query: str, reason: str) -> None:
    async with FakeDeepgram(api_key=DEEPGRAM_KEY) as fake:
        with pytest.raises(InvalidStatus) as info:
            await open_socket(f"{fake.url}/v1/listen?{query}", DEEPGRAM_KEY)
        assert info.value.response.status_code == 400
        assert reason in fake.rejections[0].reason


async def test_fake_listen_picks_a_script_per_call_and_side() -> None:
    """Tags `<sid>`, `<side>`: the script of `<sid>:<side>` first, then of each tag."""
    async with FakeDeepgram(api_key=DEEPGRAM_KEY) as fake:
        fake.set_script("CA1:staff", script((100, 500, "staff words")))
        fake.set_script("caller", script((100, 500, "caller words")))
        for side in ("staff", "caller"):
            options = ListenOptions(interim_results=False, tags=("CA1", side))
            client = ListenClient(fake.url, DEEPGRAM_KEY, options)
            await client.connect()
            events: list = []
            reader = asyncio.create_task(consume(client, events))
            for i in range(40):
                client.send_audio(i * 20, b"\xff" * 160)
            await client.finish()
            await asyncio.wait_for(reader, 5)
            texts = [e.transcript for e in events if isinstance(e, dm.Results) and e.transcript]
            assert texts == [f"{side} words"]
        assert [log.tag for log in fake.logs("listen")] == ["CA1:staff", "caller"]


async def consume(client: ListenClient, into: list) -> None:
    with contextlib.suppress(Exception):
        async for event in client.events():
            into.append(event)


@pytest.mark.parametrize("closing", ["finalize", "socket closed at hang-up"])
async def test_last_words_after_hang_up_need_finalize(closing: str) -> None:
    """The caller is mid-sentence when the call ends. Finalize (then CloseStream) gets the
    words heard so far as a final; a client that just closes its socket loses them."""
    turn = script((200, 3200, "one two three four five six"))
    async with FakeDeepgram(api_key=DEEPGRAM_KEY, script=turn) as fake:
        client = ListenClient(fake.url, DEEPGRAM_KEY, ListenOptions(interim_results=False))
        await client.connect()
        events: list = []
        reader = asyncio.create_task(consume(client, events))
        for i in range(75):  # 1.5 s of audio: "one two three" have started
            client.send_audio(i * 20, b"\xff" * 160)
        if closing == "finalize":
            await client.finish()
        else:
            await client.abort()
        await asyncio.wait_for(reader, 5)
        log = fake.logs("listen")[0]
        await log.wait_closed()
    finals = [e for e in events if isinstance(e, dm.Results) and e.is_final and e.transcript]
    if closing == "socket closed at hang-up":
        assert finals == []  # the counterfactual: these words are lost
        return
    assert [(f.transcript, f.from_finalize) for f in finals] == [("one two three", True)]
    kinds = log.received_kinds()
    assert kinds.index("json:Finalize") < kinds.index("json:CloseStream")
    assert kinds[-2:] == ["json:Finalize", "json:CloseStream"]
    assert "audio" in kinds and all(size > 0 for _, k, size in log.received if k == "audio")
    assert log.close_code == 1000 and client.metadata is not None  # Metadata, then the close
    assert not log.violations


async def test_a_side_that_never_spoke_closes_cleanly() -> None:
    """No audio ever on one side (nobody answered yet): Finalize's empty answer is no turn and
    no error, and the socket still ends with CloseStream."""
    ctx = offline_context(load_config_text(NUMBERS), "desk")
    transcript = ctx.transcript
    async with FakeDeepgram(api_key=DEEPGRAM_KEY) as fake:
        track = TrackTranscriber(
            ctx, "staff", lambda: ListenClient(fake.url, DEEPGRAM_KEY, ListenOptions())
        )
        runner = asyncio.create_task(track.run())
        await fake.wait_for_connection("listen")
        while track.link.connections == 0:  # noqa: ASYNC110 - polling the track's own state
            await asyncio.sleep(0.01)
        await track.close()
        await asyncio.wait_for(runner, 5)  # no exception
        log = fake.logs("listen")[0]
        await log.wait_closed()
    assert transcript.turns == [] and track.failed is None
    assert log.received_kinds() == ["json:Finalize", "json:CloseStream"]
    assert log.close_code == 1000 and not log.violations


# --- end to end: a two-party call -----------------------------------------------------------


async def two_party_call(
    app: RunningApp,
    fake: FakeDeepgram,
    sid: str,
    caller: Script,
    staff: Script,
    *,
    audio_ms: int,
    timeline: list[Any] | None = None,
    during: Callable[[], Any] | None = None,
) -> CallResult:
    fake.set_script(f"{sid}:caller", caller)
    fake.set_script(f"{sid}:staff", staff)
    async with app.http() as http:
        dialer = FakeTwilioCaller(app.url, auth_token=AUTH_TOKEN, http=http)
        dial = dialer.dial(
            DESK,
            call_sid=sid,
            audio=silence(audio_ms),
            agent_audio=silence(audio_ms),
            tail_ms=0,
            timeline=timeline or [],
        )
        if during is None:
            return await dial
        watcher = asyncio.create_task(during())
        try:
            return await dial
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher


async def test_both_sides_transcribed_with_roles_on_the_call_clock(
    running_app: RunningApp, fake_deepgram: FakeDeepgram, database: str
) -> None:
    sid = "CA" + "7" * 32
    caller = script(
        (800, 2000, "Hi I'd like to pay my bill"), (4200, 5400, "my card is 4111 1111 1111 1111")
    )
    staff = script(
        (2400, 3800, "Sure which card would you like to use"), (5800, 6800, "Thanks that's done")
    )
    await add_accounts(database)
    live_views: list[str] = []
    interims: list[dict[str, str]] = []

    async def watch() -> None:
        """While the call is live: the engine's interim text, and the staff page showing it."""
        while True:
            call = running_app.app.state.services.registry.live.get(sid)
            if call is not None and call.engine.interim:
                interims.append(dict(call.engine.interim))
                page = await http.get(f"/calls/{sid}/timeline")
                if "(speaking…)" in page.text:
                    live_views.append(page.text)
            await asyncio.sleep(0.03)

    async with running_app.http() as http:
        # Logged in before the call: a login (a scrypt run on a thread) on a loaded machine
        # once outlasted the whole call on its 4x clock, and nothing live was seen.
        await login(http, STAFF[0], STAFF[2])
        result = await two_party_call(
            running_app, fake_deepgram, sid, caller, staff, audio_ms=7600, during=watch
        )
    assert result.fork and result.track == "both_tracks" and result.dialled == [AGENT_NUMBER]
    assert result.outbound_errors == []  # nothing was sent down the one-way stream
    summary = await finished(running_app, sid)
    assert summary.end_reason == "caller-hangup" and summary.stats.outbound_frames > 300
    turns = sorted(summary.transcript.turns, key=lambda t: t.start_ms)
    assert [(t.role, t.text) for t in turns] == [
        ("caller", "Hi I'd like to pay my bill"),
        ("staff", "Sure which card would you like to use"),
        ("caller", "my card is 4111 1111 1111 1111"),
        ("staff", "Thanks that's done"),
    ]
    expected = [(800, 2000), (2400, 3800), (4200, 5400), (5800, 6800)]
    times = [(t.start_ms, t.end_ms) for t in turns]
    assert all(near(a, s) and near(b, e) for (a, b), (s, e) in zip(times, expected, strict=True))
    assert {t.meta["trigger"] for t in turns} == {"speech_final"}

    # The store: the same schema and redaction path as the other modes; finals only.
    call = await stored(running_app, sid, turns=4)
    assert call["mode"] == "transcribe" and call["profile"] == "desk"
    rows = sorted(call["turns"], key=lambda t: t["start_ms"])
    assert [r["role"] for r in rows] == ["caller", "staff", "caller", "staff"]
    assert rows[2]["text"] == "my card is [REDACTED:card]"
    assert sorted(r["idx"] for r in rows) == [0, 1, 2, 3]

    # Interim results reached the live view (and the staff page) but only finals are stored:
    # one row per turn, none of them a partial sentence.
    finals = [t.text for t in turns]
    logs = {log.tag: log for log in fake_deepgram.logs("listen")}
    partial_results = set()
    for side in ("caller", "staff"):
        log = logs[f"{sid}:{side}"]
        assert log.query["tag"] == [sid, side, "desk"]
        assert not log.violations
        interim = [r.transcript for r in log.sent_messages(dm.Results) if not r.is_final]
        assert len(interim) >= 8  # every 250 ms of speech
        partial_results |= {text for text in interim if text not in finals}
    assert partial_results
    assert not partial_results & {t.text for t in summary.transcript.turns}
    seen_live = {text for seen in interims for text in seen.values()}
    assert any(p != f and f.startswith(p) for p in seen_live for f in finals), seen_live
    assert live_views, "the staff timeline never showed the live (speaking…) row"


async def test_queue_target_and_webhook_twiml(running_app: RunningApp) -> None:
    async with running_app.http() as http:
        for number, target in ((DESK, AGENT_NUMBER), (QUEUE_DESK, "queue:support")):
            caller = FakeTwilioCaller(running_app.url, auth_token=AUTH_TOKEN, http=http)
            # One CallSid per call: a repeat of a CallSid gets the first answer (the same token).
            sid = "CA" + number[-4:]
            form = caller.webhook_params(CallResult(sid, "MZ" + sid, number, "+15557654321"), {})
            signature = sign(AUTH_TOKEN, running_app.url + "/twilio/voice", form)
            resp = await http.post(
                "/twilio/voice", data=form, headers={"X-Twilio-Signature": signature}
            )
            root = ET.fromstring(resp.text)
            assert [child.tag for child in root] == ["Start", "Dial"]  # fork first, then dial
            stream = root.find("./Start/Stream")
            assert stream is not None and stream.get("track") == "both_tracks"
            assert stream.get("url") == running_app.ws_url  # no query string
            params = {p.get("name"): p.get("value") for p in stream.findall("Parameter")}
            assert params["call_token"].startswith("v1.") and params["to"] == number
            dial = root.find("./Dial")
            assert dial is not None
            queue = dial.find("Queue")
            got = f"queue:{queue.text}" if queue is not None else dial.text
            assert got == target


@pytest.mark.parametrize("closing", ["finalize", "no Finalize: socket closed at hang-up"])
async def test_caller_hangs_up_mid_sentence_and_the_last_words_are_kept(
    running_app: RunningApp,
    fake_deepgram: FakeDeepgram,
    monkeypatch: pytest.MonkeyPatch,
    closing: str,
) -> None:
    if closing != "finalize":  # the counterfactual proves the test can fail
        monkeypatch.setattr(ListenClient, "finish", ListenClient.abort)
    sid = "CA" + "8" * 32
    caller = script((1000, 4000, "one two three four five six"))
    await two_party_call(
        running_app, fake_deepgram, sid, caller, Script(), audio_ms=6000, timeline=[HangUp(2600)]
    )
    summary = await finished(running_app, sid)
    turns = [(t.role, t.text, t.meta.get("trigger")) for t in summary.transcript.turns]
    if closing != "finalize":
        assert turns == []
        return
    assert turns == [("caller", "one two three four", "finalize")]  # words starting by 2.5 s
    log = next(c for c in fake_deepgram.logs("listen") if c.tag == f"{sid}:caller")
    kinds = log.received_kinds()
    assert kinds.index("json:Finalize") < kinds.index("json:CloseStream")


async def test_continuation_parameters_cannot_be_forged(running_app: RunningApp) -> None:
    """A stream token is bound to where a continuation continues: adding (or changing) those
    parameters on an ordinary stream's `start` is refused."""
    async with running_app.http() as http:
        caller = FakeTwilioCaller(running_app.url, auth_token=AUTH_TOKEN, http=http)
        forged = {"continues": "1", "offset_ms": "0", "turn_base": "0"}
        result = await caller.dial(DESK, audio=silence(200), tail_ms=0, parameter_overrides=forged)
    assert result.close_code == 1008
    assert "token" in result.close_reason


async def test_time_limit_stops_the_transcription_not_the_call(
    running_app: RunningApp, fake_rest: FakeTwilioRest
) -> None:
    sid = "CA" + "5" * 32
    async with running_app.http() as http:
        caller = FakeTwilioCaller(running_app.url, auth_token=AUTH_TOKEN, http=http)
        result = await caller.dial(SHORT, call_sid=sid, audio=silence(4000), tail_ms=0)
    summary = await finished(running_app, sid)
    assert (summary.end_reason, summary.end_detail) == ("max-duration", "max call duration")
    assert result.closed_by == "server" and result.close_code == 1000
    assert fake_rest.requests == []  # nobody was hung up on
    assert [e.kind for e in summary.transcript.events if e.kind == "time-limit"] == ["time-limit"]


async def test_keepalive_through_a_long_silence_keeps_both_sockets(
    running_app: RunningApp, fake_deepgram: FakeDeepgram, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A network gap on the stream (no frames at all) longer than Nova's idle timeout: each
    Nova socket gets a JSON KeepAlive after `idle_s` without audio, so the fake (NET-0001 after
    `idle_timeout_s` idle) keeps it, and the turns after the gap are still on the call clock.

    Scaled by 1/4: KeepAlive after 1 s idle (real: NOVA_KEEPALIVE, 4 s), NET-0001 after 2.5 s
    (real: 10 s), a 5 s gap (20 s): the gap is still twice the idle timeout and longer than the
    2 s the server fills, so without KeepAlives both sockets would be closed."""
    keepalive = dataclasses.replace(NOVA_KEEPALIVE, idle_s=NOVA_KEEPALIVE.idle_s / 4)
    monkeypatch.setattr("telephony.deepgram.listen.NOVA_KEEPALIVE", keepalive)
    fake_deepgram.options.idle_timeout_s = 2.5
    gap_ms = 5_000
    assert gap_ms >= 2 * fake_deepgram.options.idle_timeout_s * 1000
    sid = "CA" + "9" * 32
    # Socket audio time: caller = 1 s before the gap + 2 s gap fill + the rest; staff has no
    # fill, its audio simply jumps.
    caller = script((200, 800, "hello"), (3500, 4500, "are you still there"))
    staff = script((300, 900, "hi"), (2800, 3600, "yes sorry about that"))
    await two_party_call(
        running_app,
        fake_deepgram,
        sid,
        caller,
        staff,
        audio_ms=gap_ms + 4_500,
        timeline=[PauseStream(1000, gap_ms)],
    )
    summary = await finished(running_app, sid)
    got = sorted((t.start_ms, t.role, t.text) for t in summary.transcript.turns)
    assert [(r, x) for _, r, x in got] == [
        ("caller", "hello"),
        ("staff", "hi"),
        ("caller", "are you still there"),
        ("staff", "yes sorry about that"),
    ]
    starts = [ms for ms, _, _ in got]
    expected = (200, 300, 1000 + gap_ms + 500, 1000 + gap_ms + 1800)
    assert all(near(a, b) for a, b in zip(starts, expected, strict=True)), starts
    logs = fake_deepgram.logs("listen")
    assert len(logs) == 2  # one socket per side, never replaced
    assert not [e for e in summary.transcript.events if e.kind == "transcription-failed"]
    for log in logs:
        assert log.close_code == 1000 and log.close_reason != "NET-0001", log.close_reason
        assert not log.violations
        keepalives = [t for t, k, _ in log.received if k == "json:KeepAlive"]
        assert len(keepalives) >= 3
        audio = [t for t, k, _ in log.received if k == "audio"]
        for t in keepalives:  # only while no audio was sent, never mid-stream
            before = [a for a in audio if a <= t]
            assert not before or t - before[-1] >= 0.75 * keepalive.idle_s


async def test_nova_keepalives_are_counted_in_metrics(
    running_app: RunningApp, fake_deepgram: FakeDeepgram
) -> None:
    """A 5 s gap on the stream: each side's Nova socket gets a KeepAlive, and /metrics counts
    every one of them (while the call is live and once it has ended)."""
    sid = "CA" + "4" * 32
    metrics = running_app.app.state.services.metrics

    def counted() -> float:
        text = metrics.exposition()[0].decode()
        line = next(x for x in text.splitlines() if x.startswith("telephony_deepgram_keepalives"))
        return float(line.split()[-1])

    await two_party_call(
        running_app,
        fake_deepgram,
        sid,
        Script(),
        Script(),
        audio_ms=6_500,
        timeline=[PauseStream(1000, 5_000)],
    )
    await finished(running_app, sid)
    sent = sum(
        k == "json:KeepAlive" for log in fake_deepgram.logs("listen") for _, k, _ in log.received
    )
    assert sent >= 2  # one per side at least
    assert counted() == sent


# --- a bot hands over to a person: one transcript --------------------------------------------


async def call_with_transfer(
    app: RunningApp,
    fake: FakeDeepgram,
    rest: FakeTwilioRest,
    number: str,
    sid: str,
    *,
    audio_ms: int,
) -> CallResult:
    """A call whose bot transfers it: Twilio runs the REST update's TwiML on the live call, and
    the person (staff side) and the caller go on through Nova."""
    # Nova times count from the transcription stream's start (the person answers at once).
    fake.set_script(f"{sid}:caller", script((1800, 2600, "my order never arrived")))
    fake.set_script(f"{sid}:staff", script((600, 1400, "Hello this is Sam")))
    updates: asyncio.Queue[str] = asyncio.Queue()

    async def on_rest(call_sid: str, form: dict[str, str]) -> None:
        updates.put_nowait(form["Twiml"])

    rest.on_request = on_rest
    async with app.http() as http:
        caller = FakeTwilioCaller(app.url, auth_token=AUTH_TOKEN, http=http)
        result = await caller.dial(
            number,
            call_sid=sid,
            audio=silence(audio_ms),
            agent_audio=silence(3000),
            tail_ms=0,
            twiml_updates=updates,
        )

    # The transfer is one REST update: fork both sides to us again, then dial the person.
    [request] = rest.requests
    root = ET.fromstring(request.form["Twiml"])
    assert [child.tag for child in root] == ["Start", "Dial"]
    assert root.find("./Dial").text == TRANSFER_NUMBER  # type: ignore[union-attr]
    [fork] = result.forks
    assert fork.fork and fork.track == "both_tracks" and fork.close_code == 1000
    assert fork.parameters["continues"] == "1" and fork.parameters["call_token"]
    assert result.close_code == 1000  # the bot's stream ended with stop when the TwiML changed
    return result


async def test_a_transferred_call_leaves_nothing_for_the_cyclic_collector(
    running_app: RunningApp,
    fake_deepgram: FakeDeepgram,
    fake_rest: FakeTwilioRest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Both streams of a call handed to a person (the bot's, then the transcription's) are
    freed by reference counting once over (tests/test_call_memory.py says why)."""
    sid = "CA" + "7" * 32
    fake_deepgram.set_script(sid, script((1000, 1800, "I want a human")))
    watch = CallWatch(monkeypatch)
    await call_with_transfer(running_app, fake_deepgram, fake_rest, BOT, sid, audio_ms=7000)
    await stored(running_app, sid, turns=5)
    left = await watch.left()
    assert watch.calls == 2  # the bot's part and the person's
    assert not left, left


# The handover's 200 ms bound covers real work (the last mark's round trip, the REST update,
# the fork's connect), which a 4x clock reads as 4x longer on a loaded machine.
@pytest.mark.clock(2)
async def test_transfer_from_a_flux_bot_continues_as_one_transcript(
    running_app: RunningApp, fake_deepgram: FakeDeepgram, fake_rest: FakeTwilioRest, database: str
) -> None:
    sid = "CA" + "6" * 32
    fake_deepgram.set_script(sid, script((1000, 1800, "I want a human")))  # Flux (tag = SID)
    await call_with_transfer(running_app, fake_deepgram, fake_rest, BOT, sid, audio_ms=7000)

    call = await stored(running_app, sid, turns=5)
    turns = call["turns"]
    assert [(t["idx"], t["role"], t["text"]) for t in turns] == [
        (0, "bot", "Hi."),
        (1, "caller", "I want a human"),
        (2, "bot", "Transferring you now."),
        (3, "staff", "Hello this is Sam"),
        (4, "caller", "my order never arrived"),
    ]
    handover = [e for e in call["events"] if e["kind"] == "handover"]
    assert len(handover) == 1 and handover[0]["data"]["dial"] == TRANSFER_NUMBER
    at = handover[0]["ms"]
    bot_end = turns[2]["end_ms"]
    assert bot_end <= at <= bot_end + 200  # the human part starts where the bot's audio ended
    assert near(turns[3]["start_ms"], at + 600) and near(turns[4]["start_ms"], at + 1800)
    kinds = [e["kind"] for e in call["events"]]
    assert kinds.index("transfer") < kinds.index("handover")
    # The person's call ended after the bot's transfer: the call was transferred.
    assert call["ended_at"] is not None and call["end_reason"] == "transferred"
    assert call["mode"] == "flux" and call["duration_ms"] > at
    parts = [s for s in running_app.app.state.services.registry.finished if s.call_sid == sid]
    assert len(parts) == 2 and isinstance(parts[0], CallSummary)

    # The staff page marks the handover and shows the staff side.
    await add_accounts(database)
    async with running_app.http() as http:
        await login(http, STAFF[0], STAFF[2])
        page = await http.get(f"/calls/{sid}")
    assert "handed over to a person" in page.text
    assert "Staff" in page.text and "Hello this is Sam" in page.text


async def test_transfer_from_a_voice_agent_continues_as_one_transcript(
    running_app: RunningApp, fake_deepgram: FakeDeepgram, fake_rest: FakeTwilioRest
) -> None:
    """The agent's transfer_call: the goodbye plays, then the same handover as Flux's."""
    sid = "CA" + "8" * 32
    transfer = AgentStep(
        at_ms=800,
        user_text="I want a human",
        reply_text="",
        function_call=ScriptedFunctionCall("transfer_call", "{}"),
        reply_after_function="Transferring you now.",
    )
    fake_deepgram.set_script(None, Script(agent=[transfer]))  # agent sessions carry no SID tag
    await call_with_transfer(running_app, fake_deepgram, fake_rest, AGENT_BOT, sid, audio_ms=9000)
    [agent] = fake_deepgram.logs("agent")
    assert [r.name for r in agent.received_messages(dm.FunctionCallResponse)] == ["transfer_call"]
    assert not agent.violations

    call = await stored(running_app, sid, turns=5)
    turns = call["turns"]
    assert [(t["role"], t["text"]) for t in turns] == [
        ("bot", "Hi."),
        ("caller", "I want a human"),
        ("bot", "Transferring you now."),
        ("staff", "Hello this is Sam"),
        ("caller", "my order never arrived"),
    ]
    assert turns[2]["heard"] == "Transferring you now."  # played in full before the handover
    [handover] = [e for e in call["events"] if e["kind"] == "handover"]
    at = handover["ms"]
    assert turns[2]["end_ms"] <= at <= turns[2]["end_ms"] + 200
    assert near(turns[3]["start_ms"], at + 600) and near(turns[4]["start_ms"], at + 1800)
    assert call["mode"] == "agent" and call["end_reason"] == "transferred"


# --- the CLI ------------------------------------------------------------------------------


@pytest.mark.slow
def test_telephony_call_transcribe_json() -> None:
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        fast_clock.cli_argv(4, "call", "--mode", "transcribe", "--json"),  # on a 4x clock
        cwd=root,
        env=os.environ.copy(),  # conftest points the database and recordings at tmp_path
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["mode"] == "transcribe" and out["end_reason"] == "caller-hangup"
    roles = [t["role"] for t in out["turns"]]
    assert roles.count("caller") >= 2 and roles.count("staff") >= 2
    assert all(t["text"] for t in out["turns"])
    starts = [t["start_ms"] for t in out["turns"]]
    assert starts == sorted(starts)


def test_a_profile_without_nova_options_gets_the_clients_own_defaults() -> None:
    """TranscribeConfig (the YAML) and ListenOptions (the socket's query) each state Nova's
    defaults: a profile that sets none must ask Deepgram for exactly what the client would."""
    assert listen_options(TranscribeConfig()) == ListenOptions()
    assert listen_options(None) == ListenOptions()
