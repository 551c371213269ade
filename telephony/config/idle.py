"""A profile's `idle:` section: what the bot does when the caller goes quiet.

After the bot has finished speaking, `reprompt_after_s` of caller silence gets a reprompt (the
`messages` in turn); after `reprompts` of them, the `goodbye`, then the call is hung up
(outcome `idle-hangup`). Any caller speech or key press starts the count again
(telephony/session/idle.py).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from telephony.config.fields import Positive, between
from telephony.config.model import ConfigModel

DEFAULT_REPROMPT = "Are you still there?"
DEFAULT_GOODBYE = "I haven't heard anything, so I'll end the call now. Goodbye!"


class IdleConfig(ConfigModel):
    reprompt_after_s: Positive = 8.0
    # how many reprompts before the goodbye; unset: reprompt for as long as the call lasts
    reprompts: Annotated[int, between(0, 10)] | None = 2
    messages: Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)] = [
        DEFAULT_REPROMPT
    ]
    goodbye: Annotated[str, Field(min_length=1)] = DEFAULT_GOODBYE
