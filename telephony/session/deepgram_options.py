"""Deepgram client options built from an admin profile: the engine factory's job, so no
Deepgram client depends on the admin config (clients take plain options; this module knows
both sides).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from typing import Any

from telephony.actions import action_functions
from telephony.config import FluxConfig, Profile, TranscribeConfig
from telephony.deepgram import messages as dm
from telephony.deepgram.flux import FluxOptions
from telephony.deepgram.listen import ListenOptions

log = logging.getLogger(__name__)


def flux_options(flux: FluxConfig) -> FluxOptions:
    """From the profile's `flux` section."""
    return FluxOptions(
        model=flux.model,
        encoding=flux.encoding,
        eot_threshold=flux.eot_threshold,
        eager_eot_threshold=flux.eager_eot_threshold,
        eot_timeout_ms=flux.eot_timeout_ms,
        keyterms=tuple(flux.keyterms),
        language_hints=tuple(flux.language_hints),
    )


def listen_options(cfg: TranscribeConfig | None) -> ListenOptions:
    """From the profile's `transcribe` section (None: the defaults)."""
    if cfg is None:
        return ListenOptions()
    values = cfg.model_dump()
    values["model"] = values.pop("listen_model")
    return ListenOptions(
        **{f.name: _frozen(values[f.name]) for f in dataclasses.fields(ListenOptions)}
    )


def _frozen(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


# Keyterm prompting exists for Flux and Nova-3 only; Nova-2 would reject the field.
KEYTERM_MODELS = ("flux-general-en", "flux-general-multi", "nova-3")


def agent_settings(
    profile: Profile,
    *,
    context: list[dict[str, Any]] | None = None,
    tags: list[str] | None = None,
) -> dict[str, Any]:
    """The Settings body for an agent-mode profile.

    `context`: prior turns, on a reconnect — then there is no greeting: the caller has had it.
    """
    agent = profile.agent
    if agent is None:
        raise ValueError("agent_settings needs a profile with an agent section")
    flux = agent.listen_model.startswith("flux")
    return dm.agent_settings(
        prompt=agent.think_prompt,
        greeting=None if context else profile.greeting,
        listen_model=agent.listen_model,
        think_provider={"type": agent.think_provider, "model": agent.think_model},
        speak_model=agent.speak_voice,
        functions=_functions(profile),
        context_messages=context,
        eot_threshold=agent.eot_threshold if flux else None,
        eot_timeout_ms=agent.eot_timeout_ms if flux else None,
        keyterms=_keyterms(agent.listen_model, agent.keyterms),
        tags=tags,
    )


def _keyterms(listen_model: str, keyterms: list[str]) -> list[str] | None:
    if not keyterms:
        return None
    if listen_model not in KEYTERM_MODELS:
        log.warning("keyterms ignored: %s does not support keyterm prompting", listen_model)
        return None
    return list(keyterms)


def _functions(profile: Profile) -> list[dict[str, Any]]:
    """Built-ins first, then the profile's: only what the LLM sees (url/timeout stay ours)."""
    # defer_until_eot: Deepgram dispatches these only once the caller's turn is confirmed,
    # never speculatively for a turn the caller then resumes (no goodbye over a caller still
    # talking).
    out = [
        {**f, "defer_until_eot": True}
        for f in action_functions(transfer=profile.transfer_number is not None)
    ]
    for f in profile.agent.functions if profile.agent else ():
        function: dict[str, Any] = {
            "name": f.name,
            "description": f.description,
            "parameters": copy.deepcopy(f.parameters),
        }
        if f.defer_until_eot:  # false is Deepgram's default: sent only when asked for
            function["defer_until_eot"] = True
        out.append(function)
    return out
