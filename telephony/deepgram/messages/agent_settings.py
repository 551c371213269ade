"""The Voice Agent's Settings body: what Deepgram accepts, and the one we send for Twilio.

Apart from `agent.py`'s message classes because the body is Deepgram's schema, passed through
as a dict, and changes with it rather than with the wire protocol. The checks
(`settings_problems`) are shared by our client, so a bad body fails before a socket is opened,
and by the fake server; the builder (`agent_settings`) fixes μ-law 8 kHz for Twilio and takes
the listen/think/speak providers, functions and context (`History` entries).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from telephony.deepgram.messages.agent import History, Settings
from telephony.deepgram.messages.wire import DeepgramMessageError, encode

# Settings' top-level keys per Deepgram's "Configure the Voice Agent" page; others are rejected.
SETTINGS_KEYS = frozenset(
    {"type", "tags", "experimental", "mip_opt_out", "flags", "audio", "agent"}
)


def settings_problems(body: Mapping[str, Any]) -> list[str]:
    """Why a Settings body would be rejected (empty: acceptable). Shape checks only."""
    problems = [f"unknown field {k!r}" for k in body if k not in SETTINGS_KEYS]
    if body.get("type", "Settings") != "Settings":
        problems.append(f"type must be 'Settings', got {body.get('type')!r}")
    for key in ("audio", "agent"):
        if not isinstance(body.get(key), dict):
            problems.append(f"missing or non-object {key!r}")
    audio = body.get("audio")
    if isinstance(audio, dict):
        for side in ("input", "output"):
            if side in audio and not isinstance(audio[side], dict):
                problems.append(f"audio.{side} must be an object")
    if "tags" in body and not (
        isinstance(body["tags"], list) and all(isinstance(t, str) for t in body["tags"])
    ):
        problems.append("tags must be a list of strings")
    agent = body.get("agent")
    if isinstance(agent, dict) and "context" in agent:
        problems += _context_problems(agent["context"])
    return problems


def _context_problems(context: Any) -> list[str]:
    """agent.context.messages: History entries only (Deepgram: type "Must be History")."""
    messages = context.get("messages", []) if isinstance(context, dict) else None
    if not isinstance(messages, list):
        return ["agent.context.messages must be a list"]
    problems = []
    for i, entry in enumerate(messages):
        where = f"agent.context.messages[{i}]"
        if not isinstance(entry, dict) or entry.get("type") != "History":
            got = entry.get("type") if isinstance(entry, dict) else type(entry).__name__
            problems.append(f"{where}: type must be 'History', got {got!r}")
            continue
        try:
            History.from_dict(entry)
        except DeepgramMessageError as exc:
            problems.append(f"{where}: {exc}")
    return problems


def settings(body: Mapping[str, Any]) -> str:
    """The agent `Settings` message from a dict (with or without "type")."""
    if problems := settings_problems(body):
        raise DeepgramMessageError("Settings: " + "; ".join(problems))
    return encode(Settings(dict(body)))


def agent_settings(
    *,
    prompt: str,
    greeting: str | None = None,
    listen_model: str = "flux-general-en",
    think_provider: Mapping[str, Any] | None = None,
    speak_model: str = "aura-2-thalia-en",
    functions: Sequence[Mapping[str, Any]] | None = None,
    context_messages: Sequence[Mapping[str, Any]] | None = None,
    eot_threshold: float | None = None,
    eot_timeout_ms: int | None = None,
    keyterms: list[str] | None = None,
    tags: list[str] | None = None,
) -> dict[str, Any]:
    """A Settings body for Twilio: μ-law 8 kHz both ways, so payloads pass through untouched."""
    listen: dict[str, Any] = {"type": "deepgram", "model": listen_model}
    if listen_model.startswith("flux"):
        listen["version"] = "v2"  # selects Flux
    for key, value in (
        ("eot_threshold", eot_threshold),
        ("eot_timeout_ms", eot_timeout_ms),
        ("keyterms", keyterms),
    ):
        if value is not None:
            listen[key] = value
    think: dict[str, Any] = {
        "provider": dict(think_provider or {"type": "open_ai", "model": "gpt-4o-mini"}),
        "prompt": prompt,
    }
    if functions:
        think["functions"] = [dict(f) for f in functions]
    agent: dict[str, Any] = {
        "listen": {"provider": listen},
        "think": think,
        "speak": {"provider": {"type": "deepgram", "model": speak_model}},
    }
    if greeting:
        agent["greeting"] = greeting
    if context_messages:
        # Each entry is a History message (role and content, or function_calls) and Deepgram
        # requires the type on every one: added where missing (a wrong one fails `settings`).
        messages = [{"type": History.TYPE, **m} for m in context_messages]
        agent["context"] = {"messages": messages}
    mulaw = {"encoding": "mulaw", "sample_rate": 8000}
    body: dict[str, Any] = {"audio": {"input": mulaw, "output": {**mulaw, "container": "none"}}}
    body["agent"] = agent
    if tags:
        body["tags"] = list(tags)
    return body
