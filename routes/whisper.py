"""A warm transfer's whisper: `POST /twilio/whisper`, fetched by Twilio when the person answers.

The transfer's TwiML (`<Dial><Number url>`, telephony/twilio/twiml.py) points here with a query
that names the call and carries an expiry and an HMAC (telephony/twilio/security.py), so the
URL opens that call's whisper only; the request itself is signed by Twilio like every webhook
(403 otherwise). The text is the call's `whisper` event: from this instance's memory when the
call was carried here, else from the shared store, waited for briefly since its write-behind
may not have flushed yet. Whatever goes wrong after the signature (an expired or mismatched
token, no whisper found, the database down), the answer is an empty `<Response/>`: the person
is connected without a whisper, never dropped.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from routes.call_answers import XML
from routes.state import services_of
from routes.twilio import signed_form
from telephony.session.services import Services
from telephony.store.bounded_wait import wait_at_most
from telephony.store.transfers import latest_event
from telephony.transcript import EventKind
from telephony.twilio import twiml
from telephony.twilio.security import TokenError, check_whisper_query

log = logging.getLogger(__name__)

# Well inside Twilio's 15 s webhook timeout; the store flushes every 0.5 s when healthy.
WHISPER_WAIT_S = 4.0
WHISPER_POLL_S = 0.25


def _connect_anyway() -> Response:
    return Response(twiml.whisper(""), media_type=XML)


def _carried_here(services: Services, sid: str) -> dict[str, Any] | None:
    registry = services.registry
    live = registry.live.get(sid)
    summary = live.summary if live is not None else registry.find_finished(sid)
    if summary is None:
        return None
    found = [e for e in summary.transcript.events if e.kind == EventKind.WHISPER]
    return dict(found[-1].data) if found else None


async def whisper_of(
    services: Services, sid: str, wait_s: float = WHISPER_WAIT_S
) -> dict[str, Any] | None:
    """The call's whisper event data, here or in the store, waiting up to `wait_s` for it."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    while True:
        found = _carried_here(services, sid)
        if found is None:
            left = max(0.01, deadline - loop.time())
            try:
                found = await wait_at_most(latest_event(services.db, sid, EventKind.WHISPER), left)
            except Exception as exc:  # the store down or slow: connect without the whisper
                log.warning("whisper lookup failed: %r", exc, extra={"call_sid": sid})
                return None
        if found is not None or loop.time() >= deadline:
            return found
        await asyncio.sleep(WHISPER_POLL_S)


async def whisper_webhook(request: Request) -> Response:
    form = await signed_form(request, "whisper")
    if form is None:
        return Response("invalid signature", status_code=403)
    services = services_of(request.app)
    try:
        sid = check_whisper_query(services.settings.token_secret(), request.query_params)
    except TokenError as exc:
        log.warning("whisper refused: %s; connecting without it", exc)
        return _connect_anyway()
    # Twilio asks on the new leg's behalf; its parent is the call the URL was made for.
    parent = form.get("ParentCallSid", "")
    if parent and parent != sid:
        log.warning("whisper refused: asked for by another call's leg", extra={"call_sid": sid})
        return _connect_anyway()
    found = await whisper_of(services, sid) or {}
    text = str(found.get("text") or "")
    if not text:
        log.warning("no whisper found for the call; connecting without it", extra={"call_sid": sid})
        return _connect_anyway()
    log.info("whisper played to the person answering", extra={"call_sid": sid})
    voice, language = found.get("voice") or None, found.get("language") or None
    return Response(twiml.whisper(text, voice=voice, language=language), media_type=XML)


routes = [Route("/twilio/whisper", whisper_webhook, methods=["POST"])]
