"""An LLM responder's `fallbacks:` in the numbers YAML: inheritance, errors, config check."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from telephony.config import (
    ConfigError,
    LLMBackend,
    LLMResponderConfig,
    check,
    load_config,
    parse_config_text,
)

PRIMARY = """\
profiles:
  sales:
    mode: flux
    responder:
      type: llm
      base_url: https://api.openai.com/v1
      model: gpt-4o
      api_key_env: OPENAI_API_KEY
      system_prompt: Be brief.
      temperature: 0.7
      max_tokens: 200
      first_token_timeout_s: 3
"""


def responder(fallbacks: str) -> LLMResponderConfig:
    text = PRIMARY + textwrap.indent(textwrap.dedent(fallbacks), " " * 6)
    found = parse_config_text(text, "numbers.yaml").profiles["sales"].responder
    assert isinstance(found, LLMResponderConfig)
    return found


def errors(fallbacks: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        responder(fallbacks)
    return caught.value.errors


def test_the_single_backend_form_is_unchanged() -> None:
    cfg = parse_config_text(PRIMARY).profiles["sales"].responder
    assert isinstance(cfg, LLMResponderConfig)
    assert cfg.fallbacks == []
    assert cfg.backends() == [
        LLMBackend(
            base_url="https://api.openai.com/v1",
            model="gpt-4o",
            api_key_env="OPENAI_API_KEY",
            temperature=0.7,
            max_tokens=200,
            token_limit_param="max_completion_tokens",
            first_token_timeout_s=3,
        )
    ]


def test_a_fallback_overrides_what_it_names_and_inherits_the_rest() -> None:
    cfg = responder(
        """\
        fallbacks:
          - model: gpt-4o-mini
          - base_url: https://api.groq.com/openai/v1/
            model: llama-3.3-70b-versatile
            api_key_env: GROQ_API_KEY
            first_token_timeout_s: 4
            token_limit_param: max_tokens
          - {model: o4-mini, temperature: null}
        """
    )
    primary, mini, groq, reasoning = cfg.backends()
    assert (mini.model, mini.base_url, mini.api_key_env) == (
        "gpt-4o-mini",
        primary.base_url,
        primary.api_key_env,
    )
    assert (mini.temperature, mini.max_tokens, mini.first_token_timeout_s) == (0.7, 200, 3)
    assert groq.base_url == "https://api.groq.com/openai/v1/"
    assert (groq.api_key_env, groq.first_token_timeout_s) == ("GROQ_API_KEY", 4)
    assert (groq.token_limit_param, groq.temperature) == ("max_tokens", 0.7)
    # An explicit null is "not sent" (a reasoning model refuses any temperature but its own).
    assert (reasoning.temperature, reasoning.max_tokens) == (None, 200)
    assert [b.name for b in cfg.backends()] == [
        "gpt-4o@api.openai.com",
        "gpt-4o-mini@api.openai.com",
        "llama-3.3-70b-versatile@api.groq.com",
        "o4-mini@api.openai.com",
    ]


def test_the_same_model_under_another_key_is_another_backend() -> None:
    # A second account's key escapes the first one's rate limit.
    cfg = responder("fallbacks: [{api_key_env: OPENAI_API_KEY_2}]\n")
    assert [b.api_key_env for b in cfg.backends()] == ["OPENAI_API_KEY", "OPENAI_API_KEY_2"]


@pytest.mark.parametrize(
    ("fallbacks", "expected"),
    [
        (
            "fallbacks:\n  - {model: gpt-4o-mini}\n  - base_url: https://api.openai.com/v1/\n",
            [
                "numbers.yaml:15: profiles.sales.responder.fallbacks[1]: the same backend as the"
                " primary (base_url, model and api_key_env): give it another base_url, model or"
                " api_key_env"
            ],
        ),
        (
            "fallbacks:\n  - {model: a}\n  - {model: a}\n",
            [
                "numbers.yaml:15: profiles.sales.responder.fallbacks[1]: the same backend as an"
                " earlier fallback (base_url, model and api_key_env): give it another base_url,"
                " model or api_key_env"
            ],
        ),
        (
            "fallbacks: [{model: a}, {model: b}, {model: c}, {model: d}]\n",
            [
                "numbers.yaml:13: profiles.sales.responder.fallbacks[3]: at most 3 fallbacks: each"
                " one can add its first_token_timeout_s of silence before the caller hears"
                " anything"
            ],
        ),
        (
            "fallbacks:\n  - model: b\n    system_prompt: Be long.\n",
            [
                "numbers.yaml:15: profiles.sales.responder.fallbacks[0].system_prompt: unknown"
                " field (allowed: base_url, model, api_key_env, temperature, max_tokens,"
                " token_limit_param, first_token_timeout_s)"
            ],
        ),
        (
            "fallbacks:\n  - base_url: ftp://llm.example.com\n    api_key_env: groq_key\n"
            "  - {model: c, first_token_timeout_s: 0}\n",
            [
                "numbers.yaml:14: profiles.sales.responder.fallbacks[0].base_url: must be an"
                " http:// or https:// URL",
                "numbers.yaml:15: profiles.sales.responder.fallbacks[0].api_key_env: must be the"
                " NAME of an environment variable, like OPENAI_API_KEY",
                "numbers.yaml:16: profiles.sales.responder.fallbacks[1].first_token_timeout_s:"
                " must be greater than 0.0",
            ],
        ),
        (
            "fallbacks: {model: b}\n",
            ["numbers.yaml:13: profiles.sales.responder.fallbacks: must be a list"],
        ),
        (
            "fallbacks:\n  - api_key: sk-pasted-here\n",
            [
                "numbers.yaml:14: profiles.sales.responder.fallbacks[0].api_key: secrets come"
                " from the environment; name the variable with api_key_env"
            ],
        ),
    ],
    ids=[
        "same as primary",
        "same as earlier",
        "too many",
        "own prompt",
        "bad fields",
        "not a list",
        "a key",
    ],
)
def test_fallback_errors_name_the_line_and_field(fallbacks: str, expected: list[str]) -> None:
    assert errors(fallbacks) == expected


def test_config_check_warns_of_an_unset_fallback_key(tmp_path: Path) -> None:
    path = tmp_path / "numbers.yaml"
    path.write_text(PRIMARY + "      fallbacks: [{model: x, api_key_env: GROQ_API_KEY}]\n")
    ok, text = check(path, env={"OPENAI_API_KEY": "sk-set"})
    assert ok, text
    assert "sales: LLM gpt-4o@api.openai.com -> x@api.openai.com" in text
    assert "environment variables read: GROQ_API_KEY, OPENAI_API_KEY" in text
    warnings = [line for line in text.splitlines() if line.startswith("warning:")]
    assert warnings == [
        "warning: GROQ_API_KEY is not set here (the LLM key of sales.responder.fallbacks[0])"
    ]
    ok, text = check(path, env={})  # the primary's is reported the same way
    assert ok
    assert "warning: OPENAI_API_KEY is not set here (the LLM key of sales.responder)" in text
    ok, text = check(path, env={"OPENAI_API_KEY": "a", "GROQ_API_KEY": "b"})
    assert ok and "warning" not in text
    assert load_config(path).profiles["sales"].responder is not None
