"""The numbers YAML's field types: constrained values with errors worded for the admin.

Kept apart from the models in `schema` so each check (an E.164 number, an environment variable's
*name*, a range, a time zone, a Nova model) is written once and reads the same wherever the
field appears: `must be between 0.5 and 0.9`, `must be an E.164 number like "+15550001000"`.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, BeforeValidator, Field
from pydantic_core import PydanticCustomError

E164_RE = re.compile(r"^\+[1-9]\d{6,14}$")
ENV_NAME_RE = re.compile(r"^[A-Z_][A-Z0-9_]*$")
IDENTIFIER_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
HOURS_RE = re.compile(r"^(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})$")
Day = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
DAYS: tuple[Day, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")  # by weekday()
DEFAULT_VOICE = "aura-2-thalia-en"


# --- field types ----------------------------------------------------------------------------


def _e164(value: object) -> object:
    # YAML reads an unquoted +15550001000 as an integer and drops the "+".
    if isinstance(value, int) and not isinstance(value, bool):
        raise PydanticCustomError("e164_unquoted", 'quote phone numbers, like "+15550001000"')
    if not isinstance(value, str) or not E164_RE.match(value):
        raise PydanticCustomError("e164", 'must be an E.164 number like "+15550001000"')
    return value


def _env_name(value: str) -> str:
    if not ENV_NAME_RE.match(value):
        raise PydanticCustomError(
            "env_name", "must be the NAME of an environment variable, like OPENAI_API_KEY"
        )
    return value


def _identifier(value: str) -> str:
    if not IDENTIFIER_RE.match(value):
        raise PydanticCustomError("identifier", "must be an identifier like end_call")
    return value


def _http_url(value: str) -> str:
    try:
        parts = urlsplit(value)
    except ValueError:  # e.g. an unbalanced "[" in the host
        raise PydanticCustomError("http_url", "must be an http:// or https:// URL") from None
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise PydanticCustomError("http_url", "must be an http:// or https:// URL")
    # A key in the URL would be logged and shown on the admin page: keys come from api_key_env.
    if "@" in parts.netloc:
        raise PydanticCustomError(
            "http_url_userinfo",
            "credentials in the URL (user:password@) are not allowed; name the key's "
            "environment variable with api_key_env",
        )
    return value


def _aura_voice(value: str) -> str:
    if not value.startswith("aura-"):
        raise PydanticCustomError("aura", f'must be an Aura voice like "{DEFAULT_VOICE}"')
    return value


def _regex(value: str) -> str:
    try:
        re.compile(value, re.IGNORECASE)
    except RecursionError:
        raise PydanticCustomError(
            "regex", "not a valid regular expression: nested too deeply"
        ) from None
    except (re.error, OverflowError) as exc:  # OverflowError: a{4294967296}
        raise PydanticCustomError(
            "regex", "not a valid regular expression: {error}", {"error": str(exc)}
        ) from None
    return value


def _timezone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise PydanticCustomError(
            "timezone", "unknown time zone (use an IANA name like Europe/London)"
        ) from None
    return value


def _parse_hours(value: str) -> tuple[int, int] | None:
    """'09:00-17:00' -> minutes since midnight (start, end); 'closed' -> None."""
    if value.strip().lower() == "closed":
        return None
    m = HOURS_RE.match(value.strip())
    if not m:
        raise ValueError('must be "HH:MM-HH:MM" or "closed"')
    h1, m1, h2, m2 = (int(g) for g in m.groups())
    start, end = h1 * 60 + m1, h2 * 60 + m2
    if h1 > 23 or m1 > 59 or m2 > 59 or end > 24 * 60:
        raise ValueError("not a valid time of day")
    if end <= start:
        raise ValueError("closing time must be after opening time (overnight spans unsupported)")
    return start, end


def _hours(value: str) -> str:
    try:
        _parse_hours(value)
    except ValueError as exc:
        raise PydanticCustomError("hours", str(exc)) from None
    return value


def between(lo: float, hi: float) -> AfterValidator:
    """Inclusive range with the message admins read: 'must be between 0.5 and 0.9'."""

    def check(value: float) -> float:
        if not lo <= value <= hi:
            raise PydanticCustomError(
                "range", "must be between {lo} and {hi}", {"lo": lo, "hi": hi}
            )
        return value

    return AfterValidator(check)


E164 = Annotated[str, BeforeValidator(_e164)]
EnvName = Annotated[str, AfterValidator(_env_name)]
Identifier = Annotated[str, AfterValidator(_identifier)]
HttpUrl = Annotated[str, AfterValidator(_http_url)]
AuraVoice = Annotated[str, AfterValidator(_aura_voice)]
# The request field an LLM's token limit is sent as. max_completion_tokens is the current name
# and the only one reasoning models accept; max_tokens (deprecated) is for servers predating it.
TokenLimitParam = Literal["max_completion_tokens", "max_tokens"]
FluxModel = Literal["flux-general-en", "flux-general-multi"]
EotThreshold = Annotated[float, between(0.5, 0.9)]
EotTimeoutMs = Annotated[int, between(500, 10000)]
Positive = Annotated[float, Field(gt=0)]


# --- Nova (transcribe) ----------------------------------------------------------------------

NOVA_MODEL_RE = re.compile(r"^nova-[23](-[a-z0-9]+)*$")
LANGUAGE_RE = re.compile(r"^(multi|[a-z]{2,3}(-[A-Za-z0-9]{2,8})*)$")
RedactKind = Literal["pci", "pii", "phi", "numbers", "ssn"]


def _nova_model(value: str) -> str:
    if not NOVA_MODEL_RE.match(value):
        raise PydanticCustomError("nova", 'must be a Nova model like "nova-3" or "nova-2"')
    return value


def _language(value: str) -> str:
    if not LANGUAGE_RE.match(value):
        raise PydanticCustomError("language", 'must be a BCP-47 tag like "en" or "en-US"')
    return value


def _endpointing(value: object) -> int | bool:
    """Milliseconds of silence that end an utterance, or false (Deepgram's `endpointing`)."""
    if value is False:
        return False
    if isinstance(value, bool) or not isinstance(value, int):
        raise PydanticCustomError("endpointing", "must be milliseconds (10..10000) or false")
    if not 10 <= value <= 10000:
        raise PydanticCustomError("range", "must be between 10 and 10000")
    return value


def _tag(value: str) -> str:
    if not 0 < len(value) <= 128:
        raise PydanticCustomError("tag", "must be 1 to 128 characters")
    return value
