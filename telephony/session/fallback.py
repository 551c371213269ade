"""When Deepgram stays down: apologise and hand the call over, without Deepgram.

The apology is Twilio's own `<Say>` (REST update with TwiML), so it works whatever failed
upstream; then `<Dial>` the profile's transfer number or `<Hangup>`, per `on_failure`.
Twilio runs the new TwiML in place of our stream: never dead air.
"""

from __future__ import annotations

import asyncio

from telephony.config import Profile
from telephony.outcome import Outcome
from telephony.session.engine import CallContext
from telephony.transcript import EventKind
from telephony.twilio import twiml

FAILURE_APOLOGY = "Sorry, we're having technical trouble on this line."
TRANSFER_APOLOGY = FAILURE_APOLOGY + " Let me connect you with a colleague."


def apology_for(profile: Profile) -> tuple[str, str | None]:
    """The profile's apology and where it hands the caller over (None: hang up)."""
    transfer_to = profile.transfer_number if profile.on_failure == "transfer" else None
    return (TRANSFER_APOLOGY if transfer_to else FAILURE_APOLOGY), transfer_to


async def fail_over(ctx: CallContext, reason: str, *, endpoint: str | None = None) -> None:
    """Redirect the call to the apology and the hand-over; once per call, whichever link
    failed first (a second failing link has nothing left to hand over)."""
    if ctx.handed_over:
        return
    ctx.handed_over = True
    message, transfer_to = apology_for(ctx.profile)
    then = "transfer" if transfer_to else "hangup"
    data = {"endpoint": endpoint} if endpoint else {}
    ctx.transcript.event(ctx.now_ms(), EventKind.UPSTREAM_FAILED, reason=reason, then=then, **data)
    ctx.mark_outcome(Outcome.FAILOVER, reason)
    await ctx.redirect(twiml.apology(message, transfer_to))


async def hand_over(ctx: CallContext, endpoint: str, reason: str) -> None:
    """A bot's Deepgram link is gone for good (its `Link` gave up): stop what the caller hears,
    apologise and hand over, then wait — Twilio runs the new TwiML and ends our stream, and the
    call's end cancels this. Never returns, so no engine ends the call with a bare close. A
    redirect Twilio refuses raises: the stream then closes with an error and Twilio runs the
    webhook's own apology after `</Connect>` (telephony/twilio/twiml.py `connect_stream`)."""
    if not ctx.handed_over:
        await ctx.playout.clear()
        await fail_over(ctx, reason, endpoint=endpoint)
    await asyncio.Event().wait()
