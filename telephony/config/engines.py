"""A profile's engine sections: `flux` (Flux turn settings, languages), `agent` (the Voice
Agent's Settings) and `transcribe` (Nova per side, for transcribe mode and after a transfer).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    Field,
    PlainValidator,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from telephony.actions import BUILTIN_FUNCTIONS
from telephony.config.fields import (
    DEFAULT_VOICE,
    E164,
    AuraVoice,
    EotThreshold,
    EotTimeoutMs,
    FluxModel,
    HttpUrl,
    Identifier,
    Positive,
    RedactKind,
    _endpointing,
    _language,
    _nova_model,
    _tag,
    between,
)
from telephony.config.model import ConfigModel as _Model
from telephony.deepgram import messages as dm


class FluxConfig(_Model):
    model: FluxModel = "flux-general-en"
    encoding: Literal["mulaw", "linear16"] = "mulaw"  # linear16 is sent at 16 kHz
    eot_threshold: EotThreshold = 0.7
    eager_eot_threshold: Annotated[float, between(0.3, 0.9)] | None = None
    eot_timeout_ms: EotTimeoutMs = 5000
    keyterms: list[str] = []
    # flux-general-multi: the languages callers are expected to speak (none: detected freely)
    language_hints: list[str] = []
    # flux-general-multi: once a caller's language is known, hint Flux with it alone
    follow_language: bool = False

    @field_validator("language_hints", "follow_language")
    @classmethod
    def _multi_only(cls, value: Any, info: ValidationInfo) -> Any:
        if value and info.data.get("model") != "flux-general-multi":
            raise PydanticCustomError("multi_only", "needs model: flux-general-multi")
        if problems := dm.language_hint_problems(value if isinstance(value, list) else []):
            raise PydanticCustomError("language_hints", "; ".join(problems))
        return value

    @field_validator("eager_eot_threshold")
    @classmethod
    def _eager_not_above_eot(cls, value: float | None, info: ValidationInfo) -> float | None:
        eot = info.data.get("eot_threshold")
        if value is not None and eot is not None and value > eot:
            raise PydanticCustomError(
                "eager_above_eot", "must be <= eot_threshold ({eot})", {"eot": eot}
            )
        return value


class AgentFunction(_Model):
    name: Identifier
    description: str
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    url: HttpUrl  # webhook called with the function's arguments
    timeout_s: Positive = 5.0
    # Deepgram holds the call until the caller's turn is confirmed, so a turn the caller
    # resumes never runs it: for webhooks with side effects (a booking, a payment).
    defer_until_eot: bool = False


BUILTIN_AGENT_FUNCTIONS = BUILTIN_FUNCTIONS


class AgentConfig(_Model):
    listen_model: Literal["flux-general-en", "flux-general-multi", "nova-3", "nova-2"] = (
        "flux-general-en"
    )
    eot_threshold: EotThreshold | None = None
    eot_timeout_ms: EotTimeoutMs | None = None
    keyterms: list[str] = []
    think_provider: str = "open_ai"
    think_model: str = "gpt-4o-mini"
    think_prompt: str
    speak_voice: AuraVoice = DEFAULT_VOICE
    functions: list[AgentFunction] = []
    silence_nudge_s: Positive | None = None
    reply_timeout_s: Positive = 8.0  # caller finished, no agent speech this long: nudge
    nudge_message: str = "Are you still there?"
    session_cap_action: Literal["warn", "transfer", "end"] = "end"

    @field_validator("eot_threshold", "eot_timeout_ms")
    @classmethod
    def _flux_only(cls, value: float | None, info: ValidationInfo) -> float | None:
        model = info.data.get("listen_model", "")
        if value is not None and not model.startswith("flux"):
            raise PydanticCustomError("flux_only", "only applies to flux listen models")
        return value

    @field_validator("functions")
    @classmethod
    def _unique_names(cls, value: list[AgentFunction]) -> list[AgentFunction]:
        names = [f.name for f in value]
        if builtin := sorted(set(names) & BUILTIN_AGENT_FUNCTIONS):
            raise PydanticCustomError(
                "builtin_function",
                "{names} are built in (they hang up / transfer after the goodbye plays); "
                "remove them here",
                {"names": ", ".join(builtin)},
            )
        if dupes := sorted({n for n in names if names.count(n) > 1}):
            raise PydanticCustomError(
                "duplicate_function", "duplicate function names: {names}", {"names": dupes}
            )
        return value


class TranscribeConfig(_Model):
    """Live transcription with Nova (`/v1/listen`), one socket per side of the call.

    In a transcribe profile `dial` or `queue` says where Twilio forwards the call while both
    sides are transcribed; flux and agent profiles use the rest (the Nova options) for the
    transcription that continues after a transfer (`transcribe_after_transfer`).
    """

    dial: E164 | None = None  # transcribe mode: the agent's number ...
    queue: Annotated[str, Field(min_length=1, max_length=64)] | None = None  # ... or a queue
    listen_model: Annotated[str, AfterValidator(_nova_model)] = "nova-3"
    language: Annotated[str, AfterValidator(_language)] = "en"
    interim_results: bool = True  # live view only: interim text is never stored
    endpointing: Annotated[int | bool, PlainValidator(_endpointing)] = 300  # ms, or false
    utterance_end_ms: Annotated[int, between(1000, 10000)] | None = 1000
    vad_events: bool = True
    smart_format: bool = True
    punctuate: bool = True
    diarize: bool = False
    numerals: bool = False
    profanity_filter: bool = False
    redact: list[RedactKind] = []  # Deepgram's own redaction, before our `redaction`
    keyterms: list[str] = []  # nova-3 only
    keywords: list[str] = []  # nova-2 only ("word" or "word:boost")
    tags: list[Annotated[str, AfterValidator(_tag)]] = []  # usage tags; call SID and side added

    @field_validator("utterance_end_ms")
    @classmethod
    def _needs_interim(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and info.data.get("interim_results") is False:
            raise PydanticCustomError(
                "needs_interim", "needs interim_results: true (or set utterance_end_ms: null)"
            )
        return value

    @field_validator("keyterms")
    @classmethod
    def _keyterms_nova3(cls, value: list[str], info: ValidationInfo) -> list[str]:
        if value and not str(info.data.get("listen_model", "nova-3")).startswith("nova-3"):
            raise PydanticCustomError("nova3_only", "keyterms need a nova-3 model (use keywords)")
        return value

    @field_validator("keywords")
    @classmethod
    def _keywords_nova2(cls, value: list[str], info: ValidationInfo) -> list[str]:
        if value and str(info.data.get("listen_model", "nova-3")).startswith("nova-3"):
            raise PydanticCustomError("nova2_only", "keywords are for nova-2; nova-3 uses keyterms")
        return value

    @model_validator(mode="after")
    def _one_target(self) -> TranscribeConfig:
        if self.dial is not None and self.queue is not None:
            raise ValueError("give dial or queue, not both")
        return self
