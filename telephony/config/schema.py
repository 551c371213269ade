"""The numbers YAML's schema: pydantic models of numbers, profiles and their sections.

Models are frozen: a live call keeps the `Config` it started with. Error messages are worded
for the admin who edits the file (`must be between 0.5 and 0.9`); `loader` adds file and line.
The field types the models are built from (and their wording) are in `fields`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

from pydantic import (
    AfterValidator,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from telephony.config.barge_in import BargeInConfig
from telephony.config.engines import (
    AgentConfig,
    FluxConfig,
    TranscribeConfig,
)
from telephony.config.fields import (
    DAYS,
    DEFAULT_VOICE,
    E164,
    AuraVoice,
    Day,
    _hours,
    _parse_hours,
    _timezone,
)
from telephony.config.filler import FillerConfig
from telephony.config.idle import IdleConfig
from telephony.config.insights import InsightsConfig
from telephony.config.languages import PhraseSet, check_phrases, check_voices
from telephony.config.model import ConfigModel
from telephony.config.qa import QAConfig, ReviewConfig
from telephony.config.responder import (
    LLMResponderConfig,
    ResponderConfig,
    ScriptedResponderConfig,
)
from telephony.config.transfer import TransferConfig

DEFAULT_UNKNOWN_MESSAGE = "Sorry, this number is not in service. Goodbye."
_REFS_CHECKED = "references_checked"  # validation-context flag: load_config checked them itself

Loc = tuple[Any, ...]


_Model = ConfigModel


# --- profile --------------------------------------------------------------------------------


class BusinessHours(_Model):
    timezone: Annotated[str, AfterValidator(_timezone)]
    days: dict[Day, Annotated[str, AfterValidator(_hours)]]  # a day left out is closed
    after_hours_profile: str

    def is_open(self, now: datetime) -> bool:
        """Naive `now` is taken as UTC."""
        if now.tzinfo is None:
            now = now.replace(tzinfo=UTC)
        local = now.astimezone(ZoneInfo(self.timezone))
        span = _parse_hours(self.days.get(DAYS[local.weekday()], "closed"))
        minute = local.hour * 60 + local.minute
        return span is not None and span[0] <= minute < span[1]


class Profile(_Model):
    mode: Literal["flux", "agent", "transcribe"]
    greeting: str | None = None
    greeting_interruptible: bool = True
    barge_in: BargeInConfig = Field(default_factory=BargeInConfig)
    responder: ResponderConfig | None = Field(None, validate_default=True)
    voice: AuraVoice = DEFAULT_VOICE
    flux: FluxConfig = Field(default_factory=FluxConfig)
    agent: AgentConfig | None = Field(None, validate_default=True)
    transcribe: TranscribeConfig | None = Field(None, validate_default=True)
    on_failure: Literal["transfer", "hangup"] = "hangup"
    # `transfer: {number, whisper, ...}` or the short `transfer_number` (one of the two; both
    # only if they agree): `transfer_number` is the number in force either way.
    transfer: TransferConfig | None = None
    transfer_number: E164 | None = Field(None, validate_default=True)
    # flux/agent: after a transfer to transfer_number, keep transcribing the call (both sides,
    # with the `transcribe` section's Nova options) into the same transcript
    transcribe_after_transfer: bool = False
    recording: bool = False
    retention_days: Annotated[int, Field(ge=1)] = 30
    redaction: bool = True
    max_call_seconds: Annotated[int, Field(ge=1)] = 3600
    business_hours: BusinessHours | None = None
    insights: InsightsConfig = Field(default_factory=InsightsConfig)  # post-call /v1/read
    idle: IdleConfig | None = None  # reprompt a silent caller, then hang up
    filler: FillerConfig | None = None  # flux: "One moment." while a reply is slow to come
    review: ReviewConfig = Field(default_factory=ReviewConfig)  # QA: when calls get flagged
    # flux-general-multi: a voice and fixed phrases per language (config/languages.py)
    voices: dict[str, AuraVoice] = {}
    phrases: dict[str, PhraseSet] = {}

    @field_validator("voices")
    @classmethod
    def _voices(cls, value: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        return check_voices(value, info.data)

    @field_validator("phrases")
    @classmethod
    def _phrases(cls, value: dict[str, PhraseSet], info: ValidationInfo) -> dict[str, PhraseSet]:
        return check_phrases(value, info.data)

    @field_validator("responder", "agent", "transcribe")
    @classmethod
    def _section_for_mode(cls, value: object, info: ValidationInfo) -> object:
        # responder is flux mode's section; agent and transcribe are named after their mode.
        needed_by = "flux" if info.field_name == "responder" else info.field_name
        mode = info.data.get("mode")
        if value is None and mode == needed_by:
            raise PydanticCustomError("required_for_mode", f"required when mode is {needed_by}")
        if isinstance(value, TranscribeConfig):
            target = value.dial is not None or value.queue is not None
            if mode == "transcribe" and not target:
                raise PydanticCustomError(
                    "transcribe_target", "needs dial (a number) or queue: who takes the call"
                )
            if mode in ("flux", "agent") and target:
                raise PydanticCustomError(
                    "transcribe_target",
                    "dial and queue are for transcribe mode; a flux or agent profile hands "
                    "over to transfer_number",
                )
        return value

    @field_validator("idle")
    @classmethod
    def _idle(cls, value: IdleConfig | None, info: ValidationInfo) -> IdleConfig | None:
        if value is None:
            return value
        if info.data.get("mode") == "transcribe":
            raise PydanticCustomError("idle", "only for flux and agent profiles (a person answers)")
        agent = info.data.get("agent")
        if isinstance(agent, AgentConfig) and agent.silence_nudge_s is not None:
            raise PydanticCustomError(
                "idle", "replaces agent.silence_nudge_s: set one (idle.reprompt_after_s)"
            )
        return value

    @field_validator("filler")
    @classmethod
    def _filler(cls, value: FillerConfig | None, info: ValidationInfo) -> FillerConfig | None:
        if value is not None and info.data.get("mode") != "flux":
            raise PydanticCustomError("filler", "only for flux profiles (our own replies)")
        return value

    @field_validator("transcribe_after_transfer")
    @classmethod
    def _after_transfer(cls, value: bool, info: ValidationInfo) -> bool:
        if not value:
            return value
        if info.data.get("mode") == "transcribe":
            raise PydanticCustomError(
                "after_transfer", "only for flux and agent profiles (transcribe mode always is)"
            )
        if "transfer_number" in info.data and info.data["transfer_number"] is None:
            raise PydanticCustomError("after_transfer", "needs transfer_number")
        return value

    @field_validator("transfer")
    @classmethod
    def _transfer(cls, value: TransferConfig | None, info: ValidationInfo) -> TransferConfig | None:
        if value is None:
            return value
        mode = info.data.get("mode")
        if mode == "transcribe":
            raise PydanticCustomError(
                "transfer", "only for flux and agent profiles (transcribe mode dials itself)"
            )
        llm = mode == "flux" and isinstance(info.data.get("responder"), LLMResponderConfig)
        if value.whisper and value.whisper_source == "llm" and not llm:
            raise PydanticCustomError(
                "whisper_source",
                "whisper_source llm needs a flux profile with an llm responder (use template)",
            )
        return value

    @field_validator("transfer_number")
    @classmethod
    def _transfer_target(cls, value: str | None, info: ValidationInfo) -> str | None:
        long_form = info.data.get("transfer")
        if isinstance(long_form, TransferConfig):
            if value is not None and value != long_form.number:
                raise PydanticCustomError(
                    "transfer_conflict",
                    "disagrees with transfer.number: give the number once (transfer.number)",
                )
            value = long_form.number
        if value is None and "transfer" in info.data and (reason := _transfer_reason(info.data)):
            raise PydanticCustomError(
                "transfer_needed", f"required because {reason} (transfer.number or transfer_number)"
            )
        return value

    @property
    def whisper(self) -> TransferConfig | None:
        """The transfer section when the person who answers hears a whisper first."""
        return self.transfer if self.transfer is not None and self.transfer.whisper else None


def _transfer_reason(data: Mapping[str, Any]) -> str | None:
    """Why this profile may transfer a call, as far as the file alone tells."""
    if data.get("on_failure") == "transfer":
        return "on_failure is transfer"
    responder = data.get("responder")
    if isinstance(responder, ScriptedResponderConfig) and any(
        r.action == "transfer" for r in responder.rules
    ):
        return "a responder rule transfers"
    agent = data.get("agent")
    if isinstance(agent, AgentConfig) and agent.session_cap_action == "transfer":
        return "agent.session_cap_action is transfer"
    return None


# --- root -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    """Where a call goes: a profile, or a refusal (`profile` None) with the message to say."""

    profile_name: str | None
    profile: Profile | None
    message: str | None = None
    after_hours: bool = False

    @property
    def refused(self) -> bool:
        return self.profile is None


class Config(_Model):
    numbers: dict[E164, str] = {}
    default_profile: str | None = None  # for numbers not listed; unset: refuse them
    unknown_number_message: str = DEFAULT_UNKNOWN_MESSAGE
    profiles: dict[str, Profile]
    qa: QAConfig = Field(default_factory=QAConfig)  # tags and scorecards (config/qa.py)

    @model_validator(mode="after")
    def _references(self, info: ValidationInfo) -> Config:
        if info.context and info.context.get(_REFS_CHECKED):
            return self
        if problems := _reference_errors(self.model_dump()):
            raise ValueError("; ".join(f"{_dotted(p)}: {m}" for p, m in problems))
        return self

    def route(self, to_number: str, now: datetime | None = None) -> Route:
        """The profile for a dialled number, after default_profile and business hours."""
        name = self.numbers.get(to_number.strip()) or self.default_profile
        profile = self.profiles.get(name) if name else None
        if name is None or profile is None:
            return Route(None, None, self.unknown_number_message)
        hours = profile.business_hours
        if hours is None or hours.is_open(now or datetime.now(UTC)):
            return Route(name, profile)
        # One hop only: the after-hours profile's own hours are not consulted (no loops).
        after = hours.after_hours_profile
        return Route(after, self.profiles[after], after_hours=True)

    def review_for(self, profile: str) -> ReviewConfig:
        """A profile's review thresholds; the defaults for a profile no longer in the file."""
        found = self.profiles.get(profile)
        return found.review if found is not None else ReviewConfig()


def _reference_errors(data: Mapping[str, Any]) -> list[tuple[Loc, str]]:
    """Profile names used in the file that `profiles` does not define."""
    profiles = data.get("profiles")
    if not isinstance(profiles, dict):
        return []  # missing or malformed profiles are reported by the schema
    names = set(profiles)
    defined = ", ".join(sorted(map(str, names))) or "none"
    found: list[tuple[Loc, str]] = []

    def ref(loc: Loc, name: object) -> None:
        if isinstance(name, str) and name not in names:
            # The name given is not repeated: errors never echo a value (it may be a secret
            # pasted into the wrong field, and errors reach logs and the audit log).
            found.append((loc, f"unknown profile (defined: {defined})"))

    numbers = data.get("numbers")
    for number, name in (numbers if isinstance(numbers, dict) else {}).items():
        ref(("numbers", number), name)
    ref(("default_profile",), data.get("default_profile"))
    for pname, profile in profiles.items():
        hours = profile.get("business_hours") if isinstance(profile, dict) else None
        if isinstance(hours, dict):
            loc = ("profiles", pname, "business_hours", "after_hours_profile")
            ref(loc, hours.get("after_hours_profile"))
    qa = data.get("qa")
    cards = qa.get("scorecards") if isinstance(qa, dict) else None
    for cname, card in (cards if isinstance(cards, dict) else {}).items():
        listed = card.get("profiles") if isinstance(card, dict) else None
        for i, name in enumerate(listed if isinstance(listed, list) else []):
            ref(("qa", "scorecards", cname, "profiles", i), name)
    return found


def _dotted(loc: Loc, items: set[Loc] | None = None) -> str:
    out = ""
    for i, part in enumerate(loc):
        if items is not None and loc[: i + 1] in items:
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out
