"""How a call ended: one value of a fixed set, stored in ``calls.end_reason``.

The free text that used to be the end reason ("stop", "server draining", "engine failed: …")
is kept beside it in ``calls.end_detail``. A live call's row has an empty end_reason.

Who decides which (see ``Call.run`` in telephony/session/call.py):

- our own REST actions, recorded by the call when it asks Twilio (never read back from
  transcript events): the bot's hang-up, a transfer, the failover after Deepgram gave up
  (telephony/session/fallback.py), the time limit and the server's drain (``Call.end``).
  The first of these wins: a drain after the bot has hung up leaves ``bot-hangup``;
- otherwise how the stream ended: Twilio's ``stop`` means the call ended on the phone side
  (``caller-hangup``); anything else (the socket lost without ``stop``, a broken stream, an
  engine failure) is ``error``;
- a stream refused at the handshake is written as ``refused`` (session/serve.py), and a call
  left open by a crashed instance is closed as ``restart`` (telephony/store/instances.py).

Twilio's status callbacks are recorded as timeline events and never change the outcome: a
``completed`` after a ``stop`` confirms the caller hung up, and only the stream's end says
whether we had acted first.
"""

from __future__ import annotations

from enum import StrEnum


class Outcome(StrEnum):
    # Twilio stopped the stream and we had not acted first: the caller hung up (on a call we
    # only transcribe, either person did).
    CALLER_HANGUP = "caller-hangup"
    BOT_HANGUP = "bot-hangup"  # the bot (responder rule, end_call, session cap) hung up
    IDLE_HANGUP = "idle-hangup"  # the caller said nothing through the reprompts (profile idle)
    TRANSFERRED = "transferred"  # the bot transferred the call to a person
    FAILOVER = "failover"  # Deepgram gave up: Twilio apologised and dialled or hung up
    MAX_DURATION = "max-duration"  # the profile's max_call_seconds ended it (or its transcription)
    DRAINED = "drained"  # the server's drain (SIGTERM) ended it (or its transcription)
    REFUSED = "refused"  # the media stream was refused at the handshake (never became a call)
    ERROR = "error"  # the stream broke, the engine failed, or an internal error
    RESTART = "restart"  # left open by an instance that died; closed by the next sweep


# What staff read in the UI, in the order the filter lists them.
LABELS: dict[Outcome, str] = {
    Outcome.CALLER_HANGUP: "Caller hung up",
    Outcome.BOT_HANGUP: "Bot hung up",
    Outcome.IDLE_HANGUP: "Caller silent",
    Outcome.TRANSFERRED: "Transferred",
    Outcome.FAILOVER: "Failed over",
    Outcome.MAX_DURATION: "Time limit",
    Outcome.DRAINED: "Server drain",
    Outcome.REFUSED: "Refused",
    Outcome.ERROR: "Error",
    Outcome.RESTART: "Lost in a restart",
}


def label(value: str | None) -> str:
    """The human-readable outcome; an unknown value (never written by this code) as it is."""
    if not value:  # a live call (empty end_reason) or a row read without one
        return ""
    try:
        return LABELS[Outcome(value)]
    except ValueError:
        return value or ""
