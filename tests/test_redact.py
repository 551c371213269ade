"""Table-driven tests for transcript PII redaction (telephony.store.redact)."""

from __future__ import annotations

import pytest

from telephony.store.redact import Redacted, Span, StreamRedactor, redact

C, S, P, E = "[REDACTED:card]", "[REDACTED:ssn]", "[REDACTED:phone]", "[REDACTED:email]"

# (id, transcript text, expected redacted text)
CASES = [
    # --- cards
    ("card-spaces", "my card is 4111 1111 1111 1111 thanks", f"my card is {C} thanks"),
    ("card-dashes", "it's 4111-1111-1111-1111.", f"it's {C}."),
    ("card-run-together-luhn", "number 5105105105105100 ok", f"number {C} ok"),
    (
        "card-spoken",
        "four one one one one one one one one one one one one one one one",
        C,
    ),
    ("card-mixed", "its 4 one 1 one 1111 one one one one 1111 yes", f"its {C} yes"),
    (
        "card-oh-as-zero",
        "four oh oh oh, one two three four, five six seven eight, nine oh one two",
        C,
    ),
    ("card-double-triple", "four triple one, double one double one, 1111, triple one one", C),
    ("card-dash-word", "4111 dash 1111 dash 1111 dash 1111", C),
    ("card-amex-15", "amex 3782 822463 10005 please", f"amex {C} please"),
    ("card-13-luhn", "old visa 4222222222222", f"old visa {C}"),
    ("card-trailing-cvv", "4111 1111 1111 1111 123", f"{C} 123"),
    # --- SSNs
    ("ssn-dashes", "ssn is 123-45-6789.", f"ssn is {S}."),
    ("ssn-spaces", "social 123 45 6789", f"social {S}"),
    (
        "ssn-spoken",
        "it's one two three dash four five dash six seven eight nine",
        f"it's {S}",
    ),
    ("ssn-spoken-run", "one two three four five six seven eight nine", S),
    # --- phones
    ("phone-parens", "call (555) 123-4567 now", f"call {P} now"),
    ("phone-e164", "reach me on +1 415 555 0100", f"reach me on {P}"),
    ("phone-e164-uk", "it's +44 20 7946 0958", f"it's {P}"),
    ("phone-dots", "555.123.4567", P),
    ("phone-11-digit", "1-800-555-0199", P),
    (
        "phone-spoken",
        "call me at five five five, one two three, four five six seven",
        f"call me at {P}",
    ),
    ("phone-double-triple", "triple seven double five one two three four five", P),
    # --- emails
    ("email-plain", "mail jane.doe@example.co.uk.", f"mail {E}."),
    ("email-spoken", "my email is jane at example dot com", f"my email is {E}"),
    ("email-spoken-dotted-local", "john dot smith at example dot com ok", f"{E} ok"),
    ("email-mixed", "it's jane@example dot org", f"it's {E}"),
    ("email-with-digits", "bob1975@mail.example.com", E),
    # --- two items in one sentence
    (
        "two-items",
        "card 4111-1111-1111-1111 and ssn 123 45 6789",
        f"card {C} and ssn {S}",
    ),
    ("phone-and-email", "call 415 555 0100 or jane at example dot com", f"call {P} or {E}"),
    ("two-phones-comma", "415 555 0100, 415 555 0199", f"{P}, {P}"),
    # --- NOT redacted (identity)
    ("order-number", "order number 12345", None),
    ("price", "it costs 49.99", None),
    ("price-large", "that's $2,345,678,901 total", None),
    ("two-kids", "I have two kids", None),
    ("year", "back in 2024 we moved", None),
    ("time", "see you at ten thirty", None),
    ("one-or-two", "one or two", None),
    ("oh-interjection", "oh I see, oh no", None),
    ("double-check", "let me double check that", None),
    ("zip-plus-4", "zip 94110-1234", None),
    ("short-phone-ext", "extension 4567", None),
    ("website-not-email", "visit us at example dot com", None),
    ("meet-at-time", "meet me at five dot thirty", None),
    ("twelve-digit-literal", "tracking 123456789012", None),
    ("non-luhn-17", "ref 12345678901234567", None),
    ("empty", "", None),
]


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_redact_table(text: str, expected: str | None) -> None:
    result = redact(text)
    if expected is None:  # nothing matches: identity
        assert result == Redacted(text, ())
    else:
        assert result.text == expected


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_spans_point_at_original(text: str, expected: str | None) -> None:
    # Replacing each span of the ORIGINAL text with its marker rebuilds the output.
    result = redact(text)
    out, pos = [], 0
    for s in result.spans:
        assert 0 <= pos <= s.start < s.end <= len(text)
        out += [text[pos : s.start], f"[REDACTED:{s.kind}]"]
        pos = s.end
    assert "".join([*out, text[pos:]]) == result.text


@pytest.mark.parametrize(
    ("text", "spans"),
    [
        ("call (555) 123-4567 now", [("(555) 123-4567", "phone")]),
        ("reach me on +1 415 555 0100", [("+1 415 555 0100", "phone")]),
        (
            "card 4111-1111-1111-1111 and ssn 123 45 6789",
            [("4111-1111-1111-1111", "card"), ("123 45 6789", "ssn")],
        ),
        ("my email is jane at example dot com.", [("jane at example dot com", "email")]),
        (
            "its 4 one 1 one 1111 one one one one 1111 yes",
            [("4 one 1 one 1111 one one one one 1111", "card")],
        ),
    ],
)
def test_span_substrings(text: str, spans: list[tuple[str, str]]) -> None:
    got = redact(text).spans
    assert [(text[s.start : s.end], s.kind) for s in got] == spans
    assert all(isinstance(s, Span) for s in got)


def test_stream_card_split_across_pushes() -> None:
    r = StreamRedactor()
    first = r.push("my card is four one one one")
    assert first == "my card is"  # the partial number is held, not leaked
    second = r.push("one one one one one one one one one one one one thanks")
    assert second == f"{C} thanks"
    assert r.flush() == ""
    assert "one" not in first + second


def test_stream_split_mid_group_digits() -> None:
    r = StreamRedactor()
    out = [r.push("card 4111 11"), r.push("11 1111 1111 ok"), r.flush()]
    assert out == ["card", f"{C} ok", ""]


def test_stream_phone_over_three_pushes() -> None:
    r = StreamRedactor()
    out = [
        r.push("call me at five five five"),
        r.push("one two three"),
        r.push("four five six seven."),
    ]
    assert out == ["call me at", "", f"{P}."]
    assert r.flush() == ""


def test_stream_email_split() -> None:
    r = StreamRedactor()
    out = [r.push("email john dot smith at"), r.push("example dot com please")]
    assert out == ["email", f"{E} please"]


def test_stream_flush_releases_non_pii() -> None:
    r = StreamRedactor()
    assert r.push("I have two") == "I have"
    assert r.flush() == "two"
    assert r.flush() == ""


def test_stream_plain_text_passes_through() -> None:
    r = StreamRedactor()
    assert r.push("hello there") == "hello there"
    assert r.push("how are you") == "how are you"
    assert r.flush() == ""


def test_stream_hold_limit_releases() -> None:
    r = StreamRedactor(hold_words=3)
    # more digit words than the hold limit: released at once (still redacted as a whole)
    assert r.push("one two three four five six seven eight nine") == S


def test_stream_flush_redacts_held_number() -> None:
    r = StreamRedactor()
    assert r.push("it's 4111 1111 1111 1111") == "it's"  # might still grow: held
    assert r.flush() == C


def test_stream_multiplier_at_push_boundary() -> None:
    r = StreamRedactor()
    out = [r.push("number is triple"), r.push("seven double five one two three four five thanks")]
    assert out == ["number is", f"{P} thanks"]
