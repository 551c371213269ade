"""The numbers YAML's QA sections: the admin's tags and scorecards (top-level `qa:`), and each
profile's review thresholds (`review:`), which decide the calls the review queue surfaces.

Tags and scorecards are read from the current `Config` on every request, so a hot reload
changes what staff can add; a tag or scorecard removed from the file stays on the calls that
have it (shown, no longer addable).
"""

from __future__ import annotations

import re
from functools import cached_property
from typing import Annotated

from pydantic import AfterValidator, Field, field_validator
from pydantic_core import PydanticCustomError

from telephony.config.model import ConfigModel

# Whole words, case-insensitive, in a caller's turn: the caller asked for a person.
DEFAULT_HUMAN_PHRASES = ("human", "real person", "agent", "operator", "representative")
DEFAULT_LATENCY_MS = 1500
DEFAULT_BARGE_INS = 2
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


def _name(value: str) -> str:
    if not _NAME_RE.match(value):
        raise PydanticCustomError(
            "qa_name", "must be 1 to 64 lowercase letters, digits, '-' or '_', like follow-up"
        )
    return value


QAName = Annotated[str, AfterValidator(_name)]


def _phrase(value: str) -> str:
    if not value.split() or len(value) > 100:
        raise PydanticCustomError("phrase", "must be 1 to 100 characters, not only spaces")
    return value


class Criterion(ConfigModel):
    id: QAName
    label: Annotated[str, Field(min_length=1, max_length=200)]
    weight: Annotated[float, Field(gt=0, le=100)] = 1.0


class Scorecard(ConfigModel):
    criteria: Annotated[list[Criterion], Field(min_length=1)]
    pass_mark: Annotated[float, Field(ge=0, le=100)] = 70.0
    profiles: list[str] = []  # the profiles it applies to; empty: every profile

    @field_validator("criteria")
    @classmethod
    def _unique_ids(cls, value: list[Criterion]) -> list[Criterion]:
        ids = [c.id for c in value]
        if dupes := sorted({i for i in ids if ids.count(i) > 1}):
            raise PydanticCustomError(
                "duplicate_criterion", "duplicate criterion ids: {ids}", {"ids": ", ".join(dupes)}
            )
        return value

    def applies_to(self, profile: str) -> bool:
        return not self.profiles or profile in self.profiles

    def score(self, answers: dict[str, bool]) -> float:
        """0-100: the weights of the criteria met over all the weights (unanswered: not met)."""
        total = sum(c.weight for c in self.criteria)
        met = sum(c.weight for c in self.criteria if answers.get(c.id))
        return round(100 * met / total, 1)


class QAConfig(ConfigModel):
    tags: list[QAName] = []
    scorecards: dict[QAName, Scorecard] = {}

    @field_validator("tags")
    @classmethod
    def _unique_tags(cls, value: list[str]) -> list[str]:
        if dupes := sorted({t for t in value if value.count(t) > 1}):
            raise PydanticCustomError(
                "duplicate_tag", "duplicate tags: {tags}", {"tags": ", ".join(dupes)}
            )
        return value

    def scorecards_for(self, profile: str) -> dict[str, Scorecard]:
        return {n: s for n, s in self.scorecards.items() if s.applies_to(profile)}


class ReviewConfig(ConfigModel):
    """When an ended call goes to the review queue (telephony/store/review_rules.py)."""

    latency_ms: Annotated[int, Field(ge=1)] | None = DEFAULT_LATENCY_MS  # null: never
    barge_ins: Annotated[int, Field(ge=1)] | None = DEFAULT_BARGE_INS  # null: never
    human_phrases: list[Annotated[str, AfterValidator(_phrase)]] = list(DEFAULT_HUMAN_PHRASES)

    @cached_property
    def human_re(self) -> re.Pattern[str] | None:
        """The phrases as whole words (any spacing between a phrase's words); None if none."""
        if not self.human_phrases:
            return None
        alts = "|".join(r"\s+".join(map(re.escape, p.split())) for p in self.human_phrases)
        return re.compile(rf"\b(?:{alts})\b", re.IGNORECASE)
