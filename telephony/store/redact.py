"""Redact PII (cards, SSNs, phone numbers, emails) from speech-recognition transcripts.

Numbers in ASR output come as digits ("4111 1111"), spoken words ("four one one one",
"oh" for 0, "double five"), or a mix, with separators ("-", ".", ",", "dash").
The text is tokenized, each token mapped to digits, maximal runs of digit tokens are
found and classified by digit count / Luhn / grouping shape, and the matching spans of
the ORIGINAL text are replaced by ``[REDACTED:<kind>]`` markers.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, replace

from telephony.transcript import Turn

__all__ = ["Redacted", "Span", "StreamRedactor", "redact"]


@dataclass(frozen=True)
class Span:
    start: int  # offsets into the ORIGINAL text
    end: int
    kind: str  # "card" | "ssn" | "phone" | "email"


@dataclass(frozen=True)
class Redacted:
    text: str
    spans: tuple[Span, ...]


# --------------------------------------------------------------------------- emails

_W = r"[a-z0-9](?:[a-z0-9_+%-]*[a-z0-9])?"
_LOCAL_JOIN = r"(?:\.|\s+(?:dot|underscore|dash|hyphen|period)\s+)"
_DOT = r"(?:\.|\s+dot\s+)"
_AT = r"(?:\s*@\s*|\s+at\s+)"
_TLD = r"(?:com|net|org|edu|gov|mil|io|co|us|uk|ca|au|de|fr|in|info|biz|me|ai|app|dev|ly|tv)"
_LOCAL = rf"{_W}(?:{_LOCAL_JOIN}{_W})*"

_PLAIN_EMAIL_RE = re.compile(r"(?<![\w.+%-])[\w.+%-]+@[\w-]+(?:\.[\w-]+)*\.[a-z]{2,}\b", re.I)
# Spoken or mixed: "john dot smith at example dot com", "jane@example dot com".
_SPOKEN_EMAIL_RE = re.compile(
    rf"(?<![\w.@])(?P<local>{_LOCAL}){_AT}{_W}(?:{_DOT}{_W})*?{_DOT}{_TLD}\b", re.I
)
# Words that precede a spoken "at <site> dot com" without being a mailbox name.
_NOT_LOCAL = frozenset(
    {
        "me",
        "us",
        "you",
        "him",
        "her",
        "them",
        "it",
        "is",
        "was",
        "are",
        "be",
        "here",
        "there",
        "look",
        "online",
        "site",
        "website",
        "email",
        "mail",
        "address",
        "up",
        "out",
        "back",
        "in",
        "on",
        "visit",
        "go",
        "find",
        "reach",
        "contact",
        "available",
    }
)
# Tail of a stream that may be an email still being spoken ("john dot smith at").
_EMAIL_TAIL_RE = re.compile(
    rf"(?<![\w.@]){_LOCAL}"
    rf"(?:(?:\s*@|\s+at\b)\s*(?:{_W}(?:{_DOT}{_W})*)?(?:\s+dot|\.)?|\s+dot|\.)?\s*$",
    re.I,
)
_EMAIL_TAIL_HINT_RE = re.compile(r"@|\bat\b|\bdot\s*$", re.I)


def _email_spans(text: str) -> list[Span]:
    spans = [Span(m.start(), m.end(), "email") for m in _PLAIN_EMAIL_RE.finditer(text)]
    for m in _SPOKEN_EMAIL_RE.finditer(text):
        if m.group("local").lower() in _NOT_LOCAL:
            continue
        if not any(s.start < m.end() and m.start() < s.end for s in spans):
            spans.append(Span(m.start(), m.end(), "email"))
    return spans


# -------------------------------------------------------------------------- numbers

_TOKEN_RE = re.compile(r"(?P<num>\d+)|(?P<word>[A-Za-z]+(?:'[A-Za-z]+)?)|(?P<punct>\S)")
_DIGIT_WORDS = {
    "zero": "0",
    "oh": "0",
    "o": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
}
_MULTIPLIERS = {"double": 2, "triple": 3}
_SEP_WORDS = frozenset({"dash", "hyphen"})
_SEP_CHARS = frozenset("-,/()")
_CURRENCY = ("$", "€", "£", "¥")
_MAX_DIGITS = 19  # longest card number


@dataclass(frozen=True)
class _Tok:
    kind: str  # "digit" | "mult" | "sep" | "other"
    start: int
    end: int
    value: str = ""  # digits for "digit"; repeat count for "mult"
    literal: bool = False  # written as digits rather than words


@dataclass(frozen=True)
class _Unit:
    """One digit-bearing unit: a token, or "double"/"triple" + the digit it repeats."""

    start: int
    end: int
    digits: str
    literal: bool
    new_group: bool  # a separator (or a space between two digit literals) precedes it


def _tokenize(text: str, blocked: list[Span]) -> list[_Tok]:
    toks: list[_Tok] = []
    for m in _TOKEN_RE.finditer(text):
        s, e = m.span()
        if any(b.start <= s < b.end for b in blocked):
            toks.append(_Tok("other", s, e))
        elif m.group("num"):
            toks.append(_Tok("digit", s, e, m.group(), literal=True))
        elif word := m.group("word"):
            w = word.lower()
            if w in _DIGIT_WORDS:
                toks.append(_Tok("digit", s, e, _DIGIT_WORDS[w]))
            elif w in _MULTIPLIERS:
                toks.append(_Tok("mult", s, e, str(_MULTIPLIERS[w])))
            elif w in _SEP_WORDS:
                toks.append(_Tok("sep", s, e))
            else:
                toks.append(_Tok("other", s, e))
        else:
            c = m.group()
            # "." only separates digit groups inside a token ("555.123"), not at sentence end.
            inner_dot = c == "." and e < len(text) and not text[e].isspace()
            toks.append(_Tok("sep" if c in _SEP_CHARS or inner_dot else "other", s, e))
    return toks


def _runs(text: str, toks: list[_Tok]) -> list[list[_Unit]]:
    """Maximal runs of digit units joined only by separators."""
    runs: list[list[_Unit]] = []
    run: list[_Unit] = []
    sep_seen = False
    i = 0
    while i < len(toks):
        t = toks[i]
        unit: _Unit | None = None
        if t.kind == "digit":
            unit = _Unit(t.start, t.end, t.value, t.literal, False)
        elif t.kind == "mult" and i + 1 < len(toks):
            nxt = toks[i + 1]
            if nxt.kind == "digit" and len(nxt.value) == 1:
                unit = _Unit(t.start, nxt.end, nxt.value * int(t.value), nxt.literal, False)
                i += 1
        if unit is not None:
            if run:
                prev = run[-1]
                gap_space = unit.start > prev.end
                new = sep_seen or (prev.literal and unit.literal and gap_space)
                unit = _Unit(unit.start, unit.end, unit.digits, unit.literal, new)
            run.append(unit)
            sep_seen = False
        elif t.kind == "sep":
            sep_seen = True
        else:  # anything else (including a dangling "double") ends the run
            if run:
                runs.append(run)
            run, sep_seen = [], False
        i += 1
    if run:
        runs.append(run)
    return runs


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _shape(units: list[_Unit]) -> list[int]:
    groups: list[int] = []
    for k, u in enumerate(units):
        if k == 0 or u.new_group:
            groups.append(0)
        groups[-1] += len(u.digits)
    return groups


# Groupings as people usually say/write them; a window with one of these wins over a
# longer one that merely has the right digit count (e.g. two phones in a row).
_CANONICAL = {
    "phone": ([3, 3, 4], [1, 3, 3, 4]),
    "ssn": ([3, 2, 4],),
    "card": ([4, 4, 4, 4], [4, 6, 5], [4, 4, 4, 4, 3]),
}


def _classify(units: list[_Unit], plus: bool) -> tuple[str, int] | None:
    """(kind, score) for a window of digit units; higher score = more certain."""
    digits = "".join(u.digits for u in units)
    n = len(digits)
    if plus:
        return ("phone", 4) if 8 <= n <= 15 else None
    kind: str | None = None
    score = 2
    if 13 <= n <= _MAX_DIGITS and (n in (15, 16) or _luhn(digits)):
        kind = "card"
        score += _luhn(digits)
    elif (n == 10 and digits[0] in "23456789") or (
        n == 11 and digits[0] == "1" and digits[1] in "23456789"
    ):
        kind = "phone"
    elif n == 9 and _shape(units) in ([9], [3, 2, 4]):
        kind = "ssn"
    if kind is None:
        return None
    return kind, score + 2 * (_shape(units) in _CANONICAL[kind])


def _number_spans(text: str, blocked: list[Span]) -> list[Span]:
    spans: list[Span] = []
    for run in _runs(text, _tokenize(text, blocked)):
        if sum(len(u.digits) for u in run) < 9:
            continue  # too short for any kind
        # Scan windows left to right; at each start take the best-scoring, then longest,
        # window. A whole run normally matches at once; otherwise stray edge words
        # ("oh", "one"), a trailing CVV or a second number are split off.
        i = 0
        while i < len(run):
            before = text[: run[i].start]
            if before.rstrip().endswith(_CURRENCY):
                i += 1
                continue
            plus = before.endswith("+")
            best: tuple[int, int, str] | None = None  # (score, end, kind)
            n = 0
            for j in range(i + 1, len(run) + 1):
                n += len(run[j - 1].digits)
                if n > _MAX_DIGITS:
                    break
                if (hit := _classify(run[i:j], plus)) and (best is None or hit[1] >= best[0]):
                    best = (hit[1], j, hit[0])
            if best is None:
                i += 1
                continue
            _, j, kind = best
            start = run[i].start - 1 if before.endswith(("+", "(")) else run[i].start
            spans.append(Span(start, run[j - 1].end, kind))
            i = j
    return spans


# ---------------------------------------------------------------------------- API


def _find_spans(text: str) -> list[Span]:
    emails = _email_spans(text)
    return sorted(emails + _number_spans(text, emails), key=lambda s: s.start)


def redact(text: str) -> Redacted:
    """Replace PII in ``text`` with ``[REDACTED:<kind>]``; spans index the original text."""
    spans = _find_spans(text)
    if not spans:
        return Redacted(text, ())
    out: list[str] = []
    pos = 0
    for s in spans:
        out.append(text[pos : s.start])
        out.append(f"[REDACTED:{s.kind}]")
        pos = s.end
    out.append(text[pos:])
    return Redacted("".join(out), tuple(spans))


class StreamRedactor:
    """Redacts successive final texts of one speaker, holding back an unfinished number.

    A number may be split across Flux updates or turns ("my card is four one one one" |
    "one one one one ..."). The trailing run of digit words/separators (and a possibly
    unfinished spoken email) is held until the next push or ``flush()`` so no partial
    number is ever emitted unredacted. Returned pieces are whitespace-trimmed; join them
    with a space.
    """

    def __init__(self, hold_words: int = 24) -> None:
        self.hold_words = hold_words
        self._held = ""

    def push(self, text: str) -> str:
        buf = f"{self._held} {text}" if self._held else text
        cut = self._hold_from(buf)
        self._held = buf[cut:].strip()
        return redact(buf[:cut]).text.strip()

    def flush(self) -> str:
        buf, self._held = self._held, ""
        return redact(buf).text.strip()

    def _hold_from(self, buf: str) -> int:
        """Offset where the possibly-unfinished tail of ``buf`` starts (len(buf) if none)."""
        cut = len(buf)
        toks = _tokenize(buf, _email_spans(buf))
        k = len(toks)
        while k > 0 and toks[k - 1].kind in ("digit", "mult", "sep"):
            k -= 1
        tail = toks[k:]
        while tail and tail[0].kind == "sep" and tail[0].end <= tail[-1].start:
            tail = tail[1:]  # leading separators can be emitted
        if any(t.kind in ("digit", "mult") for t in tail):
            cut = tail[0].start
            if buf[:cut].endswith(("+", "(")):
                cut -= 1
        m = _EMAIL_TAIL_RE.search(buf)
        if m and _EMAIL_TAIL_HINT_RE.search(m.group()):
            cut = min(cut, m.start())
        held_words = len(_TOKEN_RE.findall(buf[cut:]))
        digits = sum(len(t.value) for t in tail if t.kind == "digit")
        if held_words > self.hold_words or digits > _MAX_DIGITS:
            return len(buf)  # too long to be one number: release it (redacted as is)
        return cut


def redacted_turn(turn: Turn) -> Turn:
    """A copy of `turn` with card numbers, SSNs, phone numbers and emails replaced; the
    spans (offsets in the original text) are kept in meta["redacted"] for the UI."""
    text, heard = redact(turn.text), redact(turn.heard) if turn.heard else None
    spans = [(s.start, s.end, s.kind) for s in text.spans]
    meta = {**turn.meta, "redacted": spans} if spans else dict(turn.meta)
    return replace(turn, text=text.text, heard=heard.text if heard else turn.heard, meta=meta)


# Deepgram's own redaction (a profile's `redact:` Nova option) leaves tokens such as [PCI_1] or
# [SSN] where the words were: the audio under them still holds what was said.
_DEEPGRAM_MARK = re.compile(r"\[(?:PCI|SSN|NUMBER|NUMBERS|REDACTED)[A-Z_]*(?:_\d+)?\]")
AUDIO_MARGIN_MS = 250


def needs_silence(text: str | None) -> bool:
    """Whether a turn's words held something the transcript redacts."""
    if not text:
        return False
    return bool(_find_spans(text)) or _DEEPGRAM_MARK.search(text) is not None


def audio_spans(
    turns: Iterable[Turn], roles: Iterable[str], margin_ms: int = AUDIO_MARGIN_MS
) -> list[tuple[int, int]]:
    """Call-clock spans (ms) of the recording to silence: every turn of `roles` whose text (or,
    for the bot, what was heard) the transcript redacts, the whole turn plus `margin_ms` each
    side. Whole turns: the stored turns keep no word times, and a redacted span must not
    leave the number's first or last digit audible."""
    wanted = set(roles)
    return [
        (max(0, t.start_ms - margin_ms), t.end_ms + margin_ms)
        for t in turns
        if t.role in wanted and (needs_silence(t.text) or needs_silence(t.heard))
    ]
