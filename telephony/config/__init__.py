"""Admin YAML: which dialled number gets which profile. Schema, line-numbered errors, hot reload.

The file never holds secrets, only the *names* of environment variables (`api_key_env`). Every
error names the file, the line and the field path, e.g.
`numbers.yaml:14: profiles.sales.flux.eot_threshold: must be between 0.5 and 0.9`.
Models are frozen: a live call keeps the `Config` it started with; new calls read
`ConfigStore.current`.

One module per concept: `fields` (field types and their wording), `schema` (the pydantic
models of numbers and profiles), `engines` (a profile's flux/agent/transcribe sections),
`responder`, `languages` (voices and phrases per language), one module per other profile
section, `loader` (YAML with line-numbered errors, `telephony config check`), `reload` (hot
reload). This package re-exports their names, so callers keep writing
`from telephony.config import Profile`.
"""

from telephony.actions import Action
from telephony.config.engines import (
    BUILTIN_AGENT_FUNCTIONS,
    AgentConfig,
    AgentFunction,
    FluxConfig,
    TranscribeConfig,
)
from telephony.config.fields import (
    DAYS,
    DEFAULT_VOICE,
    E164,
    E164_RE,
    ENV_NAME_RE,
    HOURS_RE,
    IDENTIFIER_RE,
    LANGUAGE_RE,
    NOVA_MODEL_RE,
    AuraVoice,
    Day,
    EnvName,
    EotThreshold,
    EotTimeoutMs,
    FluxModel,
    HttpUrl,
    Identifier,
    Positive,
    RedactKind,
    TokenLimitParam,
    between,
)
from telephony.config.languages import PhraseSet
from telephony.config.loader import (
    MAX_YAML_CHARS,
    MAX_YAML_NODES,
    SECRET_HINT,
    SECRET_KEY_RE,
    ConfigError,
    check,
    load_config,
    parse_config_text,
    summary,
)
from telephony.config.reload import ConfigStore
from telephony.config.responder import (
    MAX_FALLBACKS,
    LLMBackend,
    LLMFallbackConfig,
    LLMResponderConfig,
    ResponderConfig,
    ScriptedResponderConfig,
    ScriptRuleConfig,
)
from telephony.config.schema import (
    DEFAULT_UNKNOWN_MESSAGE,
    BusinessHours,
    Config,
    Loc,
    Profile,
    Route,
)

__all__ = [
    "BUILTIN_AGENT_FUNCTIONS",
    "DAYS",
    "DEFAULT_UNKNOWN_MESSAGE",
    "DEFAULT_VOICE",
    "E164",
    "E164_RE",
    "ENV_NAME_RE",
    "HOURS_RE",
    "IDENTIFIER_RE",
    "LANGUAGE_RE",
    "MAX_FALLBACKS",
    "MAX_YAML_CHARS",
    "MAX_YAML_NODES",
    "NOVA_MODEL_RE",
    "SECRET_HINT",
    "SECRET_KEY_RE",
    "Action",
    "AgentConfig",
    "AgentFunction",
    "AuraVoice",
    "BusinessHours",
    "Config",
    "ConfigError",
    "ConfigStore",
    "Day",
    "EnvName",
    "EotThreshold",
    "EotTimeoutMs",
    "FluxConfig",
    "FluxModel",
    "HttpUrl",
    "Identifier",
    "LLMBackend",
    "LLMFallbackConfig",
    "LLMResponderConfig",
    "Loc",
    "PhraseSet",
    "Positive",
    "Profile",
    "RedactKind",
    "ResponderConfig",
    "Route",
    "ScriptRuleConfig",
    "ScriptedResponderConfig",
    "TokenLimitParam",
    "TranscribeConfig",
    "between",
    "check",
    "load_config",
    "parse_config_text",
    "summary",
]
