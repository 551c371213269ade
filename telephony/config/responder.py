"""A profile's `responder:` section (Flux mode): scripted rules, or an LLM and its fallbacks.

An LLM responder may list `fallbacks`: further backends, each tried in order when the one
before it fails a turn before its first token (telephony/responder/fallback.py). A fallback
names only what differs (`base_url`, `model`, `api_key_env`, the request settings); the rest,
the system prompt above all, is the primary's, so every backend answers the same conversation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field, ValidationError, ValidationInfo, field_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from telephony.actions import Action
from telephony.config.fields import (
    EnvName,
    HttpUrl,
    Positive,
    TokenLimitParam,
    _regex,
    between,
)
from telephony.config.model import ConfigModel

# Each fallback can add up to its first_token_timeout_s of silence to a turn before the
# apology: a longer chain only keeps the caller waiting longer.
MAX_FALLBACKS = 3

Temperature = Annotated[float, between(0, 2)]
MaxTokens = Annotated[int, Field(ge=1)]


@dataclass(frozen=True, slots=True)
class LLMBackend:
    """One backend of an LLM responder with every setting resolved (a fallback's inherited)."""

    base_url: str
    model: str
    api_key_env: str
    temperature: float | None
    max_tokens: int | None
    token_limit_param: TokenLimitParam
    first_token_timeout_s: float

    @property
    def name(self) -> str:
        """How events and logs name it: model and host, never the key (nor the URL's path)."""
        return f"{self.model}@{urlsplit(self.base_url).netloc}"

    @property
    def identity(self) -> tuple[str, str, str]:
        return (self.base_url.rstrip("/"), self.model, self.api_key_env)


class LLMFallbackConfig(ConfigModel):
    """A backend tried when the one before it fails; a field left out is the primary's.

    `temperature: null` / `max_tokens: null` given here means "not sent" for this backend
    (a reasoning model as the fallback of one with a temperature, say).
    """

    base_url: HttpUrl | None = None
    model: Annotated[str, Field(min_length=1)] | None = None
    api_key_env: EnvName | None = None
    temperature: Temperature | None = None
    max_tokens: MaxTokens | None = None
    token_limit_param: TokenLimitParam | None = None
    first_token_timeout_s: Positive | None = None


class LLMResponderConfig(ConfigModel):
    type: Literal["llm"]
    base_url: HttpUrl
    model: str
    api_key_env: EnvName
    system_prompt: str
    # Unset: not sent, the server's default applies (reasoning models reject any other).
    temperature: Temperature | None = None
    max_tokens: MaxTokens | None = None  # the reply's token limit
    token_limit_param: TokenLimitParam = "max_completion_tokens"
    first_token_timeout_s: Positive = 5.0
    # Last, so that its validator sees the primary's fields.
    fallbacks: list[LLMFallbackConfig] = []

    @field_validator("fallbacks")
    @classmethod
    def _distinct(
        cls, value: list[LLMFallbackConfig], info: ValidationInfo
    ) -> list[LLMFallbackConfig]:
        if len(value) > MAX_FALLBACKS:
            raise _item_error(
                value,
                MAX_FALLBACKS,
                PydanticCustomError(
                    "fallbacks_too_many",
                    "at most {n} fallbacks: each one can add its first_token_timeout_s of "
                    "silence before the caller hears anything",
                    {"n": MAX_FALLBACKS},
                ),
            )
        primary = _primary(info.data)
        if primary is None:
            return value  # the primary's own errors are reported; nothing to compare with
        seen = [primary.identity]
        for i, fallback in enumerate(value):
            identity = _resolve(primary, fallback).identity
            if identity in seen:
                earlier = "the primary" if seen.index(identity) == 0 else "an earlier fallback"
                error = PydanticCustomError(
                    "fallback_same",
                    "the same backend as {earlier} (base_url, model and api_key_env): give it "
                    "another base_url, model or api_key_env",
                    {"earlier": earlier},
                )
                raise _item_error(value, i, error)
            seen.append(identity)
        return value

    def backends(self) -> list[LLMBackend]:
        """The primary, then each fallback with what it leaves out taken from the primary."""
        primary = _primary(self.model_dump())
        assert primary is not None  # a validated config has every primary field
        return [primary, *(_resolve(primary, f) for f in self.fallbacks)]


def _item_error(items: list[Any], index: int, error: PydanticCustomError) -> ValidationError:
    """An error located at one item of the list (so the loader names that item's line)."""
    details = InitErrorDetails(type=error, loc=(index,), input=items[index])
    return ValidationError.from_exception_data("fallbacks", [details])


def _primary(data: dict[str, Any]) -> LLMBackend | None:
    try:
        return LLMBackend(
            base_url=data["base_url"],
            model=data["model"],
            api_key_env=data["api_key_env"],
            temperature=data.get("temperature"),
            max_tokens=data.get("max_tokens"),
            token_limit_param=data.get("token_limit_param", "max_completion_tokens"),
            first_token_timeout_s=data.get("first_token_timeout_s", 5.0),
        )
    except KeyError:
        return None


def _resolve(primary: LLMBackend, fallback: LLMFallbackConfig) -> LLMBackend:
    given = fallback.model_fields_set  # an explicit null overrides too ("not sent")
    return LLMBackend(
        base_url=fallback.base_url or primary.base_url,
        model=fallback.model or primary.model,
        api_key_env=fallback.api_key_env or primary.api_key_env,
        temperature=fallback.temperature if "temperature" in given else primary.temperature,
        max_tokens=fallback.max_tokens if "max_tokens" in given else primary.max_tokens,
        token_limit_param=fallback.token_limit_param or primary.token_limit_param,
        first_token_timeout_s=fallback.first_token_timeout_s or primary.first_token_timeout_s,
    )


class ScriptRuleConfig(ConfigModel):
    pattern: Annotated[str, AfterValidator(_regex)]  # searched case-insensitively
    reply: str
    action: Action = "none"


class ScriptedResponderConfig(ConfigModel):
    type: Literal["scripted"]
    rules: list[ScriptRuleConfig] = []
    fallback: str


ResponderConfig = Annotated[
    LLMResponderConfig | ScriptedResponderConfig, Field(discriminator="type")
]
