"""The responder a profile's configuration describes."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping

import httpx

from telephony.config import (
    LLMBackend,
    LLMResponderConfig,
    ResponderConfig,
    ScriptedResponderConfig,
)
from telephony.responder.base import Responder, ResponderError
from telephony.responder.fallback import Backend, FallbackResponder, Switch
from telephony.responder.llm import LLMResponder
from telephony.responder.scripted import ScriptedResponder, ScriptRule

log = logging.getLogger(__name__)


def build_responder(
    cfg: ResponderConfig,
    *,
    http: httpx.AsyncClient | None = None,
    env: Mapping[str, str] = os.environ,
    on_fallback: Callable[[Switch], None] | None = None,
) -> Responder:
    """The responder a profile describes. Without `http`, an LLM responder owns its own pool.

    An LLM with `fallbacks` is a `FallbackResponder` (`on_fallback` hears of each switch). A
    backend whose key variable is unset is left out (logged); with none left, ResponderError.
    """
    if isinstance(cfg, ScriptedResponderConfig):
        rules = [ScriptRule(r.pattern, r.reply, r.action) for r in cfg.rules]
        return ScriptedResponder(rules, cfg.fallback)
    if isinstance(cfg, LLMResponderConfig):
        configs = cfg.backends()
        if len(configs) == 1:  # no fallbacks: the plain client, exactly as before
            return _llm(cfg, configs[0], _api_key(configs[0].api_key_env, env), True, http)
        keyed: list[tuple[LLMBackend, str]] = []
        for backend in configs:
            try:
                keyed.append((backend, _api_key(backend.api_key_env, env)))
            except ResponderError as exc:
                log.warning("LLM backend %s left out: %s", backend.name, exc)
        if not keyed:
            names = ", ".join(sorted({b.api_key_env for b in configs}))
            raise ResponderError(f"LLM API keys: none of {names} is set", kind="key")
        if len(keyed) == 1:
            backend, key = keyed[0]
            return _llm(cfg, backend, key, True, http)
        last = len(keyed) - 1
        backends = [
            Backend(b.name, _llm(cfg, b, key, i == last, http)) for i, (b, key) in enumerate(keyed)
        ]
        return FallbackResponder(backends, on_fallback)
    raise TypeError(f"unknown responder config: {type(cfg).__name__}")


def _llm(
    cfg: LLMResponderConfig,
    backend: LLMBackend,
    api_key: str,
    retry: bool,
    http: httpx.AsyncClient | None,
) -> LLMResponder:
    return LLMResponder(
        base_url=backend.base_url,
        model=backend.model,
        api_key=api_key,
        system_prompt=cfg.system_prompt,
        temperature=backend.temperature,
        max_tokens=backend.max_tokens,
        token_limit_param=backend.token_limit_param,
        first_token_timeout_s=backend.first_token_timeout_s,
        retry=retry,
        http=http,
    )


def _api_key(name: str, env: Mapping[str, str]) -> str:
    key = env.get(name, "")
    if not key:
        raise ResponderError(f"LLM API key: environment variable {name} is not set", kind="key")
    return key
