"""The TTS sentence chunker: streamed deltas in, sentences out."""

from __future__ import annotations

import pytest

from telephony.session.sentences import SentenceChunker


def chunk_all(deltas: list[str]) -> list[str]:
    chunker = SentenceChunker()
    out = [s for d in deltas for s in chunker.push(d)]
    rest = chunker.flush()
    return [*out, rest] if rest is not None else out


@pytest.mark.parametrize(
    ("deltas", "expected"),
    [
        (["Hello there. How are you? I'm fine!"], ["Hello there.", "How are you?", "I'm fine!"]),
        (["Mr. Smith met Dr. Jones. Then left."], ["Mr. Smith met Dr. Jones.", "Then left."]),
        (["Bring ID, e.g. a passport. Thanks"], ["Bring ID, e.g. a passport.", "Thanks"]),
        (["See J. R. Smith. Next"], ["See J. R. Smith.", "Next"]),
        (["It costs 3.5 dollars. Ok."], ["It costs 3.5 dollars.", "Ok."]),
        (["It costs 3.", "5 dollars. Ok"], ["It costs 3.5 dollars.", "Ok"]),  # split decimal
        (["Meet at 10.", "30 tomorrow. Bye"], ["Meet at 10.30 tomorrow.", "Bye"]),  # time
        (["Press 1. Then 2."], ["Press 1.", "Then 2."]),
        (["Really?! Yes."], ["Really?!", "Yes."]),
        (["Really?", "! Yes."], ["Really?!", "Yes."]),
        (["Wait..", ". Okay then."], ["Wait...", "Okay then."]),  # split mid-"..."
        (["Hmm… fine."], ["Hmm…", "fine."]),
        (['He said "stop." Then went.'], ['He said "stop."', "Then went."]),
        (["First line\nSecond line\n\n  Third"], ["First line", "Second line", "Third"]),
        (["Hel", "lo wor", "ld. By", "e now."], ["Hello world.", "Bye now."]),  # mid-word
        (["Done.\n", "\n", "Next"], ["Done.", "Next"]),
        (["", "   ", "\n", " "], []),  # never empty pieces, flush None
    ],
)
def test_sentence_chunker(deltas: list[str], expected: list[str]) -> None:
    assert chunk_all(deltas) == expected


def test_chunker_emits_as_soon_as_a_sentence_is_complete() -> None:
    chunker = SentenceChunker()
    assert chunker.push("Sure.") == []  # might still become "Sure..." or a decimal
    assert chunker.push(" Let me") == ["Sure."]
    assert chunker.push(" check.\n") == ["Let me check."]
    assert chunker.flush() is None


def test_chunker_splits_long_unpunctuated_runs_at_spaces() -> None:
    text = "alpha beta gamma delta " * 20  # 460 chars, no punctuation
    pieces = chunk_all([text[i : i + 7] for i in range(0, len(text), 7)])
    assert len(pieces) == 3
    assert all(0 < len(p) <= 200 for p in pieces)
    assert " ".join(pieces) == text.strip()  # cut between words, nothing lost


def test_chunker_prefers_a_comma_for_long_runs() -> None:
    text = "word " * 20 + "and then, " + "more " * 30
    pieces = chunk_all([text])
    assert pieces[0].endswith("and then,")
    assert " ".join(pieces) == " ".join(text.split())
