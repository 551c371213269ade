"""When Deepgram stays down: apologise and hand the call over, without Deepgram.

The apology is Twilio's own `<Say>` (REST update with TwiML), so it works whatever failed
upstream; then `<Dial>` the profile's transfer number or `<Hangup>`, per `on_failure`.
Twilio runs the new TwiML in place of our stream: never dead air.
"""

from __future__ import annotations

from telephony.session.engine import CallContext
from telephony.session.outcome import Outcome
from telephony.twilio.calls import apology_twiml

FAILURE_APOLOGY = "Sorry, we're having technical trouble on this line."
TRANSFER_APOLOGY = FAILURE_APOLOGY + " Let me connect you with a colleague."


async def fail_over(ctx: CallContext, reason: str) -> None:
    transfer_to = ctx.profile.transfer_number if ctx.profile.on_failure == "transfer" else None
    ctx.transcript.event(
        ctx.now_ms(), "upstream-failed", reason=reason, then="transfer" if transfer_to else "hangup"
    )
    message = TRANSFER_APOLOGY if transfer_to else FAILURE_APOLOGY
    ctx.mark_outcome(Outcome.FAILOVER, reason)
    await ctx.redirect(apology_twiml(message, transfer_to))
