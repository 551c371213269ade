"""What the caller heard, as stored, against what was really played.

Two independent witnesses decode the bot's speech back to text (the fake TTS is a tone per
character): the call's own recording (the WAV's bot channel) and the fake Twilio's play-out
buffer. The stored heard text must match both to within one word, and where a reply was cut
off, `interrupted_at_ms` must match the moment its audio stops in the recording to 250 ms —
after a barge-in, a Deepgram drop mid-reply, or the caller hanging up while the bot speaks.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from difflib import SequenceMatcher
from pathlib import Path

import pytest

from telephony.audio import MULAW_SILENCE
from telephony.demo import OfflineCall, run_offline_call
from telephony.sim.deepgram.tts import tts_text
from telephony.sim.deepgram_server import AgentStep, Fault, Script, ScriptedTurn
from telephony.sim.twilio_caller import HangUp
from telephony.transcript import Turn
from tests import fast_clock
from tests.test_recording import read_wav, recording_of

pytestmark = pytest.mark.clock(4)  # timers run 4x real time (tests/fast_clock.py)

MS_PER_CHAR = 60  # about Aura's real rate
NEXT_TURN_MARGIN_MS = 100
GREETING = "Thanks for calling Acme. How can I help?"
HOURS = "We are open from nine in the morning until five in the evening, Monday to Friday."

NUMBERS = f"""\
numbers:
  "+15550001000": flux
  "+15550005000": agent
profiles:
  flux:
    mode: flux
    recording: true
    greeting: "{GREETING}"
    responder:
      type: scripted
      rules:
        - {{pattern: "hours", reply: "{HOURS}"}}
        - {{pattern: "bye", reply: "Goodbye!", action: hangup}}
      fallback: "Sorry?"
  agent:
    mode: agent
    recording: true
    greeting: "{GREETING}"
    agent:
      think_prompt: "Test."
"""


@pytest.fixture
def numbers(tmp_path: Path) -> Path:
    path = tmp_path / "numbers.yaml"
    path.write_text(NUMBERS)
    return path


@dataclass
class Witness:
    """The bot's audio as a witness heard it: decoded text, and (recording only) the audio."""

    text: str
    audio: bytes = b""


def words_played(decoded: str, text: str) -> int:
    """How many whole words of `text` the decoded audio contains, from its start.

    Spaces are ignored: the fake TTS speaks each Speak message's text, and sentences sent
    apart carry no space between them."""
    squashed, audio = text.replace(" ", ""), decoded.replace(" ", "")
    n = _followed(squashed, audio)
    count, pos = 0, 0
    for word in text.split():
        pos += len(word)
        if pos > n:
            break
        count += 1
    return count


def _followed(squashed: str, audio: str, slack: int = 2) -> int:
    """How far into `squashed` the audio follows it from its start. A character or two may be
    garbled on the way (a frame the playout ran dry for, on a loaded machine, splits one
    character's tone): runs of matching text with at most `slack` characters between them
    count as one."""
    blocks = SequenceMatcher(None, squashed, audio, autojunk=False).get_matching_blocks()
    n = 0
    for block in blocks:
        if block.size == 0 or block.a > n + slack:
            break
        n = max(n, block.a + block.size)
    return n


def audio_end_ms(audio: bytes, from_ms: int) -> float:
    """Where the bot channel's last sound after `from_ms` ends (call clock). `audio` ends where
    the turn's stretch of the call does, so a pause inside it (the playout ran dry on a loaded
    machine: 700 ms once) is not taken for the end, as the first long silence was."""
    return (from_ms * 8 + len(audio[from_ms * 8 :].rstrip(bytes((MULAW_SILENCE,))))) / 8


async def witnesses(result: OfflineCall, turn: Turn, database: str) -> list[Witness]:
    """Both witnesses, each limited to the turn's stretch of the call (from its start to the
    next bot turn's), so a later reply with the same words cannot stand in for it."""
    assert result.summary is not None
    start = turn.start_ms - 100
    end = min(
        (
            t.start_ms
            for t in result.summary.transcript.turns
            if t.start_ms > turn.start_ms and t.role == "bot"
        ),
        default=10**9,
    )
    _, _, right = read_wav(await recording_of(database, result.caller.call_sid))
    played = b"".join(  # each played run, cut to the window
        bytes(s.audio[max(0, round((start - s.start_ms) * 8)) : round((end - s.start_ms) * 8)])
        for s in result.caller.heard_segments
        if s.end_ms > start and s.start_ms < end
    )
    # The next reply's audio can lead its turn's start by a few ms in the recording (the
    # clocks' anchor): the window stops short of it, so its first sound is not this turn's.
    window = right[: (end - NEXT_TURN_MARGIN_MS) * 8]
    return [
        Witness(tts_text(window[start * 8 :], MS_PER_CHAR), window),
        Witness(tts_text(played, MS_PER_CHAR)),
    ]


async def check_heard(result: OfflineCall, turn: Turn, database: str) -> tuple[int, float]:
    """Stored heard text vs both witnesses (±1 word) and, if cut off, the moment the audio
    stopped vs `interrupted_at_ms` (±250 ms). Returns (worst word error, ms error)."""
    assert turn.text.startswith(turn.heard), "heard text is a prefix of what was generated"
    stored = len(turn.heard.split())
    word_error = 0
    ms_error = 0.0
    for witness in await witnesses(result, turn, database):
        truth = words_played(witness.text, turn.text)
        word_error = max(word_error, abs(stored - truth))
        assert abs(stored - truth) <= 1, (turn.heard, witness.text)
        if witness.audio and turn.interrupted_at_ms is not None:
            began = int(turn.meta.get("first_audio_played_ms", turn.start_ms))
            ended = audio_end_ms(witness.audio, began)
            ms_error = abs(ended - turn.interrupted_at_ms)
            assert ms_error <= 250, (ended, turn.interrupted_at_ms)
    print(f"heard {turn.heard!r}: word error {word_error}, interrupted_at error {ms_error:.0f} ms")
    return word_error, ms_error


def bot_turn(result: OfflineCall, text: str) -> Turn:
    assert result.summary is not None
    return next(t for t in result.summary.transcript.turns if t.role == "bot" and t.text == text)


async def flux_call(numbers: Path, turns: list[ScriptedTurn], **kw) -> OfflineCall:
    return await run_offline_call(
        number="+15550001000",
        script=Script(turns=turns, faults=kw.pop("faults", [])),
        config_path=numbers,
        max_call_ms=kw.pop("max_call_ms", 12_000),
        deepgram_options={"speak_ms_per_char": MS_PER_CHAR},
        llm_options={"first_token_delay_ms": 100, "tokens_per_s": 200},
        **kw,
    )


async def test_a_reply_cut_in_its_first_sentence_is_heard_up_to_the_barge_in(
    numbers: Path, database: str
) -> None:
    # HOURS is one 4.9 s sentence from ~4.5 s; the caller cuts in at 6.4 s: ~1.9 s played.
    result = await flux_call(
        numbers,
        [
            ScriptedTurn(start_ms=3200, end_ms=4400, text="What are your opening hours?"),
            ScriptedTurn(start_ms=6400, end_ms=7600, text="Okay thanks, goodbye."),
        ],
    )
    turn = bot_turn(result, HOURS)
    assert turn.interrupted and turn.meta["cut_by"] == "caller"
    assert turn.heard and len(turn.heard.split()) < len(HOURS.split())
    assert turn.meta["heard_estimated"] is True
    await check_heard(result, turn, database)
    greeting = bot_turn(result, GREETING)
    assert greeting.heard == GREETING and greeting.meta["heard_estimated"] is False


@pytest.mark.clock(2)  # ±250 ms of call time is ±62 ms of real time at 4x: a busy machine's
# stall (the fake caller and the service share one loop) once cost 870 ms of it.
async def test_an_aura_drop_mid_reply_stores_only_the_audio_that_arrived(
    numbers: Path, database: str
) -> None:
    # Aura streams HOURS (5 s of audio) 4x faster than real time, from ~4.6 s to ~5.9 s; it
    # dies ~0.8 s into that, late enough for a reply that started late on a busy machine.
    result = await flux_call(
        numbers,
        [
            ScriptedTurn(start_ms=3200, end_ms=4400, text="What are your opening hours?"),
            ScriptedTurn(start_ms=9000, end_ms=9800, text="Okay bye."),
        ],
        faults=[Fault(endpoint="speak", at_ms=5400, kind="drop")],
    )
    assert [
        e.data["reason"] != "start"
        for e in result.summary.transcript.events
        if e.kind == "speak-connection"
    ] == [False, True]
    turn = bot_turn(result, HOURS)
    assert turn.meta["cut_by"] == "drop" and turn.interrupted
    assert turn.heard != HOURS and turn.meta["heard_estimated"] is True
    await check_heard(result, turn, database)


@pytest.mark.clock(2)  # as the Aura drop: a 4x clock made a stall a 790 ms underrun, which
# the witness read as the audio's end
async def test_an_agent_drop_mid_reply_stores_only_the_audio_that_reached_the_caller(
    numbers: Path, database: str
) -> None:
    reply = (
        "I can check an order, tell you our opening hours, or put you through to a "
        "colleague who can help with anything else. Which would you like?"
    )  # ~8.6 s of speech, sent from ~1.7 s at 1.5x real time: the drop at 2.5 s cuts it
    result = await run_offline_call(
        mode="agent",
        number="+15550005000",
        script=Script(
            agent=[AgentStep(at_ms=1000, user_text="What can you do?", reply_text=reply)],
            faults=[Fault(endpoint="agent", at_ms=2500, kind="drop")],
        ),
        config_path=numbers,
        max_call_ms=9_000,
        # Slower than the default 4x, so what arrived has played before the new socket's
        # replay of the script (its caller turn 1 s in) barges in.
        deepgram_options={
            "speak_ms_per_char": MS_PER_CHAR,
            "agent_latency_s": 0.1,
            "speak_speedup": 1.5,
        },
    )
    turn = bot_turn(result, reply)  # the first socket's reply; the new one replays the script
    assert turn.meta["cut_by"] == "drop" and turn.interrupted
    assert 0 < len(turn.heard.split()) < len(reply.split())
    await check_heard(result, turn, database)


@pytest.mark.clock(2)  # as the drops below: its ±250 ms is 62 ms of real time at 4x, and a CI
# run's stall put the recording's bot audio 350 ms past the hang-up
async def test_a_reply_playing_when_the_caller_hangs_up_is_stored_with_what_played(
    numbers: Path, database: str
) -> None:
    result = await flux_call(
        numbers,
        [ScriptedTurn(start_ms=3200, end_ms=4400, text="What are your opening hours?")],
        timeline=[HangUp(6000)],
    )
    turn = bot_turn(result, HOURS)  # today: never stored at all
    assert turn.meta["cut_by"] == "call-end" and turn.interrupted
    assert turn.heard and turn.heard != HOURS
    await check_heard(result, turn, database)
    assert result.rest.requests == []  # nothing to hang up: the caller did


def test_the_demo_call_stores_the_cut_reply_with_what_played_and_ends_bot_hangup() -> None:
    """`telephony call --json` with the default script, as a user runs it: the hours answer
    the caller cuts into keeps the words that played, and the bot ends the call."""
    out = subprocess.run(
        fast_clock.cli_argv(4, "call", "--json"),  # the call on a 4x clock
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    call = json.loads(out.stdout)
    cut = next(t for t in call["turns"] if t["role"] == "bot" and t["interrupted"])
    assert cut["heard"] and cut["text"].startswith(cut["heard"]) and cut["heard"] != cut["text"]
    assert call["end_reason"] == "bot-hangup"
