"""A profile's `insights:` block: off unless asked, strict like the rest of the YAML."""

from __future__ import annotations

from pathlib import Path

import pytest

from telephony.config import ConfigError, load_config
from telephony.insights.analyze import read_options
from tests.insights_helpers import NUMBERS, profiles

EXAMPLE = Path(__file__).resolve().parent.parent / "infra" / "numbers.example.yaml"


def test_insights_default_to_off_and_send_nothing(tmp_path: Path) -> None:
    yaml = profiles(tmp_path)
    assert not yaml["quiet"].insights.enabled and read_options(yaml["quiet"]) is None
    assert read_options(None) is None
    options = read_options(yaml["open"])
    assert options is not None and options.query() == {"language": "en", "summarize": "true"}


def test_the_example_enables_insights_on_a_profile() -> None:
    enabled = [name for name, p in load_config(EXAMPLE).profiles.items() if p.insights.enabled]
    assert enabled == ["front-desk"]


@pytest.mark.parametrize(
    ("block", "why"),
    [
        ("{summary: true, sumary: true}", "profiles.support.insights.sumary: unknown field"),
        ("{summary: true, language: fr}", "profiles.support.insights.language"),
        ("{summary: maybe}", "profiles.support.insights.summary"),
    ],
)
def test_mistakes_in_the_block_are_errors(tmp_path: Path, block: str, why: str) -> None:
    path = tmp_path / "numbers.yaml"
    path.write_text(
        NUMBERS.replace(
            "insights: {summary: true, sentiment: true, topics: true, intents: true}",
            f"insights: {block}",
        )
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert any(why in e for e in info.value.errors), info.value.errors
