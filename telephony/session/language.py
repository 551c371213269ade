"""Which language a Flux call is answered in, and what follows from it: the Aura voice, the fixed
phrases and what the responder is told.

The call starts in the profile's language: its `voice` speaks it, and its greeting, filler,
idle and apology texts are written in it (the greeting is said before anyone knows better). On
`flux-general-multi` each answered caller turn comes with the languages Flux detected, most
used first: the first one is the caller's language. The call is answered in it when the
profile has a voice for it (`voices:`), else in the profile's language: an Aura voice reading a
language it does not speak is worse than an answer in the profile's. A backchannel never
changes the language (it is not answered).
"""

from __future__ import annotations

from collections.abc import Sequence

from telephony.config import Profile
from telephony.config.filler import FillerConfig
from telephony.config.idle import IdleConfig
from telephony.deepgram import messages as dm
from telephony.responder import Message
from telephony.session.idle import config_of as idle_config_of

# The languages Flux hears, by name, for what the responder is told.
NAMES = {
    "en": "English", "es": "Spanish", "fr": "French", "de": "German", "hi": "Hindi",
    "ru": "Russian", "pt": "Portuguese", "ja": "Japanese", "it": "Italian", "nl": "Dutch",
}  # fmt: skip
APOLOGY = "Sorry, I'm having trouble right now. Could you say that again?"


class CallLanguage:
    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        self.home = dm.voice_language(profile.voice)  # the language of the profile's own texts
        self.multilingual = profile.flux.model == "flux-general-multi"
        self.voices = {self.home: profile.voice, **profile.voices}
        self.caller: str | None = None  # what Flux last said the caller spoke
        self.reply = self.home  # what the call is answered in

    def heard(self, languages: Sequence[str] | None) -> bool:
        """An answered turn's detected languages; True when the reply language changes."""
        if not self.multilingual or not languages:
            return False
        self.caller = dm.base_language(languages[0])
        reply = self.caller if self.caller in self.voices else self.home
        changed, self.reply = reply != self.reply, reply
        return changed

    @property
    def voice(self) -> str:
        return self.voices[self.reply]

    def instruction(self) -> list[Message]:
        """What the responder is told of the caller's language (nothing before it is known)."""
        if self.caller is None:
            return []
        heard = NAMES.get(self.caller, self.caller)
        answer = NAMES.get(self.reply, self.reply)
        text = f"The caller is speaking {heard}. Answer in {answer}."
        if self.caller != self.reply:
            text += f" (This line cannot speak {heard}.)"
        return [Message("system", text)]

    # --- fixed phrases in the reply language ----------------------------------------------------

    def _phrase(self, name: str) -> object | None:
        phrases = self.profile.phrases.get(self.reply) if self.reply != self.home else None
        return getattr(phrases, name) if phrases is not None else None

    @property
    def apology(self) -> str:
        return str(self._phrase("apology") or APOLOGY)

    def fillers(self) -> list[str]:
        filler: FillerConfig | None = self.profile.filler
        own = filler.phrases if filler is not None else []
        found = self._phrase("filler")
        return list(found) if isinstance(found, list) else list(own)

    def idle(self, config: IdleConfig) -> IdleConfig:
        """The idle policy with its reprompts and goodbye in the reply language."""
        reprompts, goodbye = self._phrase("reprompts"), self._phrase("goodbye")
        update: dict[str, object] = {}
        if isinstance(reprompts, list):
            update["messages"] = reprompts
        if isinstance(goodbye, str):
            update["goodbye"] = goodbye
        return config.model_copy(update=update) if update else config


def phrase_texts(profile: Profile) -> set[tuple[str, str]]:
    """(voice, text) of every fixed phrase a Flux call of `profile` may say, in every language it
    speaks (telephony/session/phrases.py caches them)."""
    wanted: set[tuple[str, str]] = set()
    language = CallLanguage(profile)
    idle = idle_config_of(profile)
    for code, voice in language.voices.items():
        language.reply = code
        texts = [language.apology, *language.fillers()]
        if code == language.home and profile.greeting:
            texts.append(profile.greeting)  # said before the caller speaks: always home
        if idle is not None:
            localized = language.idle(idle)
            texts += [*localized.messages, localized.goodbye]
        wanted.update((voice, text) for text in texts if text.strip())
    return wanted
