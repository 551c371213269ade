"""A warm transfer's whisper: what the person who answers hears before the caller is connected.

Built from the conversation at the moment of the transfer: the profile's template filled with
the caller's last request, what the bot last told them and why they are being transferred;
or, with `whisper_source: llm`, one sentence from the responder's LLM within `whisper_llm_ms`
(the template on a timeout, an error or an empty answer), so the transfer is never held up
longer than that. Either way the text is redacted before anyone hears it (card numbers and
the like become "a card number", whatever the profile's `redaction`: a whisper never needs
them) and cut to `MAX_WHISPER_WORDS`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import httpx

from telephony.config import LLMResponderConfig, Profile
from telephony.config.transfer import MAX_WHISPER_WORDS, TransferConfig
from telephony.responder.llm import LLMResponder
from telephony.store.redact import redact
from telephony.transcript import EventKind, Transcript, Turn

log = logging.getLogger(__name__)

# The redaction markers, said as words.
_SPOKEN = {
    "card": "a card number",
    "ssn": "a social security number",
    "phone": "a phone number",
    "email": "an email address",
}
_MARK = re.compile(r"\[REDACTED:([a-z]+)\]")
_TRAILING = re.compile(r"[\s.,;:!?…]+$")
LLM_PROMPT = (
    "You brief a colleague who is about to take over a phone call from an automated "
    "assistant. From the conversation below, write ONE short spoken sentence (at most "
    f"{MAX_WHISPER_WORDS} words): what the caller wants and what they have been told. "
    "No greeting, no names, no numbers, no formatting."
)


@dataclass(frozen=True)
class Whisper:
    text: str
    source: str  # "template" or "llm"


def speakable(text: str) -> str:
    """Redacted, and the markers said as words."""
    return _MARK.sub(lambda m: _SPOKEN.get(m.group(1), "a number"), redact(text).text)


def _words(text: str, limit: int) -> str:
    words = text.split()
    return " ".join(words[: max(0, limit)])


@dataclass(frozen=True)
class _Said:
    request: Turn | None  # what the caller wants
    told: Turn | None  # the bot's last answer before the caller's last words
    asked_for_person: bool


def _said(profile: Profile, turns: Sequence[Turn]) -> _Said:
    """What the conversation says. The caller's last words are their request, unless they
    only asked for a person after saying what they wanted: then that earlier turn is.
    Backchannels and fillers are not what either side said."""
    caller = [t for t in turns if t.role == "caller" and not t.meta.get("backchannel")]
    last = caller[-1] if caller else None
    human = profile.review.human_re
    asked = last is not None and human is not None and human.search(last.text) is not None
    request = caller[-2] if asked and len(caller) > 1 else last
    before = turns[: turns.index(last)] if last is not None else turns
    told = next((t for t in reversed(before) if t.role == "bot" and not t.meta.get("filler")), None)
    return _Said(request, told, asked)


def reason_for(transcript: Transcript, said: _Said) -> str:
    """Why the call is coming to a person, as far as the transcript tells."""
    if any(e.kind == EventKind.SESSION_CAP for e in transcript.events):
        return "The assistant's session time ran out."
    if said.asked_for_person:
        return "They asked for a person."
    return "The assistant is handing them over."


def from_template(profile: Profile, cfg: TransferConfig, transcript: Transcript) -> str:
    """The template filled from the conversation, within MAX_WHISPER_WORDS."""
    said = _said(profile, transcript.turns)
    request, told = said.request, said.told
    values = {
        "request": _TRAILING.sub("", speakable(request.text)) if request else "nothing yet",
        "told": _TRAILING.sub("", speakable(told.text)) if told else "nothing yet",
        "reason": reason_for(transcript, said),
    }
    used = {name for _, name, _, _ in string.Formatter().parse(cfg.whisper_template) if name}
    fixed = cfg.whisper_template.format(**dict.fromkeys(values, ""))
    room = MAX_WHISPER_WORDS - len(fixed.split())
    if "reason" in used:  # said in full: the quotes make room for it
        room -= len(values["reason"].split())
    # What the caller said gets most of the room left; what they were told the rest.
    quoted = [n for n in ("request", "told") if n in used]
    shares = (
        {"request": room, "told": room}
        if len(quoted) < 2
        else {
            "request": room - room * 2 // 5,
            "told": room * 2 // 5,
        }
    )
    for name in quoted:
        values[name] = _words(values[name], shares[name])
    return _words(" ".join(cfg.whisper_template.format(**values).split()), MAX_WHISPER_WORDS)


def _conversation(transcript: Transcript) -> str:
    lines = []
    for t in transcript.turns:
        if t.meta.get("filler") or t.meta.get("backchannel"):
            continue
        who = "Caller" if t.role == "caller" else "Assistant"
        lines.append(f"{who}: {speakable(t.heard if t.heard is not None else t.text)}")
    return "\n".join(lines[-20:])  # the latest turns are what the person needs


async def from_llm(
    responder: LLMResponderConfig,
    transcript: Transcript,
    budget_s: float,
    *,
    http: httpx.AsyncClient | None,
    env: Mapping[str, str] = os.environ,
) -> str:
    """One sentence from the profile's LLM; raises on timeout, error or an empty answer."""
    llm = LLMResponder(
        base_url=responder.base_url,
        model=responder.model,
        api_key=env.get(responder.api_key_env, ""),
        system_prompt=LLM_PROMPT,
        max_tokens=80,
        token_limit_param=responder.token_limit_param,
        first_token_timeout_s=budget_s,
        actions=False,
        http=http,
    )
    try:
        async with asyncio.timeout(budget_s):
            text = await llm.respond([], _conversation(transcript)).text()
    finally:
        await llm.aclose()
    text = _words(" ".join(speakable(text).split()), MAX_WHISPER_WORDS)
    if not text:
        raise ValueError("the LLM wrote nothing")
    return text


async def build_whisper(
    profile: Profile,
    transcript: Transcript,
    *,
    http: httpx.AsyncClient | None = None,
    env: Mapping[str, str] = os.environ,
) -> Whisper | None:
    """The whisper for a transfer now, or None when the profile has none."""
    cfg = profile.whisper
    if cfg is None:
        return None
    if cfg.whisper_source == "llm" and isinstance(profile.responder, LLMResponderConfig):
        try:
            text = await from_llm(
                profile.responder, transcript, cfg.whisper_llm_ms / 1000, http=http, env=env
            )
        except Exception as exc:  # any failure: the template, at once
            log.warning("whisper: the LLM's failed (%s); using the template", type(exc).__name__)
        else:
            return Whisper(text, "llm")
    return Whisper(from_template(profile, cfg, transcript), "template")


class WhisperAhead:
    """A call's whisper, started as soon as a reply asks for a transfer (`start`), so an LLM
    writes it while the handover line plays rather than after. `get` at the transfer uses it
    if the caller has said nothing since; otherwise (a barge-in, a later transfer) it builds
    afresh. One task at most; `close` cancels it when the call ends."""

    def __init__(
        self, profile: Profile, transcript: Transcript, *, http: httpx.AsyncClient | None = None
    ) -> None:
        self._profile, self._transcript, self._http = profile, transcript, http
        self._task: asyncio.Task[Whisper | None] | None = None
        self._basis = -1  # the caller turns the task's whisper was built from

    def _caller_turns(self) -> int:
        return sum(1 for t in self._transcript.turns if t.role == "caller")

    def start(self) -> None:
        if self._profile.whisper is None:
            return
        if self._task is not None and self._basis == self._caller_turns():
            return  # already under way for this point of the conversation
        self.close()
        self._basis = self._caller_turns()
        coro = build_whisper(self._profile, self._transcript, http=self._http)
        self._task = asyncio.get_running_loop().create_task(coro, name="whisper")

    async def get(self) -> Whisper | None:
        self.start()
        return await self._task if self._task is not None else None

    def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._task = None
