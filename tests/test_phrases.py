"""Fixed phrases (telephony/session/phrases.py): synthesised ahead of time through Aura's REST
endpoint (the fake's, checked against Deepgram's SDK), kept in memory and on disk, and played at
once; fillers (profile `filler:`) cover a slow reply without a gap or an overlap."""

from __future__ import annotations

import inspect
import os
from pathlib import Path

import httpx
import pytest
from deepgram.speak.v1.audio.raw_client import AsyncRawAudioClient

from telephony.config import load_config
from telephony.deepgram import messages as dm
from telephony.deepgram.speak_rest import SpeakRestClient, SpeakRestError
from telephony.demo import OfflineCall, run_offline_call
from telephony.session.flux_replies import APOLOGY
from telephony.session.phrases import PhraseCache, fixed_phrases, phrase_key
from telephony.sim.deepgram.tts import tts_audio, tts_text
from telephony.sim.deepgram_server import FakeDeepgram, Script, ScriptedTurn

pytestmark = pytest.mark.clock(8)  # timers run 8x real time (tests/fast_clock.py)

MS_PER_CHAR = 30


@pytest.fixture
async def fake() -> FakeDeepgram:
    server = FakeDeepgram(serve_read=True, speak_ms_per_char=MS_PER_CHAR)
    await server.start()
    yield server  # type: ignore[misc]
    await server.stop()


async def test_the_fake_rest_speak_answers_like_aura_and_our_client_asks_like_the_sdk(
    fake: FakeDeepgram,
) -> None:
    client = SpeakRestClient(fake.read.url, "test-key")
    try:
        audio = await client.synthesize("One moment.", "aura-2-thalia-en")
        assert audio == tts_audio("One moment.", MS_PER_CHAR)  # raw μ-law 8 kHz
        assert tts_text(audio, MS_PER_CHAR) == "One moment."
        [asked] = fake.speak_rest.requests
        params = {k: v for k, v in asked.items() if k != "text"}
        assert params == {
            "model": "aura-2-thalia-en", "encoding": "mulaw", "sample_rate": "8000",
            "container": "none",
        }  # fmt: skip
        # Every query parameter we send is one Deepgram's SDK sends for speak.v1.audio.generate.
        sdk = set(inspect.signature(AsyncRawAudioClient.generate).parameters)
        assert set(params) <= sdk and "text" in sdk
        with pytest.raises(SpeakRestError, match="HTTP 401"):
            await SpeakRestClient(fake.read.url, "wrong").synthesize("Hi.", "aura-2-thalia-en")
        with pytest.raises(SpeakRestError, match="1 to 2000"):
            await client.synthesize("x" * 2001, "aura-2-thalia-en")
        with pytest.raises(SpeakRestError, match=r"HTTP 400: .*not a text-to-speech model"):
            await client.synthesize("Hi.", "nova-3")
        fake.speak_rest.fail_status.append(503)
        with pytest.raises(SpeakRestError, match="HTTP 503") as err:
            await client.synthesize("Hi.", "aura-2-thalia-en")
        assert err.value.status == 503
    finally:
        await client.aclose()
    async with httpx.AsyncClient(timeout=30) as http:  # what the fake refuses that Deepgram refuses
        url = fake.read.url + "/v1/speak"
        auth = {"Authorization": "Token test-key"}
        empty = await http.post(url, json={"text": "  "}, headers=auth)
        assert empty.status_code == 400 and empty.json()["err_code"]


class Synth:
    def __init__(self, fail: set[str] | None = None) -> None:
        self.calls: list[tuple[str, str]] = []
        self.fail = fail or set()

    async def __call__(self, text: str, voice: str) -> bytes:
        self.calls.append((text, voice))
        if text in self.fail:
            raise SpeakRestError("HTTP 503", status=503)
        return tts_audio(text, 10)


async def test_the_cache_warms_from_aura_then_from_disk_and_keeps_only_what_is_wanted(
    tmp_path: Path,
) -> None:
    synth = Synth()
    cache = PhraseCache(synth, tmp_path / "phrases")
    wanted = {("aura-2-thalia-en", "Hi."), ("aura-2-thalia-en", "One moment.")}
    report = await cache.warm(wanted)
    assert (report.synthesised, report.from_disk, report.failed) == (2, 0, 0)
    assert cache.get("aura-2-thalia-en", "Hi.") == tts_audio("Hi.", 10)
    assert cache.get("aura-2-apollo-en", "Hi.") is None  # another voice is another phrase
    files = sorted(os.listdir(tmp_path / "phrases"))
    assert files == sorted(f"{phrase_key(v, t)}.ulaw" for v, t in wanted)
    assert all((tmp_path / "phrases" / f).stat().st_mode & 0o077 == 0 for f in files)

    # A restart: the same phrases come from disk, not from Aura.
    again = PhraseCache(Synth(), tmp_path / "phrases")
    report = await again.warm(wanted)
    assert (report.synthesised, report.from_disk) == (0, 2)
    # The YAML changed: the edited phrase is new, the old one leaves memory.
    report = await again.warm({("aura-2-thalia-en", "Hi there.")})
    assert report.synthesised == 1 and again.get("aura-2-thalia-en", "Hi.") is None
    assert again.get("aura-2-thalia-en", "Hi there.") is not None


async def test_a_failed_synthesis_is_tried_again_and_the_bounds_hold(tmp_path: Path) -> None:
    synth = Synth(fail={"Broken."})
    cache = PhraseCache(synth, tmp_path / "p", disk_bytes=3000, memory_bytes=2500)
    report = await cache.warm({("v", "Broken."), ("v", "Fine.")})
    assert report.failed == 1 and cache.get("v", "Fine.") is not None
    synth.fail.clear()
    report = await cache.warm({("v", "Broken."), ("v", "Fine.")})
    assert report.synthesised == 1 and cache.get("v", "Broken.") is not None
    # 80 bytes a character at 10 ms: a long phrase overflows the memory bound and is left out;
    # the disk keeps at most disk_bytes, the oldest files removed first.
    report = await cache.warm({("v", "A much longer phrase than the rest.")})
    assert cache.get("v", "A much longer phrase than the rest.") is None
    on_disk = sum(f.stat().st_size for f in (tmp_path / "p").iterdir())
    assert on_disk <= 3000


def test_the_phrases_of_a_configuration_are_its_flux_profiles_fixed_lines(tmp_path: Path) -> None:
    path = tmp_path / "numbers.yaml"
    path.write_text(NUMBERS)
    wanted = fixed_phrases(load_config(path))
    voice = "aura-2-thalia-en"
    assert wanted == {
        (voice, "Hi."), (voice, "One moment."), (voice, "Let me check."), (voice, APOLOGY),
        (voice, "Are you there?"), (voice, "Goodbye."), ("aura-2-apollo-en", APOLOGY),
    }  # fmt: skip


# --- end to end: cached greeting, fillers ------------------------------------------------------

NUMBERS = """\
numbers:
  "+15550001000": slow
  "+15550002000": quick
  "+15550003000": agent
profiles:
  slow:
    mode: flux
    greeting: "Hi."
    barge_in: {mode: smart}
    filler: {after_ms: 300, phrases: ["One moment.", "Let me check."]}
    idle: {reprompt_after_s: 5, messages: ["Are you there?"], goodbye: "Goodbye."}
    responder:
      type: llm
      base_url: "https://llm.example.com/v1"
      model: test-model
      api_key_env: TEST_LLM_KEY
      system_prompt: "Be brief."
  quick:
    mode: flux
    voice: aura-2-apollo-en
    responder: {type: scripted, rules: [], fallback: "Okay."}
  agent:
    mode: agent
    greeting: "Hello from the agent."
    agent: {think_prompt: "Test."}
"""


@pytest.fixture
def numbers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TEST_LLM_KEY", "sk-test")
    path = tmp_path / "numbers.yaml"
    path.write_text(NUMBERS)
    return path


async def call(
    numbers: Path, turns: list[ScriptedTurn], first_token_ms: int, max_call_ms: int = 5_000
) -> OfflineCall:
    return await run_offline_call(
        number="+15550001000",
        script=Script(turns=turns),
        config_path=numbers,
        deepgram_options={"speak_ms_per_char": MS_PER_CHAR},
        llm_options={"first_token_delay_ms": first_token_ms, "tokens_per_s": 200},
        max_call_ms=max_call_ms,
    )


def speak_texts(result: OfflineCall) -> str:
    """Everything our Aura sockets were asked to say."""
    logs = [c for c in result.deepgram.connections if c.endpoint == "speak"]
    return " ".join(m.text for c in logs for m in c.received_messages(dm.Speak))


async def test_a_slow_reply_gets_a_cached_filler_then_follows_without_a_gap(
    numbers: Path,
) -> None:
    ask = ScriptedTurn(start_ms=800, end_ms=1500, text="What is my balance?")
    again = ScriptedTurn(start_ms=5500, end_ms=6000, text="And my last payment?")
    result = await call(numbers, [ask, again], first_token_ms=1200, max_call_ms=7_500)
    bots = [t for t in result.as_json()["turns"] if t["role"] == "bot"]
    assert [t["meta"].get("cached", False) for t in bots[:2]] == [True, True]
    assert bots[0]["text"] == "Hi." and bots[1]["text"] == "One moment."
    assert bots[1]["meta"]["filler"] is True and bots[1]["heard"] == "One moment."
    reply = bots[2]
    assert not reply["meta"].get("filler") and reply["text"]
    # The filler starts after_ms after the end of turn; the reply plays after it, heard whole.
    assert 1500 + 300 - 20 <= bots[1]["start_ms"] <= 1500 + 300 + 60
    assert reply["start_ms"] >= bots[1]["end_ms"] - 20
    heard = tts_text(result.caller.heard, MS_PER_CHAR)
    assert heard.startswith("Hi.One moment." + reply["text"][:10])
    assert "One moment" not in speak_texts(result) and "Hi." not in speak_texts(result)
    assert "filler" in [e["kind"] for e in result.as_json()["events"]]
    # The LLM's history has the caller's words and the reply, not the filler.
    assert result.llm is not None
    second = result.llm.requests[-1]["messages"]
    assert reply["text"] in str(second) and "One moment." not in str(second)


async def test_a_quick_reply_gets_no_filler(numbers: Path) -> None:
    ask = ScriptedTurn(start_ms=800, end_ms=1500, text="What is my balance?")
    result = await call(numbers, [ask], first_token_ms=50)
    texts = [t["text"] for t in result.as_json()["turns"] if t["role"] == "bot"]
    assert "One moment." not in texts and "Let me check." not in texts


async def test_a_backchannel_over_the_filler_keeps_it_and_the_reply_playing(
    numbers: Path,
) -> None:
    # The filler plays from ~1.8 s to ~2.1 s; "mm-hmm" over it.
    turns = [
        ScriptedTurn(start_ms=800, end_ms=1500, text="What is my balance?"),
        ScriptedTurn(start_ms=1850, end_ms=2050, text="Mm-hmm."),
    ]
    result = await call(numbers, turns, first_token_ms=1200)
    turns_ = result.as_json()["turns"]
    filler = next(t for t in turns_ if t["meta"].get("filler"))
    assert not filler["interrupted"]
    backchannel = next(t for t in turns_ if t["text"] == "Mm-hmm.")
    assert backchannel["meta"]["backchannel"] is True
    assert "barge-in" not in [e["kind"] for e in result.as_json()["events"]]
    assert not result.caller.clears


async def test_speaking_over_a_cached_greeting_clears_it(numbers: Path) -> None:
    result = await run_offline_call(
        number="+15550001000",
        script=Script(turns=[ScriptedTurn(start_ms=40, end_ms=600, text="Wait, stop")]),
        config_path=numbers,
        deepgram_options={"speak_ms_per_char": 300},  # a slow greeting: 0.9 s
        llm_options={"first_token_delay_ms": 50},
        max_call_ms=2_500,
    )
    greeting = result.as_json()["turns"][0]
    assert greeting["meta"].get("cached") and greeting["interrupted"]
    assert result.caller.clears
