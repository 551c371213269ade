"""A CallContext for engine parts tested without a call: no socket echoes a mark, no REST
action does anything, and the call clock reads `now_ms`."""

from __future__ import annotations

from telephony.config import Config
from telephony.logs import call_logger
from telephony.session.engine import CallContext
from telephony.settings import Settings
from telephony.transcript import Transcript
from telephony.twilio.playout import Playout


async def _nothing(*_: object) -> None:
    return None


def offline_context(config: Config, profile: str, *, now_ms: int = 0) -> CallContext:
    """Call CA0 on `profile`, with a real Playout (sending into nothing) and Transcript."""
    return CallContext(
        call_sid="CA0",
        profile_name=profile,
        profile=config.profiles[profile],
        settings=Settings(),
        playout=Playout(_nothing, "MZ0"),
        transcript=Transcript(),
        log=call_logger("CA0"),
        now_ms=lambda: now_ms,
        hang_up=_nothing,
        transfer=_nothing,
        redirect=_nothing,
    )
