"""One answer per call SID: what the voice webhook says when it hears about a call again.

Twilio retries a webhook (same CallSid) when it got no answer in time or a 5xx, and anyone
holding a signed webhook can replay it: Twilio signs nothing that expires. So a repeat gets the
first answer, with the same one-time stream token (a retry's call connects; a replay gets no
token of its own), and the answers are shared by every instance through the database
(telephony/store/stream_claims.py). Once the call's stream has started, Twilio has taken an
answer and will not retry: a repeat then is a replay, refused with 409 and no TwiML at all.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable

from sqlalchemy.exc import SQLAlchemyError
from starlette.responses import Response

from telephony.session.services import Services
from telephony.store.bounded_wait import wait_at_most
from telephony.store.stream_claims import record_answer

log = logging.getLogger(__name__)

XML = "text/xml"
ANSWER_MEMORY = 5_000  # answers remembered per instance (the database has them all)


def _already_answered(call_sid: str) -> Response:
    log.warning("webhook repeated after its stream started: refused", extra={"call_sid": call_sid})
    return Response("call already answered", status_code=409)


async def _recorded(services: Services, call_sid: str, answer: str) -> tuple[str, bool] | None:
    """The call's one answer as stored for every instance, and whether its stream started;
    None if the database cannot say in time (the stream's own claim still holds then)."""
    try:
        return await wait_at_most(  # never cancelled mid-transaction: see bounded_wait.py
            record_answer(services.db, call_sid, answer), services.settings.stream_claim_timeout_s
        )
    except (TimeoutError, SQLAlchemyError, OSError) as exc:
        log.warning(
            "webhook answer not recorded (%s): a repeat elsewhere would get a new token",
            type(exc).__name__,
            extra={"call_sid": call_sid},
        )
        return None


async def answer_once(
    services: Services,
    answers: OrderedDict[str, str],
    call_sid: str,
    fresh: Callable[[], str | Response],
) -> Response:
    """The webhook's response for `call_sid`: `fresh()` the first time (TwiML opening a stream,
    after its capacity check and reservation; or a refusal, which is not remembered), the same
    TwiML for a repeat, 409 for a repeat once the stream has started."""
    registry = services.registry
    if registry.carries(call_sid) or registry.find_finished(call_sid) is not None:
        return _already_answered(call_sid)  # started here: no database needed to know it
    known = answers.get(call_sid)
    if known is not None:
        log.info("webhook repeated", extra={"call_sid": call_sid})
        ours = known
    else:
        made = fresh()
        if isinstance(made, Response):
            return made
        ours = answers[call_sid] = made  # before the await: a concurrent repeat gets it too
        while len(answers) > ANSWER_MEMORY:
            answers.popitem(last=False)
    recorded = await _recorded(services, call_sid, ours)
    if recorded is None:
        return Response(ours, media_type=XML)
    stored, started = recorded
    if started or stored != ours:  # answered, or even carried, elsewhere: not our reservation
        if known is None:
            registry.unreserve(call_sid)
        answers[call_sid] = stored
    if started:
        return _already_answered(call_sid)
    return Response(stored, media_type=XML)
