"""A stream's claim on its call across instances, decided off the audio path.

Within an instance a call has one live stream per part (CallRegistry refuses a second). Across
instances sharing the database, the first to record itself as the stream's carrier
(telephony/store/stream_claims.py) has it; a stream on any other instance is closed.

The claim is made once the stream has started and is never waited for: the call runs at once
(a slow or unreachable database must not delay or refuse a caller), and until the claim is
decided its store writes (its calls row, turns, events) are held back in order, so a duplicate
that loses never touches the call's row or transcript. If the database does not answer within
`stream_claim_timeout_s` the stream keeps the call and its writes go through (availability over
the cross-instance check; the per-instance checks still hold).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy.exc import SQLAlchemyError

from telephony.session.services import Services
from telephony.store.bounded_wait import wait_at_most
from telephony.store.instances import new_instance_id
from telephony.store.stream_claims import carry
from telephony.transcript import Transcript

log = logging.getLogger(__name__)

# Tools and tests may run a store without an instance; the claim still needs an owner.
_PROCESS_ID = new_instance_id()


class HeldWrites:
    """A stream's store writes, held in order until its claim is decided, then run or dropped."""

    def __init__(self) -> None:
        self._held: list[Callable[[], None]] | None = []
        self.dropped = False

    def __call__(self, write: Callable[[], None]) -> None:
        if self.dropped:
            return
        if self._held is None:
            write()
        else:
            self._held.append(write)

    @property
    def decided(self) -> bool:
        return self._held is None

    def release(self) -> None:
        held, self._held = self._held or [], None
        for write in held:
            write()

    def drop(self) -> None:
        self.dropped, self._held = True, None

    def hold(self, transcript: Transcript) -> None:
        """Route the transcript's store hooks (already attached) through this hold."""
        on_turn, on_event = transcript.on_turn, transcript.on_event
        if on_turn is not None:
            transcript.on_turn = lambda turn: self(lambda: on_turn(turn))
        if on_event is not None:
            transcript.on_event = lambda event: self(lambda: on_event(event))


async def claim_stream(services: Services, call_sid: str, part: str) -> bool | None:
    """True: this instance carries the stream; False: another does; None: no answer in time."""
    instance = services.transcripts.instance
    owner = instance.id if instance is not None else _PROCESS_ID
    try:
        return await wait_at_most(  # never cancelled mid-transaction: see bounded_wait.py
            carry(services.db, call_sid, part, owner), services.settings.stream_claim_timeout_s
        )
    except (TimeoutError, SQLAlchemyError, OSError) as exc:
        log.warning(
            "stream claim not recorded (%s): carried without the cross-instance check",
            type(exc).__name__,
            extra={"call_sid": call_sid},
        )
        return None
