"""The transcript as /v1/read text, segments mapped back onto turns, and the response read."""

from __future__ import annotations

from telephony.deepgram.read import ReadOptions, Segment, parse_response
from telephony.insights.text import build_text, labels, turn_sentiments

TURNS = [
    {"idx": 0, "role": "bot", "text": "Hello, how can I help?", "heard": None},
    {"idx": 1, "role": "caller", "text": "My card is 4111 1111 1111 1111 thanks", "heard": None},
    {"idx": 2, "role": "bot", "text": "Sorry, we cannot do that today.", "heard": "Sorry, we"},
    {"idx": 3, "role": "caller", "text": "   ", "heard": None},  # no words: not sent
    {"idx": 4, "role": "staff", "text": "Let me help.", "heard": None},
]


def test_each_turn_is_a_line_with_its_speaker_and_word_range() -> None:
    text = build_text(TURNS, redaction=False)
    assert text.text.splitlines() == [
        "Agent: Hello, how can I help?",
        "Caller: My card is 4111 1111 1111 1111 thanks",
        "Agent: Sorry, we",  # what the caller heard of an interrupted reply
        "Staff: Let me help.",
    ]
    words = text.text.split()
    for span, line in zip(text.turns, text.text.splitlines(), strict=True):
        assert " ".join(words[span.first : span.last + 1]) == line
    assert [s.idx for s in text.turns] == [0, 1, 2, 4]


def test_redaction_replaces_what_staff_would_not_see() -> None:
    text = build_text(TURNS, redaction=True)
    assert "4111" not in text.text
    assert "Caller: My card is [REDACTED:card] thanks" in text.text
    # Ranges follow the redacted words, not the original ones.
    words = text.text.split()
    caller = text.turns[1]
    assert words[caller.first : caller.last + 1][-1] == "thanks"


def test_segments_land_on_the_turns_they_overlap() -> None:
    text = build_text(TURNS, redaction=True)
    assert [(t.first, t.last) for t in text.turns] == [(0, 5), (6, 11), (12, 14), (15, 18)]
    segments = [
        Segment(0, 5, "positive", 0.6),  # exactly turn 0
        Segment(6, 13, "negative", -0.8),  # turn 1 and two words of turn 2
        Segment(14, 14, "neutral", 0.0),  # the last word of turn 2
    ]
    got = {t["idx"]: (t["sentiment"], t["score"]) for t in turn_sentiments(text.turns, segments)}
    assert got == {
        0: ("positive", 0.6),
        1: ("negative", -0.8),
        2: ("negative", round((-0.8 * 2 + 0.0) / 3, 3)),  # most words, score weighted
    }  # turn 4: no segment, no sentiment


def test_labels_are_distinct_by_case_most_confident_first() -> None:
    segs = [
        Segment(0, 1, "Refund request", 0.5),
        Segment(2, 3, "refund request", 0.9),
        Segment(2, 3, "Billing", 0.7),
    ]
    assert labels(segs) == [
        {"label": "refund request", "confidence": 0.9},
        {"label": "Billing", "confidence": 0.7},
    ]


def test_the_response_is_read_as_documented() -> None:
    body = {
        "metadata": {"metadata": {"request_id": "r1"}},
        "results": {
            "summary": {"text": " The caller wants a refund. "},
            "sentiments": {
                "segments": [
                    {
                        "text": "a",
                        "start_word": 0,
                        "end_word": 3,
                        "sentiment": "negative",
                        "sentiment_score": -0.5,
                    },
                ],
                "average": {"sentiment": "negative", "sentiment_score": -0.5},
            },
            "topics": {
                "segments": [
                    {
                        "text": "a",
                        "start_word": 0,
                        "end_word": 3,
                        "topics": [{"topic": "Refund", "confidence_score": 0.8}],
                    }
                ]
            },
            "intents": {
                "segments": [
                    {
                        "text": "a",
                        "start_word": 1,
                        "end_word": 2,
                        "intents": [{"intent": "Get refund", "confidence_score": 0.7}],
                    }
                ]
            },
        },
    }
    got = parse_response(body)
    assert (got.request_id, got.summary, got.sentiment, got.sentiment_score) == (
        "r1",
        "The caller wants a refund.",
        "negative",
        -0.5,
    )
    assert got.sentiments == (Segment(0, 3, "negative", -0.5),)
    assert got.topics == (Segment(0, 3, "Refund", 0.8),)
    assert got.intents == (Segment(1, 2, "Get refund", 0.7),)
    assert parse_response({"results": {}}).summary == ""


def test_switches_that_are_off_are_not_sent() -> None:
    assert ReadOptions(topics=True).query() == {"language": "en", "topics": "true"}
