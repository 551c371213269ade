"""A call's turns as one text for `/v1/read`, and the read's segments mapped back onto turns.

Deepgram counts words as whitespace-separated tokens of the text it was sent, and a segment's
`start_word`..`end_word` are both inclusive (docs/protocol.md §9). Each turn becomes one line,
`Caller: …` / `Agent: …` / `Staff: …` (the speaker helps the summary name who did what), and
we keep every turn's word range, so a sentiment segment lands on the turns it overlaps.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from telephony.deepgram.read import Segment
from telephony.store.redact import redact

SPEAKERS = {"caller": "Caller:", "bot": "Agent:", "staff": "Staff:"}


@dataclass(frozen=True, slots=True)
class TurnWords:
    idx: int  # the turn's index in the call
    first: int  # its first and last word in the text, inclusive (the speaker label included)
    last: int


@dataclass(frozen=True, slots=True)
class ReadText:
    text: str
    turns: tuple[TurnWords, ...]


def _spoken(turn: Mapping[str, Any]) -> str:
    # The bot's words as the caller heard them (cut short by a barge-in), else as written.
    if turn.get("role") == "bot" and turn.get("heard") is not None:
        return str(turn["heard"])
    return str(turn.get("text") or "")


def build_text(turns: Iterable[Mapping[str, Any]], *, redaction: bool) -> ReadText:
    """The call as text, one line per turn with words. With `redaction`, each turn goes
    through the staff UI's redaction again (idempotent on stored, redacted text), so no
    card number or other PII that slipped into a row can leave the service."""
    lines: list[str] = []
    spans: list[TurnWords] = []
    count = 0
    for turn in turns:
        spoken = _spoken(turn)
        if redaction:
            spoken = redact(spoken).text
        words = spoken.split()
        if not words:
            continue
        line = [SPEAKERS.get(str(turn.get("role")), "Speaker:"), *words]
        spans.append(TurnWords(int(turn["idx"]), count, count + len(line) - 1))
        count += len(line)
        lines.append(" ".join(line))
    return ReadText("\n".join(lines), tuple(spans))


def turn_sentiments(
    turns: Sequence[TurnWords], segments: Sequence[Segment]
) -> list[dict[str, Any]]:
    """Per turn that any segment overlaps: the sentiment of the segment covering most of its
    words, and the score averaged over the words covered (weighted by overlap)."""
    out: list[dict[str, Any]] = []
    for turn in turns:
        best: tuple[int, str] = (0, "")
        weighted = covered = 0.0
        for seg in segments:
            overlap = min(turn.last, seg.end_word) - max(turn.first, seg.start_word) + 1
            if overlap <= 0:
                continue
            weighted += seg.score * overlap
            covered += overlap
            if overlap > best[0]:
                best = (overlap, seg.label)
        if covered:
            out.append(
                {"idx": turn.idx, "sentiment": best[1], "score": round(weighted / covered, 3)}
            )
    return out


def labels(segments: Iterable[Segment]) -> list[dict[str, Any]]:
    """Distinct topics or intents (case-insensitive), each with its highest confidence,
    most confident first."""
    best: dict[str, tuple[str, float]] = {}
    for seg in segments:
        key = seg.label.casefold()
        if key not in best or seg.score > best[key][1]:
            best[key] = (seg.label, seg.score)
    ranked = sorted(best.values(), key=lambda item: (-item[1], item[0].casefold()))
    return [{"label": label, "confidence": round(score, 3)} for label, score in ranked]
