"""The YAML's QA sections (telephony/config/qa.py): errors with their lines, the scoring
arithmetic, whole-word phrases, and a hot reload picking up new tags and scorecards."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from telephony.config import ConfigError, ConfigStore, check, parse_config_text
from telephony.config.qa import Criterion, ReviewConfig, Scorecard

BASE = """\
profiles:
  support:
    mode: transcribe
    transcribe: {dial: "+15550001000"}
"""


def errors(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config_text(BASE + textwrap.dedent(text), "numbers.yaml")
    return info.value.errors


def test_qa_mistakes_are_reported_with_their_lines() -> None:
    found = errors(
        """\
        qa:
          tags: [follow-up, Follow Up]
          scorecards:
            basic:
              pass_mark: 101
              criteria:
                - {id: greet, label: Greeted}
                - {id: greet, label: Again, weight: 0}
              profiles: [support, ghost]
            empty:
              criteria: []
            token_check:
              criteria: [{id: a, label: A}]
        """
    )
    assert found == [
        "numbers.yaml:6: qa.tags[1]: must be 1 to 64 lowercase letters, digits, '-' or '_', "
        "like follow-up",
        "numbers.yaml:9: qa.scorecards.basic.pass_mark: must be at most 100.0",
        "numbers.yaml:12: qa.scorecards.basic.criteria[1].weight: must be greater than 0.0",
        "numbers.yaml:13: qa.scorecards.basic.profiles[1]: unknown profile (defined: support)",
        "numbers.yaml:15: qa.scorecards.empty.criteria: List should have at least 1 item after "
        "validation, not 0",
    ]  # a scorecard named like a secret ("token_check") is a name, not a secret field
    assert errors("qa:\n  tags: [a, b, a]\n") == ["numbers.yaml:6: qa.tags: duplicate tags: a"]
    dupes = "qa:\n  scorecards:\n    s: {criteria: [{id: a, label: A}, {id: a, label: B}]}\n"
    assert errors(dupes) == ["numbers.yaml:7: qa.scorecards.s.criteria: duplicate criterion ids: a"]


def test_review_thresholds_are_checked_per_profile() -> None:
    text = BASE + "    review: {latency_ms: 0, barge_ins: 1, human_phrases: ['  '], x: 1}\n"
    with pytest.raises(ConfigError) as info:
        parse_config_text(text, "numbers.yaml")
    assert info.value.errors == [
        "numbers.yaml:5: profiles.support.review.latency_ms: must be at least 1",
        "numbers.yaml:5: profiles.support.review.human_phrases[0]: must be 1 to 100 characters,"
        " not only spaces",
        "numbers.yaml:5: profiles.support.review.x: unknown field (allowed: latency_ms, "
        "barge_ins, human_phrases)",
    ]
    config = parse_config_text(BASE)
    assert config.review_for("support") == ReviewConfig() == config.review_for("deleted")


def test_a_score_weighs_its_criteria_and_phrases_match_whole_words() -> None:
    card = Scorecard(
        criteria=[Criterion(id="a", label="A", weight=1), Criterion(id="b", label="B", weight=2)],
        pass_mark=60,
    )
    assert (card.score({}), card.score({"a": True}), card.score({"a": True, "b": True})) == (
        0.0, 33.3, 100.0
    )  # fmt: skip
    assert card.applies_to("any") and not Scorecard(criteria=card.criteria,
                                                    profiles=["x"]).applies_to("y")  # fmt: skip
    human = ReviewConfig().human_re
    assert human is not None
    assert human.search("Can I speak to a REAL\nperson") and human.search("operator!")
    assert not human.search("your agents") and not human.search("humanity")
    assert ReviewConfig(human_phrases=[]).human_re is None
    assert ReviewConfig(human_phrases=["a.b"]).human_re.search("axb") is None  # type: ignore[union-attr]


def test_a_reload_picks_up_new_tags_and_scorecards(tmp_path: Path) -> None:
    path = tmp_path / "numbers.yaml"
    path.write_text(BASE + "qa:\n  tags: [follow-up]\n")
    store = ConfigStore(path)
    assert store.current.qa.tags == ["follow-up"] and store.current.qa.scorecards == {}
    card = "  scorecards:\n    s: {criteria: [{id: a, label: A}]}\n"
    path.write_text(BASE + "qa:\n  tags: [vip]\n" + card)
    assert store.reload()
    assert store.current.qa.tags == ["vip"] and list(store.current.qa.scorecards) == ["s"]
    path.write_text(BASE + "qa:\n  tags: [Bad Tag]\n")
    assert not store.reload()  # a broken file keeps the previous tags
    assert store.current.qa.tags == ["vip"] and "qa.tags[0]" in (store.last_error or "")


def test_config_check_summarises_the_qa_block() -> None:
    example = Path(__file__).resolve().parent.parent / "infra" / "numbers.example.yaml"
    ok, text = check(example)
    assert ok, text
    assert "call review: 4 tags; scorecards: service, sales-pitch" in text
