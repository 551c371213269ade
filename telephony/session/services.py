"""What a call needs of the process around it, in one frozen, typed `Services`.

The app's lifespan (routes/app.py) builds it once; `serve_call` (telephony/session/serve.py) and
the routes read it. Nothing here knows a web framework, so a call can be served without one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine

from telephony.config import ConfigStore
from telephony.live.bus import LiveBus
from telephony.metrics import Metrics
from telephony.session.phrases import PhraseCache
from telephony.session.registry import CallRegistry
from telephony.settings import Settings
from telephony.store.transcripts import TranscriptStore
from telephony.twilio.calls import TwilioCalls
from telephony.twilio.security import StreamTokens


@dataclass(slots=True)
class DrainState:
    """Set once SIGTERM starts the drain (telephony/drain.py): the webhook turns new calls
    away and /readyz answers 503. Its own object because `Services` itself never changes."""

    draining: bool = False


@dataclass(frozen=True, slots=True)
class Services:
    """The instance's shared services: built once, never reassigned while the app runs."""

    settings: Settings
    config: ConfigStore  # the numbers YAML, reloaded in place
    tokens: StreamTokens  # minted by the webhook, redeemed by the handshake
    registry: CallRegistry  # this instance's live, expected and finished calls
    drain: DrainState
    transcripts: TranscriptStore  # write-behind: calls, turns, events
    metrics: Metrics
    db: AsyncEngine  # the staff UI's reads and the audit log
    llm_http: httpx.AsyncClient  # one pool for every call's responder
    twilio_calls: TwilioCalls  # REST actions on live calls: hang-up, transfer, redirect
    phrases: PhraseCache | None = None  # fixed phrases' audio, synthesised ahead of time
    # Live events for the staff UI, heard by every instance (telephony/live/bus.py)
    live: LiveBus = field(default_factory=lambda: LiveBus("local"))
