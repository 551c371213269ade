"""A profile's `filler:` section (Flux mode): no dead air while the reply is being thought of.

When the responder has produced nothing to say `after_ms` after the caller's end of turn, a
short phrase ("One moment.") plays, interruptible; the reply follows it without a gap or an
overlap. The phrases are said in turn and cached like every fixed phrase
(telephony/session/phrases.py), so they start at once.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from telephony.config.fields import between
from telephony.config.model import ConfigModel

DEFAULT_FILLERS = ["One moment.", "Let me check that.", "Just a second."]


class FillerConfig(ConfigModel):
    after_ms: Annotated[int, between(100, 10_000)] = 800
    phrases: Annotated[
        list[Annotated[str, Field(min_length=1, max_length=200)]], Field(min_length=1)
    ] = DEFAULT_FILLERS
