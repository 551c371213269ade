"""Which engine a call gets, built from its profile and the environment settings."""

from __future__ import annotations

import httpx

from telephony.deepgram.flux import FluxClient, FluxOptions
from telephony.deepgram.speak import SpeakClient
from telephony.responder import build_responder
from telephony.session.engine import CallContext, Engine
from telephony.session.flux_engine import FluxEngine


def build_engine(ctx: CallContext, *, llm_http: httpx.AsyncClient | None = None) -> Engine | None:
    """The engine for the profile's mode; None where no engine runs on the stream."""
    profile, settings = ctx.profile, ctx.settings
    key = settings.deepgram_api_key.get_secret_value()
    if profile.mode == "flux":
        assert profile.responder is not None  # the config schema requires it in flux mode
        return FluxEngine(
            ctx,
            build_responder(profile.responder, http=llm_http),
            FluxClient(settings.deepgram_url, key, FluxOptions.from_profile(profile.flux)),
            SpeakClient(settings.deepgram_url, key, profile.voice),
        )
    return None  # agent mode arrives with the Voice Agent engine (issue 5)
