"""The app's state as the routes read it: two typed attributes of Starlette's `app.state`.

- `services`: the session-level `Services` (telephony/session/services.py), built by the
  lifespan; what calls, the webhook, health and the staff UI share.
- `web`: what only the web routes keep (staff logins, Twilio's status callbacks seen). Not part
  of `Services`: the session must never import routes, and these types live here.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from starlette.applications import Starlette

from telephony.session.services import Services
from telephony.store.hashing import HashPool
from telephony.window import SlidingWindow

if TYPE_CHECKING:
    from routes.auth import SessionKeys
    from routes.login_limiter import LoginLimiter

# Refused logins written to the audit log per minute; in a flood the rest are only counted
# (telephony_logins_refused), so refusing costs no database write.
REFUSALS_AUDITED_PER_MIN = 30


@dataclass(frozen=True, slots=True)
class WebState:
    session_keys: SessionKeys  # staff-login cookies and CSRF tokens
    login_limiter: LoginLimiter
    hash_pool: HashPool  # password checks, off the event loop
    refusals_audited: SlidingWindow = field(
        default_factory=lambda: SlidingWindow(REFUSALS_AUDITED_PER_MIN, 60.0)
    )
    # Status callbacks already recorded, so Twilio's retries are dropped (routes/twilio.py).
    status_seen: OrderedDict[tuple[str, ...], None] = field(default_factory=OrderedDict)
    # The webhook's answer per call SID, so a repeat gets the same one (routes/twilio.py).
    answers: OrderedDict[str, str] = field(default_factory=OrderedDict)
    # Open live event streams per person (routes/live.py caps them).
    live_streams: Counter[str] = field(default_factory=Counter)


def services_of(app: Starlette) -> Services:
    """The app's `Services`; only once its lifespan has started (routes are served after)."""
    services: Services = app.state.services
    return services


def started_services(app: Starlette) -> Services | None:
    """The app's `Services`, or None before its lifespan has built them."""
    services: Services | None = getattr(app.state, "services", None)
    return services


def web_of(app: Starlette) -> WebState:
    web: WebState = app.state.web
    return web
