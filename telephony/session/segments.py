"""Bot speech as the caller heard it: segments of text over spans of played audio.

A `Segment` is the playout's `Span` (audio, marks, what played: telephony/twilio/playout.py)
with the words it carries; a reply's `Ledger` lists its segments in order. `BotSpeech`
(telephony/session/speech.py) owns them for every engine, so what the caller heard is one
computation in every mode.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from telephony.audio import FRAME_MS
from telephony.twilio.playout import Span, SpanState

# With no measured rate yet, speech runs at about this many ms per character (Aura speaks
# ~150 words a minute: ~14 characters a second, spaces included).
DEFAULT_MS_PER_CHAR = 65


@dataclass(slots=True)
class Segment(Span):
    """A span of bot speech with its text: the unit of the heard-text ledger. When the
    speech source died before sending all of it (`complete` False), its text says more than
    its audio."""

    text: str = ""

    def heard(self, ms_per_char: float = DEFAULT_MS_PER_CHAR) -> tuple[str, bool]:
        """The text the caller heard, and whether it is an estimate (part of the segment).

        All of it once the closing mark echoed for complete audio. Otherwise the words in
        proportion to the audio played, out of the audio the whole text takes: the audio
        received if complete, else at least what the text takes at `ms_per_char`.
        """
        played = min(self.played_ms, self.audio_ms)
        if self.complete and (self.state is SpanState.PLAYED or played >= self.audio_ms):
            return self.text, False
        full = self.audio_ms if self.complete else max(self.audio_ms, len(self.text) * ms_per_char)
        if played <= 0 or full <= 0:
            return "", bool(self.text)
        if played >= full - FRAME_MS:
            return self.text, False
        return words_within(self.text, len(self.text) * played / full), True


def words_within(text: str, chars: float) -> str:
    """The words of `text` whose middle falls within its first `chars` characters."""
    out: list[str] = []
    pos = 0
    for word in text.split():
        start = text.index(word, pos)
        pos = start + len(word)
        if start + len(word) / 2 > chars:
            break
        out.append(word)
    return " ".join(out)


@dataclass
class Ledger:
    """Segments in order; heard text is what the caller heard of each."""

    segments: list[Segment] = field(default_factory=list)

    def heard(self, ms_per_char: float = DEFAULT_MS_PER_CHAR) -> tuple[str, bool]:
        """The heard text of every segment, and whether any of it is an estimate."""
        parts = [s.heard(ms_per_char) for s in self.segments]
        return " ".join(t for t, _ in parts if t), any(e for _, e in parts)

    def heard_text(self, ms_per_char: float = DEFAULT_MS_PER_CHAR) -> str:
        return self.heard(ms_per_char)[0]

    def generated_text(self) -> str:
        return " ".join(s.text for s in self.segments if s.text)
