"""Twilio's two hops: the voice webhook (TwiML) and the media WebSocket."""

from __future__ import annotations

import contextlib
import functools
import logging

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState
from websockets.exceptions import InvalidState

from routes.body_limit import capped_form
from routes.call_answers import XML, answer_once
from routes.sansio import batch_writer, frame_pump
from routes.state import services_of, web_of
from telephony.config import Profile, TranscribeConfig
from telephony.session.fallback import apology_for
from telephony.session.media_socket import CLOSE_POLICY, FrameHandler, StreamEnd, read_frames
from telephony.session.serve import serve_call
from telephony.session.services import Services
from telephony.settings import Settings
from telephony.transcript import Event, EventKind
from telephony.twilio import twiml
from telephony.twilio.security import valid_signature

log = logging.getLogger(__name__)


def _signed_url(settings: Settings, request: Request) -> str:
    """The URL Twilio called, rebuilt from the public base so it works behind a proxy."""
    url = settings.public_url.rstrip("/") + request.url.path
    return f"{url}?{request.url.query}" if request.url.query else url


def _refusal(message: str) -> Response:
    return Response(twiml.say_and_hang_up(message), media_type=XML)


def _overflow(settings: Settings) -> Response:
    """Busy: another instance (if configured) or a polite message and hang up."""
    if settings.overflow_redirect_url:
        return Response(twiml.redirect(settings.overflow_redirect_url), media_type=XML)
    return _refusal(settings.busy_message)


def _connect_stream(settings: Settings, params: dict[str, str], profile: Profile) -> str:
    return twiml.connect_stream(
        settings.media_stream_url,
        params,
        status_callback=settings.status_callback_url,
        then_apologise=apology_for(profile),  # if our server ever drops the stream
    )


def _fork_and_dial(settings: Settings, params: dict[str, str], cfg: TranscribeConfig) -> str:
    """Transcribe mode: fork both sides to us, and put a person on the call."""
    return twiml.fork_and_dial(
        settings.media_stream_url,
        params,
        number=cfg.dial,
        queue=cfg.queue,
        status_callback=settings.status_callback_url,
    )


async def signed_form(request: Request, what: str) -> dict[str, str] | None:
    """Twilio's form, if X-Twilio-Signature proves Twilio sent it (or checks are off)."""
    settings = services_of(request.app).settings
    # Twilio posts a few KB of form-encoded single values. Bounded before anything is read or
    # parsed (the signature can only be checked on the parsed form): see routes/body_limit.py.
    form = await capped_form(request, settings.max_webhook_bytes)
    signature = request.headers.get("x-twilio-signature", "")
    if settings.validate_signatures and not valid_signature(
        settings.twilio_auth_token.get_secret_value(),
        _signed_url(settings, request),
        form,
        signature,
    ):
        log.warning("%s refused: bad signature", what, extra={"call_sid": form.get("CallSid")})
        return None
    return form


async def voice_webhook(request: Request) -> Response:
    services = services_of(request.app)
    form = await signed_form(request, "webhook")
    if form is None:
        return Response("invalid signature", status_code=403)
    call_sid, to = form.get("CallSid", ""), form.get("To", "")
    if not call_sid or not to:
        return Response("CallSid and To are required", status_code=400)
    fresh = functools.partial(_fresh_answer, services, call_sid, to, form.get("From", ""))
    return await answer_once(services, web_of(request.app).answers, call_sid, fresh)


def _fresh_answer(services: Services, call_sid: str, to: str, from_: str) -> str | Response:
    """A call heard of for the first time: its profile's TwiML, with a fresh stream token and
    a reservation; or a refusal (unknown number, busy, draining), never remembered."""
    settings = services.settings
    route = services.config.current.route(to)
    profile, profile_name = route.profile, route.profile_name
    if profile is None or profile_name is None:
        log.info("unknown number refused", extra={"call_sid": call_sid, "to": to})
        return _refusal(route.message or "")  # a refused Route always carries its message
    registry, draining = services.registry, services.drain.draining
    if draining or registry.load() >= settings.max_calls:
        why = "draining" if draining else f"at capacity ({settings.max_calls})"
        log.warning("call turned away: %s", why, extra={"call_sid": call_sid})
        registry.refused.append((call_sid, why))
        return _overflow(settings)
    registry.reserve(call_sid, settings.stream_token_ttl_s)
    token = services.tokens.mint(call_sid, profile_name)
    params = {"call_token": token, "profile": profile_name, "from": from_, "to": to}
    if profile.mode == "transcribe":
        assert profile.transcribe is not None  # the config schema requires it
        return _fork_and_dial(settings, params, profile.transcribe)
    return _connect_stream(settings, params, profile)


STATUS_FIELDS = (
    "CallStatus",
    "CallDuration",
    "StreamSid",
    "StreamEvent",
    "StreamError",
    "SequenceNumber",
    "Timestamp",
    "ErrorCode",
)
STATUS_MEMORY = 10_000  # callbacks remembered per instance, to drop Twilio's retries


async def status_callback(request: Request) -> Response:
    """Call and stream status callbacks: signed like the webhook, recorded once as events of
    calls we carried (never creating a row: see TranscriptStore.status). They do not change a
    call's outcome, which its stream's end decides (telephony/outcome.py)."""
    form = await signed_form(request, "status callback")
    if form is None:
        return Response("invalid signature", status_code=403)
    call_sid = form.get("CallSid", "")
    if not call_sid:
        return Response("CallSid is required", status_code=400)
    data = {k: form[k] for k in STATUS_FIELDS if form.get(k)}
    key = (call_sid, *(f"{k}={v}" for k, v in sorted(data.items())))
    seen = web_of(request.app).status_seen
    if key in seen:
        return Response(status_code=204)  # a retry: already recorded
    seen[key] = None
    while len(seen) > STATUS_MEMORY:
        seen.popitem(last=False)
    kind = EventKind.STREAM_STATUS if "StreamEvent" in data else EventKind.CALL_STATUS
    if data.get("StreamError") or data.get("ErrorCode"):
        log.warning("twilio reports an error: %s", data, extra={"call_sid": call_sid})
    services = services_of(request.app)
    live = services.registry.current(call_sid)
    ms = live.summary.stats.audio_end_ms if live else int(data.get("CallDuration", "0") or 0) * 1000
    services.transcripts.status(call_sid, Event(ms, kind, data))
    return Response(status_code=204)


class StarletteTwilioSocket:
    """Adapts Starlette's WebSocket to the session's TwilioSocket protocol.

    Frames go straight through the ASGI receive and send callables once the socket is open:
    Starlette's per-message state checks cost more than the rest of a frame's handling, and
    the only transition mid-call (the client leaving) is recorded here as Starlette would.
    Close still goes through Starlette, so its state stays right for the end of the call.
    """

    def __init__(self, ws: WebSocket) -> None:
        self.ws = ws
        self._receive = ws._receive
        self._send = ws._send
        self._write_many = batch_writer(ws._send)
        self._pump = frame_pump(ws._receive)

    async def receive(self) -> str | bytes | None:
        msg = await self._receive()
        if msg["type"] == "websocket.disconnect":
            self.ws.client_state = WebSocketState.DISCONNECTED
            return None
        text = msg.get("text")
        return text if text is not None else msg.get("bytes", b"")

    async def pump(self, handler: FrameHandler) -> StreamEnd | None:
        if self._pump is None:
            return await read_frames(self.receive, handler)
        end = await self._pump(handler)
        if end is None:  # the disconnect stays queued; Starlette's state says it as receive does
            self.ws.client_state = WebSocketState.DISCONNECTED
        return end

    async def send_text(self, text: str) -> None:
        if self.ws.application_state is not WebSocketState.CONNECTED:
            raise WebSocketDisconnect(1006, "media socket already closed")
        try:
            await self._send({"type": "websocket.send", "text": text})
        except OSError:  # the client went away under us, as Starlette reports it
            self.ws.application_state = WebSocketState.DISCONNECTED
            raise WebSocketDisconnect(1006) from None

    async def send_many(self, texts: list[str]) -> None:
        if self._write_many is None:
            for text in texts:
                await self.send_text(text)
            return
        if self.ws.application_state is not WebSocketState.CONNECTED:
            raise WebSocketDisconnect(1006, "media socket already closed")
        try:
            self._write_many(texts)
        except (OSError, InvalidState):
            self.ws.application_state = WebSocketState.DISCONNECTED
            raise WebSocketDisconnect(1006) from None

    async def close(self, code: int, reason: str) -> None:
        if self.ws.application_state != WebSocketState.DISCONNECTED:
            # Close reasons are capped at 123 bytes; RuntimeError means the peer closed first.
            with contextlib.suppress(RuntimeError):
                await self.ws.close(code, reason[:120])


async def media_socket(ws: WebSocket) -> None:
    services = services_of(ws.app)
    settings = services.settings
    signature = ws.headers.get("x-twilio-signature", "")
    token = settings.twilio_auth_token.get_secret_value()
    if settings.validate_signatures and not valid_signature(
        token, settings.media_stream_url, {}, signature
    ):
        log.warning("media socket refused before accept: bad signature")
        services.registry.refused.append((None, "bad upgrade signature"))
        await ws.close(CLOSE_POLICY, "invalid signature")  # before accept: HTTP 403
        return
    await ws.accept()
    await serve_call(StarletteTwilioSocket(ws), services)


MEDIA_PATH = "/twilio/media"


class MediaFastPath:
    """ASGI middleware: the media socket straight to its handler, past Starlette's router.

    Every media frame resumes the handler's coroutine through each layer wrapped around it, and
    every frame sent passes Starlette's per-route send wrapper: seven layers of routing and
    exception translation that do nothing for a socket whose handler catches its own errors.
    The route below stays for the route table; this reaches it first.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "").removeprefix(scope.get("root_path", ""))
        if scope["type"] == "websocket" and path == MEDIA_PATH:
            await media_socket(WebSocket(scope, receive, send))
        else:
            await self.app(scope, receive, send)


routes = [
    Route("/twilio/voice", voice_webhook, methods=["POST"]),
    WebSocketRoute(MEDIA_PATH, media_socket),
    Route("/twilio/status", status_callback, methods=["POST"]),
]
