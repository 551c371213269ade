"""A media stream's life once its socket is open: `serve_call(socket, services)`.

The route (routes/twilio.py) checks the upgrade's signature, accepts and adapts its WebSocket;
everything after that is here, with no web framework in sight: the handshake (a refusal is
recorded), the recording, the registry and the store, metrics, the transfer (and the
transcription that continues after it), and how the call's end is recorded.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from urllib.parse import urlencode

from telephony.logs import bind_call_sid
from telephony.outcome import Outcome
from telephony.session.call import Call
from telephony.session.engines import build_engine
from telephony.session.handshake import (
    CallSetup,
    Continuation,
    StreamRefused,
    handshake,
    token_scope,
)
from telephony.session.live_feed import LiveFeed
from telephony.session.media_socket import CLOSE_POLICY, TwilioSocket
from telephony.session.registry import CallRegistry
from telephony.session.services import Services
from telephony.session.stream_claim import HeldWrites, claim_stream
from telephony.session.whisper import WhisperAhead
from telephony.store.recording import CallRecorder
from telephony.store.redact import audio_spans
from telephony.transcript import EventKind
from telephony.twilio import twiml
from telephony.twilio.security import whisper_query

log = logging.getLogger(__name__)


def transfer_twiml(
    services: Services, call: Call, number: str, whisper_url: str | None = None
) -> str:
    """A bot call handed to a person, still transcribed: the fork's `<Parameter>`s say where
    the transcript continues (the bot part's audio end and turn count), bound to the token."""
    summary, transcript = call.summary, call.transcript
    params = {
        "profile": summary.profile,
        "from": summary.from_number,
        "to": summary.to_number,
        "continues": "1",
        "offset_ms": str(summary.stats.audio_end_ms),
        "turn_base": str(transcript.first_index + len(transcript.turns)),
        "dial": number,
    }
    token = services.tokens.mint(call.call_sid, token_scope(params))
    settings = services.settings
    return twiml.fork_and_dial(
        settings.media_stream_url,
        {"call_token": token, **params},
        number=number,
        status_callback=settings.status_callback_url,
        whisper_url=whisper_url,
    )


async def prepare_whisper(services: Services, call: Call, ahead: WhisperAhead) -> str | None:
    """A warm transfer's whisper (built ahead while the handover line played, or now),
    recorded as the call's `whisper` event (the text the whisper route says:
    telephony/session/whisper.py); its signed URL, or None when the profile has no whisper."""
    whisper = await ahead.get()
    if whisper is None:
        return None
    cfg = call.profile.whisper
    say = {"voice": cfg.whisper_voice, "language": cfg.whisper_language} if cfg else {}
    ms = call.summary.stats.audio_end_ms
    call.transcript.event(
        ms,
        EventKind.WHISPER,
        text=whisper.text,
        source=whisper.source,
        **{k: v for k, v in say.items() if v},  # how the route says it (Twilio's default voice)
    )
    settings = services.settings
    query = whisper_query(settings.token_secret(), call.call_sid)
    return f"{settings.whisper_url}?{urlencode(query)}"


def resume_point(registry: CallRegistry, sid: str, cont: Continuation) -> Continuation:
    """Where a continuation starts: after everything the bot part recorded. Its parameters
    were fixed at the transfer; if that part is (or was) on this instance, what it added
    since (a last caller turn, the audio until `stop`) is counted too."""
    live = registry.live.get(sid)
    summary = live.summary if live is not None else registry.find_finished(sid)
    if summary is None:
        return cont
    turns = summary.transcript.first_index + len(summary.transcript.turns)
    return Continuation(max(cont.offset_ms, summary.stats.audio_end_ms), max(cont.turn_base, turns))


async def serve_call(socket: TwilioSocket, services: Services) -> None:
    """Serve one accepted media socket until its call is over and recorded as such."""
    setup = await _setup(socket, services)
    if setup is not None:
        await _serve(socket, setup, services)


async def _setup(socket: TwilioSocket, services: Services) -> CallSetup | None:
    """The handshake; a refused stream is logged, counted, closed and, when its token proved
    the call is ours, stored as a refused call (None then)."""
    try:
        return await handshake(socket, services.tokens, services.config.current)
    except (StreamRefused, TimeoutError) as exc:
        reason = exc.reason if isinstance(exc, StreamRefused) else "no start message in time"
        sid = exc.call_sid if isinstance(exc, StreamRefused) else None
        log.warning("media stream refused: %s", reason, extra={"call_sid": sid})
        services.registry.refused.append((sid, reason))
        start = exc.start if isinstance(exc, StreamRefused) else None
        if start is not None:  # a call we answered (its token says so): staff see why it failed
            params = start.custom_parameters
            services.transcripts.call_refused(
                start.call_sid,
                reason,
                from_number=params.get("from", ""),
                to_number=params.get("to", ""),
                profile=params.get("profile", ""),
            )
        await socket.close(CLOSE_POLICY, reason)
        return None


def _decided(
    task: asyncio.Task[bool | None], call: Call, held: HeldWrites, registry: CallRegistry
) -> None:
    """The stream's claim is decided: its held writes go through, or (another instance carries
    this stream) they are dropped and the stream is closed without touching the call."""
    if held.decided:
        return
    if task.cancelled() or task.exception() is not None or task.result() is not False:
        held.release()
        return
    held.drop()
    reason = "stream already carried by another instance"
    log.warning("media stream refused: %s", reason, extra={"call_sid": call.call_sid})
    registry.refused.append((call.call_sid, reason))
    # No goodbye TwiML: the call is someone else's; only this socket closes.
    coro = call.end(reason, None, EventKind.WARNING, outcome=Outcome.REFUSED, code=CLOSE_POLICY)
    asyncio.get_running_loop().create_task(coro, name="refuse-duplicate-stream")


async def _serve(socket: TwilioSocket, setup: CallSetup, services: Services) -> None:
    settings, registry, rest = services.settings, services.registry, services.twilio_calls
    sid = setup.start.call_sid
    bind_call_sid(sid)  # every line this call's tasks log carries its SID
    if registry.carries(sid, setup.part):
        # One live stream per call (and continuation) here: a second never replaces the first.
        reason = "call already has a live stream"
        log.warning("media stream refused: %s", reason, extra={"call_sid": sid})
        registry.refused.append((sid, reason))
        await socket.close(CLOSE_POLICY, reason)
        return
    cont = setup.continuation
    if cont is not None:  # transcription after a transfer: the same call, carried on
        cont = setup.continuation = resume_point(registry, sid, cont)
    recorder = None
    if setup.profile.recording:  # a continuation extends the bot part's file (see recording.py)
        start_ms = cont.offset_ms if cont is not None else 0
        recorder = CallRecorder(sid, settings.recordings_dir, start_ms=start_ms)
    handed_over = False  # this call was transferred with its transcription continuing
    ahead: WhisperAhead | None = None  # set once the call exists (it reads its transcript)

    async def transfer(call_sid: str, number: str) -> None:
        nonlocal handed_over
        try:
            assert ahead is not None
            whisper_url = await prepare_whisper(services, call, ahead)
        except Exception:  # a whisper is a courtesy: never the reason a transfer fails
            call.log.exception("whisper not prepared; transferring without it")
            whisper_url = None
        if not setup.profile.transcribe_after_transfer:
            await rest.transfer(call_sid, number, whisper_url=whisper_url)
            return
        handed_over = True
        document = transfer_twiml(services, call, number, whisper_url)
        await rest.update_twiml(call_sid, document, "transfer")

    call = Call(
        socket,
        setup,
        max_bad_frames=settings.max_bad_frames,
        max_audio_ahead_ms=settings.max_audio_ahead_ms,
        max_control_per_s=settings.max_control_per_s,
        engine_factory=lambda ctx: build_engine(
            ctx,
            http=services.llm_http,
            transcribe=cont is not None,
            phrases=services.phrases.get if services.phrases else None,
        ),
        hang_up=rest.hang_up,
        transfer=transfer,
        redirect=rest.update_twiml,
        transfer_coming=lambda: ahead.start() if ahead is not None else None,
        settings=settings,
        recorder=recorder,
    )
    ahead = WhisperAhead(setup.profile, call.transcript, http=services.llm_http)
    registry.add(call, setup.part)
    transcripts = services.transcripts
    summary = call.summary
    # Decided off the audio path; until then this stream's store writes wait (stream_claim.py).
    held = HeldWrites()
    claim = asyncio.create_task(claim_stream(services, sid, setup.part), name="stream-claim")
    claim.add_done_callback(lambda task: _decided(task, call, held, registry))
    started = functools.partial(
        transcripts.call_started,
        summary.call_sid,
        from_number=summary.from_number,
        to_number=summary.to_number,
        profile=summary.profile,
        mode=setup.profile.mode,
        started_at=summary.started_at,
    )
    if cont is None:
        held(started)
    else:
        held(functools.partial(transcripts.call_resumed, summary))  # the same row: live again
    transcripts.attach(summary.call_sid, call.transcript, redact=setup.profile.redaction)
    held.hold(call.transcript)
    services.metrics.watch_call(call.transcript, setup.profile.mode)
    feed = None
    if settings.live_events:
        feed = LiveFeed(services.live, sid, redaction=setup.profile.redaction)
        if cont is None:
            feed.started(
                to_number=summary.to_number,
                profile=summary.profile,
                mode=setup.profile.mode,
                started_at=summary.started_at,
            )
        call.transcript.listeners.append(feed)
        call.transcript.live.append(feed.signal)
    if cont is not None:  # where the call page shows the bot handing over to a person
        params = setup.start.custom_parameters
        call.transcript.event(
            cont.offset_ms, EventKind.HANDOVER, to="staff", dial=params.get("dial", "")
        )
    try:
        await call.run()
    finally:
        ahead.close()  # a whisper no transfer asked for
        registry.done(call)
        services.metrics.call_ended(call)
        await asyncio.wait({claim})  # bounded by its timeout; decides what `held` does
        if not held.decided:  # its done callback may not have run yet
            _decided(claim, call, held, registry)
        # Handed over and its transcription stream already live: that one ends the call row.
        continued = handed_over and registry.current(sid) is not None
        if not continued:
            if feed is not None:
                duration_ms = round((summary.ended_at - summary.started_at) * 1000)
                feed.ended(str(summary.end_reason), max(0, duration_ms))
            held(
                functools.partial(
                    transcripts.call_ended,
                    summary,
                    mode=setup.profile.mode,
                    insights=setup.profile.insights.enabled,
                )
            )
        if recorder is not None and not held.dropped:
            # After the call is over and recorded as ended: writing the WAV (on the recording
            # thread) never holds up the hang-up. The file is linked to the call once it exists.
            path = await recorder.finish(_silence(call, setup.profile.redaction))
            if path is not None and continued:
                started(recording_path=str(path))  # the row stays live
            elif path is not None:
                transcripts.call_ended(
                    summary,
                    mode=setup.profile.mode,
                    recording_path=str(path),
                    insights=setup.profile.insights.enabled,
                )
        # Nothing changes the transcript now. The registry keeps recent summaries (and so
        # this transcript) a while: its listeners must not keep the call's objects with it.
        call.transcript.listeners.clear()
        call.transcript.live.clear()
        call.release()


def _silence(call: Call, redaction: bool) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Where the recording must be silent, as the transcript is redacted: the caller's turns
    on the left channel, the bot's or the person's on the right."""
    if not redaction:
        return [], []
    turns = call.transcript.turns
    return audio_spans(turns, ("caller",)), audio_spans(turns, ("bot", "staff"))
