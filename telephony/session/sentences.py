"""Sentences for TTS: Flux mode speaks a streamed reply sentence by sentence into Aura."""

from __future__ import annotations

import re

# Words that end in "." without ending a sentence (compared lower-case, without the final ".").
ABBREVIATIONS = frozenset(
    {"mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "mt", "vs", "etc", "approx", "dept"}
    | {"fig", "inc", "ltd", "co", "corp", "e.g", "i.e"}
)
MAX_CHUNK_CHARS = 200  # an unpunctuated run longer than this is cut at a comma or space
_MIN_COMMA_CUT = 40  # a comma this early would leave a long remainder: cut at a space instead
# Terminators (with closing quotes/brackets) followed by whitespace, or a newline. A terminator
# at the very end of the buffer waits for the next delta: "3." may become "3.5", ".." "...".
_BOUNDARY = re.compile(r"[.!?…]+[\"'”’)\]]*(?=\s)|\n")
_LAST_WORD = re.compile(r"(\S+)$")
_INITIALISM = re.compile(r"(?:[A-Za-z]\.)*[A-Za-z]")  # "J", "U.S", "a.m"


class SentenceChunker:
    """Streamed text deltas in, complete sentences out (stripped, never empty)."""

    def __init__(self, max_chars: int = MAX_CHUNK_CHARS) -> None:
        self._buf = ""
        self._max_chars = max_chars

    def push(self, delta: str) -> list[str]:
        self._buf += delta
        out: list[str] = []
        start = 0
        for m in _BOUNDARY.finditer(self._buf):
            if m.group() == "." and self._is_abbreviation(m.start()):
                continue
            _append(out, self._buf[start : m.end()])
            start = m.end()
        self._buf = self._buf[start:]
        while len(self._buf) > self._max_chars:
            cut = self._long_cut()
            _append(out, self._buf[:cut])
            self._buf = self._buf[cut:]
        return out

    def flush(self) -> str | None:
        rest, self._buf = self._buf.strip(), ""
        return rest or None

    def _is_abbreviation(self, dot: int) -> bool:
        word = _LAST_WORD.search(self._buf, 0, dot)
        if word is None:
            return False
        token = word.group(1).lstrip("\"'“‘([")
        return token.lower() in ABBREVIATIONS or _INITIALISM.fullmatch(token) is not None

    def _long_cut(self) -> int:
        window = self._buf[: self._max_chars]
        comma = window.rfind(",")
        if comma >= _MIN_COMMA_CUT:
            return comma + 1
        space = max(window.rfind(" "), window.rfind("\t"))
        return space if space > 0 else self._max_chars


def _append(out: list[str], piece: str) -> None:
    piece = piece.strip()
    if piece:
        out.append(piece)
