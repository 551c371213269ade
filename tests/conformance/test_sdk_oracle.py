"""The oracle itself: its model tables name the SDK's types, and the strict check catches what
the SDK's own validation lets through."""

from __future__ import annotations

from typing import get_args

from deepgram.listen.v2 import types as flux_t

from tests.conformance.sdk_oracle import CLIENT_MODELS, SERVER_MODELS, conform, literal_values


def test_model_tables_match_the_sdk_type_names() -> None:
    """Each table entry is the SDK model whose `type` is that key (a typo would hide a gap)."""
    for table in (CLIENT_MODELS, SERVER_MODELS):
        for models in table.values():
            for name, model in models.items():
                if not isinstance(model, type):
                    continue  # a union alias (History)
                default = model.model_fields["type"].default
                literal = get_args(model.model_fields["type"].annotation)
                assert name == default or name in literal_values(literal), (name, model)


def test_the_strict_check_catches_what_the_sdk_lets_through() -> None:
    """The SDK's models allow unknown keys, coerce types and accept any enum value."""
    model = flux_t.ListenV2TurnInfo
    good = {
        "type": "TurnInfo",
        "request_id": "r",
        "sequence_id": 1,
        "event": "Update",
        "turn_index": 0,
        "audio_window_start": 0.0,
        "audio_window_end": 0.5,
        "transcript": "hi",
        "words": [{"word": "hi", "confidence": 0.9}],
        "end_of_turn_confidence": 0.1,
    }
    assert conform(model, good) == []
    for bad, why in [
        ({**good, "extra": 1}, "$.extra: unknown key"),
        ({**good, "turn_index": "0"}, "$.turn_index: expected int"),
        ({**good, "event": "Finished"}, "$.event: 'Finished' is not one of"),
        ({**good, "words": [{"word": "hi", "confidence": 0.9, "speaker": 0}]}, "unknown key"),
    ]:
        model.model_validate(bad)  # the SDK's own validation lets each of these through
        assert any(why in p for p in conform(model, bad)), (why, conform(model, bad))
    missing = {k: v for k, v in good.items() if k != "transcript"}
    assert any("$.transcript: missing" in p for p in conform(model, missing))
