"""BotSpeech's record of a barge-in: a reply is stored as interrupted, and a barge-in counted,
only if the caller cut words off, not when every word had played and only its last mark's
echo was still on its way (on a loaded machine the echo came after the caller's next words:
staff saw a greeting heard in full marked "interrupted", and the call counted a barge-in)."""

from __future__ import annotations

import asyncio

from telephony.audio import silence
from telephony.config import parse_config_text
from telephony.session.speech import BotSpeech
from telephony.transcript import Transcript
from tests.offline_context import offline_context

NUMBERS = """\
numbers:
  "+15550001000": support
profiles:
  support:
    mode: flux
    responder: {type: scripted, fallback: "Sorry?"}
"""


async def speech_with_playout() -> tuple[BotSpeech, Transcript, asyncio.Task[None]]:
    """A BotSpeech whose playout paces real frames to a socket that never echoes a mark."""
    ctx = offline_context(parse_config_text(NUMBERS), "support", now_ms=5000)
    return BotSpeech(ctx), ctx.transcript, asyncio.create_task(ctx.playout.run())


def say(speech: BotSpeech, text: str, audio_ms: int) -> None:
    reply = speech.new_reply()
    reply.text.append(text)
    seg = speech.segment(reply, text)
    speech.audio(reply, seg, silence(audio_ms))
    speech.end_segment(seg)
    speech.generated(reply)


async def test_a_reply_that_had_all_played_is_not_stored_as_interrupted() -> None:
    speech, transcript, runner = await speech_with_playout()
    try:
        say(speech, "Hi.", 100)
        # Sent within the playout's lead, played 100 ms later; its closing mark never echoes.
        await asyncio.sleep(0.6)
        assert speech.audible  # still waiting for the echo
        assert await speech.barge_in(5000)
    finally:
        runner.cancel()
    [turn] = transcript.turns
    assert (turn.text, turn.heard) == ("Hi.", "Hi.")
    assert not turn.interrupted and turn.interrupted_at_ms is None
    assert "cut_by" not in turn.meta
    assert not transcript.events  # no barge-in to count (metrics, review flags)


async def test_a_reply_still_playing_is_stored_as_interrupted() -> None:
    speech, transcript, runner = await speech_with_playout()
    try:
        say(speech, "We are open nine to five on weekdays.", 3000)
        await asyncio.sleep(0.2)
        assert await speech.barge_in(5000)
    finally:
        runner.cancel()
    [turn] = transcript.turns
    assert turn.interrupted and turn.interrupted_at_ms == 5000
    assert turn.meta["cut_by"] == "caller" and turn.heard != turn.text
    assert [(e.kind, e.data["replies"]) for e in transcript.events] == [("barge-in", [0])]
