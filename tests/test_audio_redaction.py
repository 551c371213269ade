"""Audio redaction: where the transcript redacts (a card number, an SSN, Deepgram's own
[PCI] marks), the recording is silent over the same turn (plus a margin), the rest intact."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.async_api import Browser, expect

from telephony.audio import MULAW_SILENCE, tone
from telephony.demo import run_offline_call
from telephony.sim.deepgram_server import Script, ScriptedTurn
from telephony.store.recording import _silenced
from telephony.store.redact import AUDIO_MARGIN_MS, audio_spans
from telephony.transcript import Turn
from tests.conftest import RunningApp
from tests.staff_helpers import STAFF, add_accounts
from tests.test_recording import read_wav, recording_of, rms
from tests.test_staff_browser import browser, log_in  # noqa: F401  (the fixture)

pytestmark = pytest.mark.clock(4)  # timers run 4x real time (tests/fast_clock.py)

CARD = "my card is 4111 1111 1111 1111"
NUMBERS = """\
numbers:
  "+15550001000": redacted
  "+15550002000": plain
profiles:
  redacted:
    mode: flux
    recording: true
    responder: {type: scripted, rules: [], fallback: "Thanks."}
  plain:
    mode: flux
    recording: true
    redaction: false
    responder: {type: scripted, rules: [], fallback: "Thanks."}
"""


async def record(tmp_path: Path, database: str, number: str) -> bytes:
    config = tmp_path / "numbers.yaml"
    config.write_text(NUMBERS)
    result = await run_offline_call(
        number=number,
        script=Script(
            turns=[
                ScriptedTurn(start_ms=500, end_ms=1200, text="What are your hours?"),
                ScriptedTurn(start_ms=3000, end_ms=4200, text=CARD),
            ]
        ),
        config_path=config,
        audio=tone(440, 6500),  # the caller's line is never quiet
        max_call_ms=7_000,
        deepgram_options={"speak_ms_per_char": 30},
    )
    path = await recording_of(database, result.caller.call_sid)
    _, left, _ = read_wav(path)
    return left


async def test_the_card_numbers_turn_is_silent_in_the_recording(
    tmp_path: Path, database: str
) -> None:
    left = await record(tmp_path, database, "+15550001000")
    start, end = 3000 - AUDIO_MARGIN_MS, 4200 + AUDIO_MARGIN_MS
    assert rms(left, start, end) == 0  # the card number: gone, margin included
    assert rms(left, 0, start - 20) > 1000  # the rest of the caller's audio: intact
    assert rms(left, end + 20, 6400) > 1000


async def test_a_profile_without_redaction_keeps_the_audio(tmp_path: Path, database: str) -> None:
    left = await record(tmp_path, database, "+15550002000")
    assert rms(left, 3000, 4200) > 1000


def test_audio_spans_are_the_redacted_turns_of_the_channel() -> None:
    turns = [
        Turn(0, "caller", "hello", 0, 800),
        Turn(1, "caller", CARD, 1000, 3000),
        Turn(2, "caller", "my number is [PCI_1] thanks", 4000, 5000),  # Deepgram redacted it
        Turn(3, "bot", "Your card ends 1111.", 5200, 6000),
        Turn(4, "bot", "I have 4111 1111 1111 1111", 6100, 7000, heard="I have"),
    ]
    m = AUDIO_MARGIN_MS
    assert audio_spans(turns, ("caller",)) == [(1000 - m, 3000 + m), (4000 - m, 5000 + m)]
    # The bot's generated text holds the number, whatever part of it was heard.
    assert audio_spans(turns, ("bot",)) == [(6100 - m, 7000 + m)]
    assert audio_spans([Turn(0, "caller", CARD, 100, 900)], ("caller",)) == [(0, 900 + m)]


def test_silenced_covers_exactly_the_span() -> None:
    loud = b"\x10" * 80  # 10 ms of μ-law at call byte 800 (100 ms)
    out = _silenced(loud, 800, [(820, 840), (870, 2000)])
    assert out[:20] == loud[:20] and out[40:70] == loud[40:70]
    assert set(out[20:40]) == {MULAW_SILENCE} and set(out[70:]) == {MULAW_SILENCE}
    assert _silenced(loud, 800, [(0, 800), (880, 880)]) == loud  # touching, empty


async def test_staff_hear_the_redacted_recording_in_the_browser(
    tmp_path: Path,
    database: str,
    running_app: RunningApp,
    browser: Browser,  # noqa: F811
) -> None:
    """What the call page's player gets, decoded by Chromium itself: the card number's turn is
    silent on the caller's channel, the audio around it is not, and the transcript masks it."""
    config = tmp_path / "numbers.yaml"
    config.write_text(NUMBERS)
    result = await run_offline_call(
        number="+15550001000",
        script=Script(turns=[ScriptedTurn(start_ms=3000, end_ms=4200, text=CARD)]),
        config_path=config,
        audio=tone(440, 6500),
        max_call_ms=7_000,
        deepgram_options={"speak_ms_per_char": 30},
    )
    sid = result.caller.call_sid
    await recording_of(database, sid)
    await add_accounts(database)
    page = await browser.new_page()
    await log_in(page, running_app.url, STAFF, f"/calls/{sid}")
    await expect(page.locator("#timeline tr.turn.caller")).to_contain_text("my card is [card]")
    levels = await page.evaluate(
        """async ([url, spans]) => {
          const bytes = await (await fetch(url)).arrayBuffer();
          const audio = await new OfflineAudioContext(2, 1, 8000).decodeAudioData(bytes);
          const left = audio.getChannelData(0), rate = audio.sampleRate;
          return spans.map(([a, b]) => {
            let sum = 0, n = 0;
            for (let i = Math.floor(a * rate / 1000); i < Math.floor(b * rate / 1000); i++) {
              sum += left[i] * left[i]; n++;
            }
            return Math.sqrt(sum / n);
          });
        }""",
        [
            f"/calls/{sid}/recording.wav",
            [
                [3000 - AUDIO_MARGIN_MS, 4200 + AUDIO_MARGIN_MS],
                [500, 3000 - AUDIO_MARGIN_MS - 20],
                [4200 + AUDIO_MARGIN_MS + 20, 6400],
            ],
        ],
    )
    redacted, before, after = levels
    assert redacted == 0, levels
    assert before > 0.03 and after > 0.03, levels  # the tone, about -10 dBFS
    await page.close()
