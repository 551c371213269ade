"""Languages (telephony/session/language.py): Flux multilingual's language hints, the caller's
language per turn, the Aura voice and the fixed phrases that follow it, and what the LLM is
told; the profile's `voices:` and `phrases:` checked when the YAML is loaded."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from deepgram.listen.v2.types.listen_v2configure_success import ListenV2ConfigureSuccess
from deepgram.listen.v2.types.listen_v2turn_info import ListenV2TurnInfo

from telephony.config import ConfigError, load_config
from telephony.deepgram import messages as dm
from telephony.demo import OfflineCall, run_offline_call
from telephony.session.language import CallLanguage
from telephony.session.phrases import fixed_phrases
from telephony.sim.deepgram.script import Fault
from telephony.sim.deepgram.tts import tts_audio, tts_text
from telephony.sim.deepgram_server import Script, ScriptedTurn
from telephony.transcript import Turn, is_reconnect
from tests.conftest import RunningApp
from tests.staff_helpers import STAFF, add_accounts, login, store_call

pytestmark = pytest.mark.clock(8)  # timers run 8x real time (tests/fast_clock.py)

MS_PER_CHAR = 10
EN, ES = "aura-2-thalia-en", "aura-2-celeste-es"

NUMBERS = """\
numbers:
  "+15550001000": bilingual
  "+15550002000": following
profiles:
  bilingual:
    mode: flux
    greeting: "Hi."
    voice: aura-2-thalia-en
    flux: {model: flux-general-multi, language_hints: [en, es]}
    voices: {es: aura-2-celeste-es}
    filler: {after_ms: 300, phrases: ["One moment."]}
    idle: {reprompt_after_s: 2, reprompts: 1, messages: ["Are you there?"], goodbye: "Bye."}
    phrases:
      es:
        filler: ["Un momento."]
        reprompts: ["¿Sigue ahí?"]
        goodbye: "Adiós."
        apology: "Lo siento."
    responder:
      type: llm
      base_url: "https://llm.example.com/v1"
      model: test-model
      api_key_env: TEST_LLM_KEY
      system_prompt: "Be brief."
  following:
    mode: flux
    flux: {model: flux-general-multi, language_hints: [en, es], follow_language: true}
    voices: {es: aura-2-celeste-es}
    responder: {type: scripted, rules: [], fallback: "Okay."}
"""


@pytest.fixture
def numbers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TEST_LLM_KEY", "sk-test")
    path = tmp_path / "numbers.yaml"
    path.write_text(NUMBERS)
    return path


async def call(
    numbers: Path,
    turns: list[ScriptedTurn],
    *,
    number: str = "+15550001000",
    first_token_ms: int = 50,
    max_call_ms: int = 6_000,
    **script: object,
) -> OfflineCall:
    return await run_offline_call(
        number=number,
        script=Script(turns=turns, **script),  # type: ignore[arg-type]
        config_path=numbers,
        deepgram_options={"speak_ms_per_char": MS_PER_CHAR},
        llm_options={"first_token_delay_ms": first_token_ms, "tokens_per_s": 400},
        max_call_ms=max_call_ms,
    )


def speak_sockets(result: OfflineCall) -> list[tuple[str, str]]:
    """(voice, everything it was asked to say) of each Aura socket, in the order opened."""
    logs = sorted(
        (c for c in result.deepgram.connections if c.endpoint == "speak"),
        key=lambda c: c.opened_at,
    )
    return [
        (c.query["model"][0], " ".join(m.text for m in c.received_messages(dm.Speak))) for c in logs
    ]


def bot_turns(result: OfflineCall) -> list[dict]:
    return [t for t in result.as_json()["turns"] if t["role"] == "bot"]


# --- a call that changes language ------------------------------------------------------------


async def test_each_reply_is_in_the_callers_language_with_its_voice(numbers: Path) -> None:
    turns = [
        ScriptedTurn(start_ms=600, end_ms=1200, text="I want to order a phone"),
        ScriptedTurn(start_ms=3000, end_ms=3700, text="quiero pagar con tarjeta", language="es"),
        ScriptedTurn(start_ms=5600, end_ms=6200, text="thanks that is all"),
    ]
    # Each turn starts ~1.5 s of call time after the reply before it should have ended (the
    # Spanish one opens a new Aura socket first): on a loaded 4x clock a tighter script let
    # the caller talk over a reply, which this test would read as lost to the voice change.
    result = await call(numbers, turns, max_call_ms=7_700)
    data = result.as_json()

    # Flux was hinted with the profile's languages (language_hint, repeated, on the URL).
    [flux] = [c for c in result.deepgram.connections if c.endpoint == "flux"]
    assert flux.query["model"] == ["flux-general-multi"]
    assert flux.query["language_hint"] == ["en", "es"]

    # Each caller turn keeps the languages Flux reported; each reply says what it was said in.
    callers = [t for t in data["turns"] if t["role"] == "caller"]
    assert [t["meta"]["languages"] for t in callers] == [["en"], ["es"], ["en"]]
    replies = [t for t in bot_turns(result) if t["text"].startswith("You said")]
    assert [t["meta"]["language"] for t in replies] == ["en", "es", "en"]
    assert all(t["heard"] == t["text"] for t in replies)  # nothing lost to the voice change

    # Aura: the English voice, then a new socket in the Spanish voice for the Spanish reply,
    # then English again; each reply went to the socket of its voice.
    sockets = speak_sockets(result)
    assert [voice for voice, _ in sockets] == [EN, ES, EN]
    assert "quiero pagar" in sockets[1][1] and "quiero pagar" not in sockets[0][1] + sockets[2][1]
    assert "thanks that is all" in sockets[2][1]
    # The new sockets are planned, not reconnects: no Deepgram failure is counted.
    connections = [e for e in data["events"] if e["kind"] == "speak-connection"]
    assert [e.get("voice") for e in connections] == [EN, ES, EN]
    assert [e["reason"] for e in connections[1:]] == [f"voice {ES}", f"voice {EN}"]
    assert all(e.get("planned") for e in connections[1:])
    assert not any(is_reconnect(e) for e in connections)

    # The LLM is told the caller's language, turn by turn.
    assert result.llm is not None
    told = [r["messages"][0]["content"] for r in result.llm.requests]
    assert "The caller is speaking English. Answer in English." in told[0]
    assert "The caller is speaking Spanish. Answer in Spanish." in told[1]
    assert "The caller is speaking English. Answer in English." in told[2]

    # What the caller heard, in order: greeting, then each reply.
    heard = tts_text(result.caller.heard, MS_PER_CHAR)
    assert heard.index("I want to order") < heard.index("quiero pagar") < heard.index("thanks")


async def test_a_language_without_a_voice_is_answered_in_the_profiles(numbers: Path) -> None:
    turns = [
        ScriptedTurn(start_ms=600, end_ms=1300, text="je voudrais un rendez-vous", language="fr")
    ]
    result = await call(numbers, turns, max_call_ms=3_000)
    [reply] = [t for t in bot_turns(result) if t["text"].startswith("You said")]
    assert reply["meta"]["language"] == "en"
    assert [voice for voice, _ in speak_sockets(result)] == [EN]
    assert result.llm is not None
    system = result.llm.requests[0]["messages"][0]["content"]
    assert "The caller is speaking French. Answer in English." in system
    assert "cannot speak French" in system


# --- fixed phrases in the caller's language --------------------------------------------------


async def test_fillers_reprompts_and_goodbye_follow_the_callers_language(numbers: Path) -> None:
    """A Spanish caller whose reply is slow hears the Spanish filler, then, silent, the Spanish
    reprompt and goodbye: all from the phrase cache, in the Spanish voice."""
    turns = [ScriptedTurn(start_ms=600, end_ms=1300, text="hola necesito ayuda", language="es")]
    result = await call(numbers, turns, first_token_ms=900, max_call_ms=12_000)
    assert result.summary.end_reason == "idle-hangup"
    said = [(t["text"], t["meta"].get("cached", False)) for t in bot_turns(result)]
    texts = [text for text, _ in said]
    assert texts[0] == "Hi." and texts[1] == "Un momento."
    assert texts[-2:] == ["¿Sigue ahí?", "Adiós."]
    assert dict(said)["Un momento."] and dict(said)["¿Sigue ahí?"] and dict(said)["Adiós."]
    assert all(t["meta"]["language"] == "es" for t in bot_turns(result)[1:])
    heard = tts_text(result.caller.heard, MS_PER_CHAR)
    # (the fake's audio carries ASCII: the accents come back as other characters)
    spanish_end = tts_text(tts_audio("¿Sigue ahí?Adiós.", MS_PER_CHAR), MS_PER_CHAR)
    assert "Un momento." in heard and heard.endswith(spanish_end)
    assert "One moment" not in heard and "Are you there" not in heard


def test_the_phrase_cache_holds_each_languages_phrases_in_its_voice(numbers: Path) -> None:
    wanted = fixed_phrases(load_config(numbers))
    assert {
        (EN, "Hi."), (EN, "One moment."), (EN, "Are you there?"), (EN, "Bye."),
        (ES, "Un momento."), (ES, "¿Sigue ahí?"), (ES, "Adiós."), (ES, "Lo siento."),
    } <= wanted  # fmt: skip
    assert (ES, "Hi.") not in wanted  # the greeting is said before anyone spoke: English


def test_phrases_left_out_fall_back_to_the_profiles_own(numbers: Path) -> None:
    profile = load_config(numbers).profiles["following"]
    language = CallLanguage(profile)
    assert language.heard(["es"]) and language.voice == ES
    assert language.apology.startswith("Sorry")  # no Spanish apology given: the profile's
    assert not language.heard(["es-MX"])  # a region is its base language: no change
    assert language.heard(["ja"]) and language.reply == "en"  # no Japanese voice
    assert not language.heard(None) and language.reply == "en"


# --- hints that follow the caller ------------------------------------------------------------


async def test_follow_language_hints_flux_mid_call_and_a_reconnect_keeps_the_hint(
    numbers: Path,
) -> None:
    turns = [
        ScriptedTurn(start_ms=600, end_ms=1200, text="hola buenos dias", language="es"),
        ScriptedTurn(start_ms=3400, end_ms=4000, text="now in english please"),
    ]
    drop = Fault(endpoint="flux", at_ms=2400, kind="drop")
    result = await call(numbers, turns, number="+15550002000", max_call_ms=5_500, faults=[drop])
    flux = sorted(
        (c for c in result.deepgram.connections if c.endpoint == "flux"), key=lambda c: c.opened_at
    )
    assert flux[0].query["language_hint"] == ["en", "es"]
    # Once Flux said Spanish, it was hinted Spanish alone; the reconnect's URL carries that.
    configures = [m.language_hints for c in flux for m in c.received_messages(dm.Configure)]
    assert configures == [("es",), ("en",)]
    assert flux[1].query["language_hint"] == ["es"]
    applied = [
        e["language_hints"] for e in result.as_json()["events"] if e["kind"] == "flux-configured"
    ]
    assert applied == [["es"], ["en"]]


# --- the wire, against Deepgram's SDK --------------------------------------------------------


def test_language_fields_read_and_written_as_deepgrams_sdk_models_them() -> None:
    raw = (
        '{"type":"ConfigureSuccess","request_id":"r","sequence_id":3,'
        '"thresholds":{"eot_threshold":0.7},"keyterms":[],"language_hints":["es"]}'
    )
    ours = dm.parse_flux_server(raw)
    assert isinstance(ours, dm.ConfigureSuccess) and ours.language_hints == ("es",)
    ListenV2ConfigureSuccess.model_validate_json(dm.encode(ours))
    turn = dm.TurnInfo(
        event="EndOfTurn", turn_index=0, audio_window_start=0.0, audio_window_end=1.0,
        transcript="hola", languages=("es",), languages_hinted=("en", "es"),
    )  # fmt: skip
    sdk = ListenV2TurnInfo.model_validate_json(dm.encode(turn))
    assert sdk.languages == ["es"] and sdk.languages_hinted == ["en", "es"]
    again = dm.parse_flux_server(dm.encode(turn))
    assert isinstance(again, dm.TurnInfo) and again.languages_hinted == ("en", "es")
    assert dm.language_hint_problems(["es-MX", "pt"]) == []
    assert dm.language_hint_problems(["zz"])


# --- the YAML ---------------------------------------------------------------------------------

BASE = """\
numbers: {}
profiles:
  p:
    mode: flux
    responder: {type: scripted, fallback: x}
"""


@pytest.mark.parametrize(
    "extra, message",
    [
        (
            "    voices: {es: aura-2-celeste-es}\n",
            "profiles.p.voices: needs flux.model: flux-general-multi",
        ),
        (
            "    flux: {language_hints: [es]}\n",
            "profiles.p.flux.language_hints: needs model: flux-general-multi",
        ),
        (
            "    flux: {model: flux-general-multi, language_hints: [xx]}\n",
            "language_hint 'xx' is not one of en, es",
        ),
        (
            "    flux: {model: flux-general-multi}\n    voices: {es: aura-2-thalia-en}\n",
            "profiles.p.voices: aura-2-thalia-en speaks 'en', not 'es'",
        ),
        (
            "    flux: {model: flux-general-multi}\n    voices: {hi: aura-2-x-hi}\n",
            "Aura has no voice for 'hi'",
        ),
        (
            "    flux: {model: flux-general-multi}\n    phrases: {es: {apology: Lo siento.}}\n",
            "profiles.p.phrases: no voice speaks 'es': add voices.es",
        ),
        (
            "    flux: {model: flux-general-multi}\n    voices: {es: aura-2-celeste-es}\n"
            "    phrases: {es: {filler: [Un momento.]}}\n",
            "es.filler: the profile has no filler",
        ),
        (
            "    flux: {model: flux-general-multi}\n    voices: {es: aura-2-celeste-es}\n"
            "    phrases: {es: {goodbye: Adiós.}}\n",
            "reprompts and goodbye need the profile's idle section",
        ),
    ],
)
def test_voices_phrases_and_hints_are_checked(tmp_path: Path, extra: str, message: str) -> None:
    path = tmp_path / "numbers.yaml"
    path.write_text(BASE + extra)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert message in str(err.value)
    assert "numbers.yaml:" in str(err.value)  # with the file and line, as every config error


# --- the staff UI -----------------------------------------------------------------------------


async def test_the_call_page_shows_each_turns_language(
    running_app: RunningApp, database: str
) -> None:
    sid = "CA" + "5" * 32
    turns = [
        Turn(0, "bot", "Hi.", 0, 500, heard="Hi.", meta={"language": "en"}),
        Turn(1, "caller", "hola", 800, 1500, meta={"languages": ["es", "en"]}),
        Turn(2, "bot", "Hola.", 1700, 2200, heard="Hola.", meta={"language": "es"}),
        Turn(3, "caller", "okay", 2500, 2900),  # flux-general-en: no language reported
    ]
    await add_accounts(database)
    await store_call(database, sid, turns=turns)
    async with running_app.http() as client:
        assert (await login(client, STAFF[0], STAFF[2])).status_code == 303
        html = (await client.get(f"/calls/{sid}")).text
    badges = re.findall(r'<span class="badge lang" title="([^"]*)">([^<]*)</span>', html)
    assert [name for _, name in badges] == ["English", "Spanish", "Spanish"]
    assert badges[1][0] == "the language Flux heard (also: English)"
    assert badges[2][0] == "the language of this reply and its voice"
