"""A profile's languages: `voices:` (the Aura voice per language) and `phrases:` (its fixed
phrases per language).

A Flux profile on `flux-general-multi` learns each caller turn's language from Flux and answers
in it when it has a voice for it (telephony/session/language.py). The profile's own texts
(greeting, filler, idle, apology) are in the language of its `voice`; `phrases.<language>`
gives them in another one, each one left out falling back to the profile's own. The greeting
has no other language: it is said before the caller has spoken.

    voice: aura-2-thalia-en
    voices: {es: aura-2-celeste-es}
    phrases:
      es: {filler: ["Un momento."], goodbye: "Adiós.", apology: "Lo siento, ¿puede repetirlo?"}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import Field, StringConstraints
from pydantic_core import PydanticCustomError

from telephony.config.model import ConfigModel
from telephony.deepgram import messages as dm

Phrase = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=500)]
# A base language code: the languages are Flux's and Aura's, which decide by the base language.
LanguageCode = Annotated[str, StringConstraints(pattern=r"^[a-z]{2}$")]


class PhraseSet(ConfigModel):
    """One language's fixed phrases; each unset one is the profile's own."""

    filler: Annotated[list[Phrase], Field(min_length=1)] | None = None  # filler.phrases
    reprompts: Annotated[list[Phrase], Field(min_length=1)] | None = None  # idle.messages
    goodbye: Phrase | None = None  # idle.goodbye
    apology: Phrase | None = None  # said when a reply cannot be produced


def check_voices(voices: dict[str, str], data: Mapping[str, Any]) -> dict[str, str]:
    """`voices:` of a profile whose earlier fields are `data`: one Aura voice per language it
    names, speaking that language."""
    if voices:
        _multilingual(data, "voices")
    for language, voice in voices.items():
        if language not in dm.AURA_LANGUAGES:
            raise PydanticCustomError(
                "voices",
                f"Aura has no voice for {language!r}: its voices speak "
                f"{', '.join(dm.AURA_LANGUAGES)}",
            )
        if dm.voice_language(voice) != language:
            raise PydanticCustomError(
                "voices", f"{voice} speaks {dm.voice_language(voice)!r}, not {language!r}"
            )
    return voices


def check_phrases(phrases: dict[str, PhraseSet], data: Mapping[str, Any]) -> dict[str, PhraseSet]:
    """`phrases:` of a profile whose earlier fields are `data`: only for languages a voice
    speaks, and only phrases the profile says at all."""
    if phrases:
        _multilingual(data, "phrases")
    spoken = set((data.get("voices") or {}).keys())
    if isinstance(data.get("voice"), str):
        spoken.add(dm.voice_language(data["voice"]))
    for language, phrase_set in phrases.items():
        if language not in spoken:
            raise PydanticCustomError(
                "phrases",
                f"no voice speaks {language!r}: add voices.{language} (voices speak "
                f"{', '.join(sorted(spoken))})",
            )
        if phrase_set.filler is not None and data.get("filler") is None:
            raise PydanticCustomError("phrases", f"{language}.filler: the profile has no filler")
        if (phrase_set.reprompts or phrase_set.goodbye) and data.get("idle") is None:
            raise PydanticCustomError(
                "phrases", f"{language}: reprompts and goodbye need the profile's idle section"
            )
    return phrases


def _multilingual(data: Mapping[str, Any], field: str) -> None:
    if data.get("mode") != "flux":
        raise PydanticCustomError(
            field, "only for flux profiles (the Voice Agent speaks with agent.speak_voice)"
        )
    flux = data.get("flux")
    if getattr(flux, "model", None) != "flux-general-multi":
        raise PydanticCustomError(
            field, "needs flux.model: flux-general-multi (flux-general-en hears English only)"
        )
