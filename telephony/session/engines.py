"""Which engine a call gets, built from its profile and the environment settings."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import assert_never

import httpx

from telephony.deepgram.agent import AgentClient
from telephony.deepgram.flux import FluxClient
from telephony.deepgram.listen import ListenClient
from telephony.deepgram.speak import SpeakClient
from telephony.responder import build_responder
from telephony.session.agent_engine import AgentEngine
from telephony.session.deepgram_options import agent_settings, flux_options, listen_options
from telephony.session.engine import CallContext, Engine
from telephony.session.flux_engine import FluxEngine
from telephony.session.flux_replies import record_llm_fallback
from telephony.session.transcribe_engine import TranscribeEngine
from telephony.transcript import Role

PhraseLookup = Callable[[str, str], bytes | None]  # (voice, text) -> μ-law audio


def build_engine(
    ctx: CallContext,
    *,
    http: httpx.AsyncClient | None = None,
    transcribe: bool = False,
    phrases: PhraseLookup | None = None,
) -> Engine:
    """The engine for the profile's mode.

    `http` is the process-wide pool for LLM streaming and function webhooks. `transcribe`:
    this stream is the transcription that continues a flux or agent call after its transfer.
    `phrases`: cached audio of fixed phrases by (voice, text) (session/phrases.py).
    """
    profile, settings = ctx.profile, ctx.settings
    key = settings.deepgram_api_key.get_secret_value()
    if profile.mode == "transcribe" or transcribe:
        base = listen_options(profile.transcribe)

        def listen(role: Role) -> ListenClient:
            # Usage tags: the call and the side first (the fake Deepgram picks scripts by them)
            options = replace(base, tags=(ctx.call_sid, role, *base.tags))
            return ListenClient(settings.deepgram_url, key, options)

        return TranscribeEngine(ctx, listen)
    if profile.mode == "flux":
        assert profile.responder is not None  # the config schema requires it in flux mode
        options = replace(flux_options(profile.flux), tag=ctx.call_sid)
        return FluxEngine(
            ctx,
            build_responder(
                profile.responder,
                http=http,
                on_fallback=lambda switch: record_llm_fallback(ctx, switch),
            ),
            lambda opts: FluxClient(settings.deepgram_url, key, opts),
            options,
            lambda voice: SpeakClient(settings.deepgram_url, key, voice),
            phrase=phrases or (lambda voice, text: None),
        )
    if profile.mode == "agent":

        def client(context: list[dict[str, str]] | None) -> AgentClient:
            body = agent_settings(profile, context=context)
            return AgentClient(settings.deepgram_agent_url, key, body)

        return AgentEngine(ctx, client, http=http, session_cap_s=settings.agent_session_cap_s)
    assert_never(profile.mode)  # the config schema allows only these modes
