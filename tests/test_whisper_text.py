"""The whisper's text (telephony/session/whisper.py): short, redacted, from the conversation,
and the template whenever the LLM cannot write it within its budget."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from telephony.config import Profile
from telephony.session.whisper import WhisperAhead, build_whisper, from_template, speakable
from telephony.sim.fake_llm import FakeLLM
from telephony.transcript import EventKind, Transcript

pytestmark = pytest.mark.clock(4)  # timers run 4x real time (tests/fast_clock.py)

LLM_KEY_ENV = "WHISPER_TEST_LLM_KEY"


def profile(**transfer: object) -> Profile:
    return Profile.model_validate(
        {
            "mode": "flux",
            "responder": {"type": "scripted", "fallback": "x"},
            "transfer": {"number": "+15557770000", "whisper": True, **transfer},
        }
    )


def llm_profile(base_url: str, budget_ms: int) -> Profile:
    return Profile.model_validate(
        {
            "mode": "flux",
            "responder": {
                "type": "llm",
                "base_url": base_url,
                "model": "test-model",
                "api_key_env": LLM_KEY_ENV,
                "system_prompt": "Be brief.",
            },
            "transfer": {
                "number": "+15557770000",
                "whisper": True,
                "whisper_source": "llm",
                "whisper_llm_ms": budget_ms,
            },
        }
    )


def conversation(*turns: tuple[str, str]) -> Transcript:
    transcript = Transcript()
    for i, (role, text) in enumerate(turns):
        transcript.add_turn(role, text, i * 1000, i * 1000 + 500)  # type: ignore[arg-type]
    return transcript


def test_request_told_and_reason_fill_the_template() -> None:
    p = profile(whisper_template="About {request}; told {told}. {reason}")
    transcript = conversation(
        ("bot", "Hi."),
        ("caller", "my parcel never arrived."),
        ("bot", "It left the depot on Monday."),
        ("caller", "Let me speak to an agent"),
        ("bot", "Transferring you now."),
    )
    assert from_template(p, p.transfer, transcript) == (  # type: ignore[arg-type]
        "About my parcel never arrived; told It left the depot on Monday. They asked for a person."
    )


def test_a_long_request_is_cut_to_the_spoken_limit() -> None:
    p = profile()
    words = " ".join(f"word{i}" for i in range(60))
    text = from_template(p, p.transfer, conversation(("caller", words)))  # type: ignore[arg-type]
    assert len(text.split()) <= 25
    assert text.startswith("Transferring a caller. They said: word0 word1")
    assert text.endswith("The assistant is handing them over.")  # the reason survives the cut


def test_nothing_said_yet_and_the_session_cap() -> None:
    p = profile()
    transcript = conversation(("bot", "Hello."))
    transcript.event(1000, EventKind.SESSION_CAP, action="transfer")
    text = from_template(p, p.transfer, transcript)  # type: ignore[arg-type]
    assert text == (
        "Transferring a caller. They said: nothing yet. The assistant's session time ran out."
    )


def test_backchannels_and_fillers_are_not_what_was_said() -> None:
    p = profile(whisper_template="{request} / {told}")
    transcript = Transcript()
    transcript.add_turn("bot", "Your refund is on its way.", 0, 500)
    transcript.add_turn("bot", "One moment.", 600, 800, meta={"filler": True})
    transcript.add_turn("caller", "I want to change my address", 900, 1500)
    transcript.add_turn("caller", "mm-hmm", 1600, 1700, meta={"backchannel": True})
    text = from_template(p, p.transfer, transcript)  # type: ignore[arg-type]
    assert text == "I want to change my address / Your refund is on its way"


@pytest.mark.parametrize(
    ("said", "spoken"),
    [
        ("card 4111 1111 1111 1111", "card a card number"),
        ("mail me at jane.doe@example.com", "mail me at an email address"),
        ("my ssn is 123-45-6789", "my ssn is a social security number"),
    ],
)
def test_what_redaction_hides_is_never_spoken(said: str, spoken: str) -> None:
    assert speakable(said) == spoken


@pytest.fixture
async def slow_llm(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeLLM]:
    monkeypatch.setenv(LLM_KEY_ENV, "llm-test-key")
    llm = FakeLLM(first_token_delay_ms=3000, replies=[("Caller:", "A parcel question.")])
    await llm.start()
    try:
        yield llm
    finally:
        await llm.stop()


async def test_an_llm_past_its_budget_gives_way_to_the_template(slow_llm: FakeLLM) -> None:
    p = llm_profile(slow_llm.url, budget_ms=200)
    whisper = await build_whisper(p, conversation(("caller", "my parcel never arrived")))
    assert whisper is not None and whisper.source == "template"
    assert whisper.text.startswith("Transferring a caller. They said: my parcel never arrived")
    assert len(slow_llm.requests) == 1  # it was asked, and not waited for


async def test_an_llm_error_gives_way_to_the_template(slow_llm: FakeLLM) -> None:
    slow_llm.first_token_delay_ms = 0
    slow_llm.fail_next, slow_llm.fail_status = 5, 500
    p = llm_profile(slow_llm.url, budget_ms=2000)
    whisper = await build_whisper(p, conversation(("caller", "my parcel never arrived")))
    assert whisper is not None and whisper.source == "template"


async def test_an_llm_in_time_writes_it(slow_llm: FakeLLM) -> None:
    slow_llm.first_token_delay_ms = 0
    p = llm_profile(slow_llm.url, budget_ms=2000)
    whisper = await build_whisper(p, conversation(("caller", "my parcel never arrived")))
    assert whisper is not None and (whisper.source, whisper.text) == ("llm", "A parcel question.")
    # It was asked without the call's tools, with the (redacted) conversation as text.
    request = slow_llm.requests[-1]
    assert "tools" not in request
    assert request["messages"][-1] == {"role": "user", "content": "Caller: my parcel never arrived"}


async def test_no_whisper_without_whisper_on() -> None:
    p = profile(whisper=False)
    assert await build_whisper(p, conversation(("caller", "hi"))) is None


async def test_a_whisper_started_ahead_is_used_unless_the_caller_spoke_since(
    slow_llm: FakeLLM,
) -> None:
    slow_llm.first_token_delay_ms = 0
    p = llm_profile(slow_llm.url, budget_ms=2000)
    transcript = conversation(("caller", "my parcel never arrived"))
    ahead = WhisperAhead(p, transcript)
    ahead.start()  # the reply asked for a transfer; its line plays
    ahead.start()  # asked again for the same point of the conversation: no second request
    transcript.add_turn("bot", "Putting you through.", 2000, 2500)  # the line itself
    first = await ahead.get()
    assert first is not None and first.source == "llm" and len(slow_llm.requests) == 1
    # The caller cut in and said more; a later transfer's whisper is built from that.
    transcript.add_turn("caller", "actually it is about a refund", 3000, 3500)
    second = await ahead.get()
    assert second is not None and len(slow_llm.requests) == 2
    assert slow_llm.requests[-1]["messages"][-1]["content"].endswith(
        "Caller: actually it is about a refund"
    )
    ahead.close()


async def test_nothing_is_started_ahead_without_a_whisper() -> None:
    ahead = WhisperAhead(profile(whisper=False), conversation(("caller", "hi")))
    ahead.start()
    assert await ahead.get() is None
