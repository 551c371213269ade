"""The call page in plain words: where a reply's time went, what an event meant, and which
caller turns the bot never answered. Pure functions of the stored turn and event dicts, used by
the timeline template."""

from __future__ import annotations

from typing import Any

from telephony.store.export import Item
from telephony.store.review_rules import unanswered_turns
from telephony.transcript import CONNECTION_KINDS

ENDPOINTS = {
    "flux": "Deepgram Flux (speech recognition)",
    "speak": "Deepgram Aura (text to speech)",
    "agent": "Deepgram Voice Agent",
    "listen": "Deepgram Nova (transcription)",
}
# Agent mode: Deepgram's LatencyReport, as stored on the bot turn (ms).
AGENT_STAGES = (
    ("stt_ms", "speech to text"),
    ("ttt_token_ms", "LLM's first token"),
    ("ttt_text_ms", "LLM's first text"),
    ("ttt_tool_ms", "LLM's tool call"),
    ("ttt_thinking_ms", "LLM's thinking"),
    ("tts_ms", "text to speech's first audio"),
    ("total_ms", "end of speech to first audio, in all"),
)


def _ms(value: float) -> str:
    return f"{value:.0f} ms"


def latency_steps(meta: dict[str, Any] | None) -> list[tuple[str, str]]:
    """A bot turn's reply latency, stage by stage: (what happened, how long it took)."""
    meta = meta or {}
    report = meta.get("latency_report")
    if isinstance(report, dict):
        return [(label, _ms(report[key])) for key, label in AGENT_STAGES if key in report]
    steps: list[tuple[str, str]] = []
    token, text = meta.get("eot_to_token_ms"), meta.get("eot_to_text_ms")
    if token is not None:
        steps.append(("caller's end of speech → the LLM's first token", _ms(token)))
        if text is not None:
            steps.append(("→ the first sentence sent to Aura", _ms(max(0.0, text - token))))
    elif text is not None:
        steps.append(("caller's end of speech → the reply's text sent to Aura", _ms(text)))
    if meta.get("text_to_audio_ms") is not None:
        steps.append(("→ Aura's first audio", _ms(meta["text_to_audio_ms"])))
    elif meta.get("eot_to_audio_ms") is not None and not steps:
        steps.append(
            ("caller's end of speech → the reply's first audio", _ms(meta["eot_to_audio_ms"]))
        )
    if meta.get("audio_to_played_ms") is not None and steps:
        steps.append(
            ("→ playing on the caller's line (Twilio's mark)", _ms(meta["audio_to_played_ms"]))
        )
    return steps


def _clock(ms: float) -> str:
    s = ms / 1000
    return f"{int(s // 60)}:{s % 60:04.1f}"


def event_sentence(kind: str, data: dict[str, Any] | None, ms: float) -> str:
    """An event in words, or "" when the kind has none (the page lists its fields)."""
    data = data or {}
    if kind in CONNECTION_KINDS:
        name = ENDPOINTS.get(kind.removesuffix("-connection"), kind.removesuffix("-connection"))
        tries = data.get("attempts")
        if data.get("reason", "start") == "start":
            return f"{name} connected" + (f" after {tries} attempts" if tries else "") + "."
        if data.get("planned"):
            return f"{name} reconnected on purpose ({data['reason']})."
        words = f"{name} connection lost ({data['reason']})"
        if data.get("reconnect_ms") is not None:
            words += f", back in {_ms(float(data['reconnect_ms']))}"
        if data.get("replayed_ms"):
            words += f", {float(data['replayed_ms']) / 1000:.1f} s of the caller's audio replayed"
        if data.get("dropped_ms"):
            words += f", {float(data['dropped_ms']) / 1000:.1f} s of it lost"
        return words + "."
    if kind == "upstream-failed":
        name = ENDPOINTS.get(str(data.get("endpoint", "")), str(data.get("endpoint", "")))
        return f"{name} could not be kept: the call was handed over ({data.get('reason', '')})."
    if kind == "llm-fallback":
        return _llm_fallback(data)
    if kind == "barge-in":
        return f"The caller spoke over the bot at {_clock(ms)}; its audio was cleared."
    if kind == "nudge" and data.get("reprompt"):
        after = data.get("after_s", "?")
        return f"The caller said nothing for {after} s: reprompt {data['reprompt']}."
    if kind == "transfer":
        return f"The bot transferred the call to {data.get('to', 'a person')}."
    if kind == "whisper":
        return f"Before being connected, the person who answered heard: “{data.get('text', '')}”"
    if kind == "idle-goodbye":
        return "The caller stayed silent after every reprompt: the bot said goodbye and hung up."
    return ""


# Why an LLM backend was abandoned (telephony/responder/fallback.py's reasons), in words.
FALLBACK_REASONS = {
    "timeout": "gave no first token in time",
    "rate-limited": "was rate-limited",
    "server-error": "failed",
    "client-error": "refused the request",
    "connection": "could not be reached",
    "stream": "broke off its reply",
}


def _llm_fallback(data: dict[str, Any]) -> str:
    reason = str(data.get("reason", ""))
    what = FALLBACK_REASONS.get(reason, f"failed ({reason})")
    if data.get("status") is not None:
        what += f" (HTTP {data['status']})"
    after = f" after {_ms(float(data['after_ms']))}" if data.get("after_ms") is not None else ""
    return (
        f"The LLM {data.get('from', '?')} {what}{after}: {data.get('to', '?')} was asked "
        "for the same reply instead."
    )


def unanswered(items: list[Item], mode: str) -> set[int]:
    """Caller turns (by index) in a bot call that no bot turn followed before the caller spoke
    again or the call ended: the review queue's rule (telephony/store/review_rules.py)."""
    return unanswered_turns([i.turn for i in items if i.turn is not None], mode)
