"""A profile's `barge_in:` section: how caller speech over the bot interrupts it.

`immediate` (the default) interrupts at Flux's StartOfTurn. `smart` keeps the bot talking
while the caller's words are only backchannels ("mm-hmm", "yeah", "I see"): the session
decides on the first words Flux reports, within `max_decision_ms` (telephony/session/
barge_in.py). The phrase lists are per language; a profile may replace them.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field
from pydantic_core import PydanticCustomError

from telephony.config.fields import between
from telephony.config.model import ConfigModel
from telephony.text_tokens import tokens

# Short acknowledgements a listener says while the other one talks, by language. Each is
# matched as a whole phrase of words; hyphens and punctuation do not matter ("Mm-hmm." is
# "mm hmm"). "Yes" and "no" are left out on purpose: they often answer the bot.
DEFAULT_BACKCHANNELS: dict[str, tuple[str, ...]] = {
    "en": (
        "mm-hmm", "mhm", "mm", "hmm", "uh-huh", "uh huh", "yeah", "yep", "yup", "okay", "ok",
        "right", "sure", "I see", "got it", "alright", "all right", "cool", "ah", "oh", "aha",
    ),
    "es": ("ajá", "aha", "sí sí", "vale", "claro", "ya", "bueno", "de acuerdo", "ok", "mhm"),
    "fr": ("ouais", "d'accord", "ok", "ah bon", "je vois", "oui oui", "mhm", "hmm"),
    "de": ("ja ja", "genau", "okay", "ok", "ach so", "aha", "mhm", "hm", "stimmt", "klar"),
    "nl": ("ja ja", "oké", "ok", "precies", "klopt", "aha", "mhm", "hm"),
    "it": ("sì sì", "certo", "ok", "va bene", "capisco", "ah", "mhm", "ecco"),
    "pt": ("aham", "sim sim", "certo", "tá", "ok", "entendi", "mhm"),
}  # fmt: skip


def _phrases(value: list[str]) -> list[str]:
    for phrase in value:
        if not tokens(phrase):
            raise PydanticCustomError("backchannel", f"{phrase!r} has no words")
    return value


class BargeInConfig(ConfigModel):
    mode: Literal["immediate", "smart"] = "immediate"
    # smart: caller words that are not backchannels needed to interrupt before the deadline
    min_words: Annotated[int, between(1, 10)] = 1
    # smart: after StartOfTurn, decide by then: words so far only backchannels keep the bot
    # talking; no words yet interrupt (the caller may be saying anything)
    max_decision_ms: Annotated[int, between(100, 2000)] = 600
    # smart: replaces the default phrases of every language (DEFAULT_BACKCHANNELS)
    backchannels: Annotated[list[str], AfterValidator(_phrases), Field(max_length=200)] | None = (
        None
    )
