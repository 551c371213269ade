"""Words of a transcript for matching phrases: lower case, punctuation and hyphens dropped,
apostrophes kept ("Mm-hmm." and "mm hmm" are the same two words; "d'accord" is one)."""

from __future__ import annotations

import re

_NOT_WORD = re.compile(r"[^\w']+")


def tokens(text: str) -> tuple[str, ...]:
    return tuple(t for t in _NOT_WORD.split(text.casefold()) if t.strip("'"))
