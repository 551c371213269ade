"""The responder a profile's configuration describes."""

from __future__ import annotations

import os
from collections.abc import Mapping

import httpx

from telephony.config import LLMResponderConfig, ResponderConfig, ScriptedResponderConfig
from telephony.responder.base import Responder, ResponderError
from telephony.responder.llm import LLMResponder
from telephony.responder.scripted import ScriptedResponder, ScriptRule


def build_responder(
    cfg: ResponderConfig,
    *,
    http: httpx.AsyncClient | None = None,
    env: Mapping[str, str] = os.environ,
) -> Responder:
    """The responder a profile describes. Without `http`, an LLM responder owns its own pool."""
    if isinstance(cfg, ScriptedResponderConfig):
        rules = [ScriptRule(r.pattern, r.reply, r.action) for r in cfg.rules]
        return ScriptedResponder(rules, cfg.fallback)
    if isinstance(cfg, LLMResponderConfig):
        return LLMResponder(
            base_url=cfg.base_url,
            model=cfg.model,
            api_key=_api_key(cfg.api_key_env, env),
            system_prompt=cfg.system_prompt,
            temperature=cfg.temperature,
            max_tokens=cfg.max_tokens,
            token_limit_param=cfg.token_limit_param,
            first_token_timeout_s=cfg.first_token_timeout_s,
            http=http,
        )
    raise TypeError(f"unknown responder config: {type(cfg).__name__}")


def _api_key(name: str, env: Mapping[str, str]) -> str:
    key = env.get(name, "")
    if not key:
        raise ResponderError(f"LLM API key: environment variable {name} is not set")
    return key
