"""A profile's `transfer:` section: where a transfer goes and what the person hears first.

`transfer: {number, whisper, ...}` is the long form of `transfer_number`. With `whisper: true`
the person who answers hears a short line about the caller (built from the conversation)
before the two are connected; the caller keeps hearing the ring meanwhile. The whisper is a
template filled from the conversation, or (`whisper_source: llm`, flux profiles with an LLM
responder) written by the responder's LLM within `whisper_llm_ms`, the template otherwise.
"""

from __future__ import annotations

import re
import string
from typing import Annotated, Literal

from pydantic import AfterValidator, Field
from pydantic_core import PydanticCustomError

from telephony.config.fields import E164, between
from telephony.config.model import ConfigModel

# What a template may say: the caller's last request, what the bot last told them (before the
# handover line), and why the call is being transferred.
WHISPER_FIELDS = ("request", "told", "reason")
DEFAULT_WHISPER_TEMPLATE = "Transferring a caller. They said: {request}. {reason}"
MAX_WHISPER_WORDS = 25  # spoken before the person is connected: a few seconds, no more
# Twilio <Say> voices: the basic ones and Amazon Polly / Google voices by name.
_VOICE_RE = re.compile(r"^(man|woman|alice|(Polly|Google)\.[A-Za-z0-9_.-]{1,60})$")
_LANGUAGE_RE = re.compile(r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$")


def _template(value: str) -> str:
    try:
        parts = list(string.Formatter().parse(value))
    except ValueError as exc:
        raise PydanticCustomError(
            "whisper_template", "not a valid template: {why}", {"why": str(exc)}
        ) from exc
    for _, name, spec, conversion in parts:
        if name is None:
            continue
        if name not in WHISPER_FIELDS or spec or conversion:
            raise PydanticCustomError(
                "whisper_template",
                "unknown placeholder {name}; use {fields}",
                {
                    "name": "{" + name + "}",
                    "fields": ", ".join("{" + f + "}" for f in WHISPER_FIELDS),
                },
            )
    fixed = string.Formatter().vformat(value, (), dict.fromkeys(WHISPER_FIELDS, ""))
    if len(fixed.split()) > MAX_WHISPER_WORDS:
        raise PydanticCustomError(
            "whisper_template",
            "too long: at most {n} words are spoken before the person is connected",
            {"n": MAX_WHISPER_WORDS},
        )
    return value


def _voice(value: str) -> str:
    if not _VOICE_RE.match(value):
        raise PydanticCustomError(
            "whisper_voice", "a Twilio <Say> voice: man, woman, alice, Polly.<Name>, Google.<name>"
        )
    return value


def _language(value: str) -> str:
    if not _LANGUAGE_RE.match(value):
        raise PydanticCustomError("whisper_language", "a language tag such as en-US")
    return value


class TransferConfig(ConfigModel):
    number: E164  # the person (or team) a transfer dials
    whisper: bool = False  # tell them about the caller before connecting them
    whisper_template: Annotated[
        str, Field(min_length=1, max_length=300), AfterValidator(_template)
    ] = DEFAULT_WHISPER_TEMPLATE
    whisper_source: Literal["template", "llm"] = "template"
    # The LLM's budget: past it (or on any error) the template is used; the transfer never
    # waits longer than this for its whisper.
    whisper_llm_ms: Annotated[int, between(100, 3000)] = 800
    whisper_voice: Annotated[str, AfterValidator(_voice)] | None = None  # Twilio's default
    whisper_language: Annotated[str, AfterValidator(_language)] | None = None
