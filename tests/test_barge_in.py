"""Smart barge-in (telephony/session/barge_in.py): backchannels over the bot keep it talking
and are never answered; anything else interrupts, as fast as the words arrive.

Unit tests drive the decision with a fake clock-free interrupt; end-to-end calls run the real
app against the fake Flux, Aura and Twilio with caller turns scripted over the bot's reply."""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path
from types import SimpleNamespace

import pytest

from telephony.config.barge_in import BargeInConfig
from telephony.demo import OfflineCall, run_offline_call
from telephony.session.barge_in import Backchannels, SmartBargeIn, Verdict
from telephony.session.tasks import TaskSet
from telephony.sim.deepgram_server import Script, ScriptedTurn

pytestmark = pytest.mark.clock(8)  # timers run 8x real time (tests/fast_clock.py)

EN = Backchannels.for_profile(BargeInConfig())


@pytest.mark.parametrize(
    ("text", "verdict"),
    [
        ("", Verdict.EMPTY),
        ("  ...  ", Verdict.EMPTY),
        ("Mm-hmm.", Verdict.BACKCHANNEL),
        ("mm hmm", Verdict.BACKCHANNEL),
        ("Uh-huh, yeah.", Verdict.BACKCHANNEL),
        ("Okay. Okay.", Verdict.BACKCHANNEL),
        ("I see", Verdict.BACKCHANNEL),
        ("I", Verdict.PARTIAL),  # "I see" so far
        ("yeah I", Verdict.PARTIAL),
        ("I want", Verdict.SPEECH),
        ("wait", Verdict.SPEECH),
        ("okay but what about Sunday", Verdict.SPEECH),
        ("yes", Verdict.SPEECH),  # an answer, not a backchannel
        ("right right RIGHT!", Verdict.BACKCHANNEL),
    ],
)
def test_a_transcript_is_judged_by_whole_phrases(text: str, verdict: Verdict) -> None:
    assert EN.verdict(text) is verdict


def test_phrases_per_language_and_a_profile_list_replaces_them() -> None:
    spanish = Backchannels.for_profile(BargeInConfig(), ["es-419"])
    assert spanish.verdict("Ajá, vale.") is Verdict.BACKCHANNEL
    assert spanish.verdict("mm-hmm") is Verdict.SPEECH  # not a Spanish phrase here
    own = Backchannels.for_profile(BargeInConfig(backchannels=["go on"]))
    assert own.verdict("Go on.") is Verdict.BACKCHANNEL
    assert own.verdict("yeah") is Verdict.SPEECH
    assert EN.other_words("okay but what") == 2


class Decisions:
    """A SmartBargeIn with a recording interrupt, on a real TaskSet."""

    def __init__(self, speaking: bool = True, **config: object) -> None:
        self.calls: list[tuple[int, str]] = []
        self.speaking = speaking
        log = SimpleNamespace(error=lambda *a, **k: None, debug=lambda *a, **k: None)
        self.tasks = TaskSet(log)  # type: ignore[arg-type]
        cfg = BargeInConfig(mode="smart", **config)  # type: ignore[arg-type]
        self.barge = SmartBargeIn(cfg, EN, self.tasks, self._interrupt, lambda: self.speaking)

    async def _interrupt(self, start_ms: int, why: str, after_ms: int) -> None:
        self.calls.append((start_ms, why))


async def test_words_that_are_not_backchannels_interrupt_at_once() -> None:
    d = Decisions()
    await d.barge.start_of_turn(1000, "Okay")
    await d.barge.words("Okay")
    assert d.calls == []
    await d.barge.words("Okay but")
    assert d.calls == [(1000, "words")]
    assert await d.barge.end_of_turn("Okay but what about Sunday") is False
    assert d.calls == [(1000, "words")]  # once per turn


async def test_at_the_deadline_no_words_interrupt_and_backchannels_hold() -> None:
    d = Decisions(max_decision_ms=100)
    await d.barge.start_of_turn(500, "")
    await asyncio.sleep(0.15)
    assert d.calls == [(500, "deadline")]

    d = Decisions(max_decision_ms=100)
    await d.barge.start_of_turn(500, "I")
    await asyncio.sleep(0.15)
    assert d.calls == [] and d.barge.holding  # "I" may be "I see"
    await d.barge.words("I see")
    assert await d.barge.end_of_turn("I see") is True  # a backchannel: not answered
    assert d.calls == [] and not d.barge.holding


async def test_after_the_deadline_any_other_word_interrupts() -> None:
    d = Decisions(max_decision_ms=100, min_words=3)
    await d.barge.start_of_turn(0, "yeah")
    await asyncio.sleep(0.15)
    assert d.calls == []
    await d.barge.words("yeah no")  # one other word: min_words no longer applies
    assert d.calls == [(0, "words")]


async def test_min_words_waits_for_enough_words_until_the_deadline() -> None:
    d = Decisions(max_decision_ms=100, min_words=2)
    await d.barge.start_of_turn(0, "stop")
    assert d.calls == []
    await asyncio.sleep(0.15)
    assert d.calls == [(0, "deadline")]


async def test_a_turn_that_ends_undecided_interrupts_then_and_is_answered() -> None:
    d = Decisions()
    await d.barge.start_of_turn(0, "")
    assert await d.barge.end_of_turn("What?") is False
    assert d.calls == [(0, "end-of-turn")]


async def test_immediate_mode_and_a_silent_bot_interrupt_at_start_of_turn() -> None:
    d = Decisions(speaking=False)
    await d.barge.start_of_turn(700, "mm-hmm")
    assert d.calls == [(700, "start-of-turn")]
    assert await d.barge.end_of_turn("mm-hmm") is False  # nothing was playing: answered


# --- end to end --------------------------------------------------------------------------------

MS_PER_CHAR = 30
BENCH = Path(__file__).resolve().parent.parent / "scripts" / "barge_in_bench.py"
STORY = (
    "Our return policy is simple. You can bring back any item within thirty days. "
    "Keep the receipt and the original packaging. Refunds go back to the card you paid with. "
    "Store credit is available if you prefer."
)  # ~6.5 s of fake Aura speech

NUMBERS = f"""\
numbers:
  "+15550001000": smart
  "+15550002000": immediate
profiles:
  smart:
    mode: flux
    barge_in: {{mode: smart}}
    responder:
      type: scripted
      rules:
        - {{pattern: "policy", reply: "{STORY}"}}
        - {{pattern: "sunday", reply: "We are closed on Sunday."}}
      fallback: "Sorry?"
    flux: {{eot_threshold: 0.7, eager_eot_threshold: 0.5}}
  immediate:
    mode: flux
    responder:
      type: scripted
      rules: [{{pattern: "policy", reply: "{STORY}"}}]
      fallback: "Sorry?"
"""


@pytest.fixture
def numbers(tmp_path: Path) -> Path:
    path = tmp_path / "numbers.yaml"
    path.write_text(NUMBERS)
    return path


async def call(numbers: Path, number: str, turns: list[ScriptedTurn]) -> OfflineCall:
    return await run_offline_call(
        number=number,
        script=Script(turns=turns),
        config_path=numbers,
        deepgram_options={"speak_ms_per_char": MS_PER_CHAR},
        max_call_ms=12_000,
    )


ASK = ScriptedTurn(start_ms=500, end_ms=1400, text="What is your return policy?")
# The reply plays from about 1.5 s to 8 s.


async def test_backchannels_over_the_bot_keep_it_talking_and_are_not_answered(
    numbers: Path,
) -> None:
    result = await call(
        numbers,
        "+15550001000",
        [
            ASK,
            ScriptedTurn(start_ms=3000, end_ms=3400, text="Mm-hmm.", eager_ms=3300),
            ScriptedTurn(start_ms=4500, end_ms=5100, text="Okay, I see."),
            ScriptedTurn(start_ms=6000, end_ms=6300, text="Right."),
        ],
    )
    turns = result.as_json()["turns"]
    assert [(t["role"], t["text"]) for t in turns] == [
        ("caller", "What is your return policy?"),
        ("bot", STORY),
        ("caller", "Mm-hmm."),
        ("caller", "Okay, I see."),
        ("caller", "Right."),
    ]
    story = turns[1]
    assert story["heard"] == STORY and not story["interrupted"]
    assert all(t["meta"]["backchannel"] is True for t in turns[2:])
    assert not result.caller.clears, "a backchannel cleared the bot"
    kinds = [e["kind"] for e in result.as_json()["events"]]
    assert "barge-in" not in kinds and "speculation-used" not in kinds


async def test_a_real_interruption_clears_within_the_first_words_and_is_answered(
    numbers: Path,
) -> None:
    result = await call(
        numbers,
        "+15550001000",
        [ASK, ScriptedTurn(start_ms=3000, end_ms=4200, text="Okay but what about Sunday?")],
    )
    turns = result.as_json()["turns"]
    assert turns[1]["interrupted"] and turns[1]["heard"] != STORY
    assert [(t["role"], t["text"]) for t in turns[2:]] == [
        ("caller", "Okay but what about Sunday?"),
        ("bot", "We are closed on Sunday."),
    ]
    assert "backchannel" not in turns[2]["meta"]
    [barge] = [e for e in result.as_json()["events"] if e["kind"] == "barge-in"]
    # "Okay" alone held the bot; "but" (heard at the Update 250 ms in... at 600 ms at most)
    # decided it.
    assert barge["decided_by"] == "words"
    assert 0 < barge["decided_after_ms"] <= 600
    assert abs(barge["ms"] - 3000) <= 20  # the barge-in is dated from the caller's first sound
    assert result.caller.clears


async def test_immediate_mode_still_clears_on_a_backchannel(numbers: Path) -> None:
    result = await call(
        numbers, "+15550002000", [ASK, ScriptedTurn(start_ms=3000, end_ms=3400, text="Mm-hmm.")]
    )
    turns = result.as_json()["turns"]
    assert turns[1]["interrupted"]
    assert [(t["role"], t["text"]) for t in turns[2:]] == [("caller", "Mm-hmm."), ("bot", "Sorry?")]
    [barge] = [e for e in result.as_json()["events"] if e["kind"] == "barge-in"]
    assert "decided_by" not in barge


async def test_the_corpus_benchmark_runs_and_finds_no_false_or_missed_interruption() -> None:
    """scripts/barge_in_bench.py on a small corpus (the note's figures use 40 + 40 turns)."""
    spec = importlib.util.spec_from_file_location("barge_in_bench", BENCH)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    report = await bench.bench(calls=2, cycles=3)
    assert report["decision_ms"]["n"] + report.get("led_ms", {}).get("n", 0) == 6
    assert report["backchannels"] == report["interruptions"] == 6
    assert report["false"] == report["missed"] == report["extra_replies"] == 0
    assert report["stored_as_backchannel"] == 6 and report["violations"] == 0
    assert report["decision_ms"]["max"] <= 600  # bounded unless a backchannel opens the turn
    assert report["decided_by"] == {"words": 6}
