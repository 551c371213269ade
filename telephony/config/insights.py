"""A profile's `insights:` block: which Deepgram Text Intelligence analyses run after its calls.

Every switch is off by default, so a profile sends nothing to `/v1/read` until it asks for
something. The analyses run on the call's stored (and, with `redaction`, redacted) transcript,
off the audio path (telephony/insights/).
"""

from __future__ import annotations

from typing import Literal

from telephony.config.model import ConfigModel


class InsightsConfig(ConfigModel):
    summary: bool = False
    sentiment: bool = False  # per turn and for the whole call
    topics: bool = False
    intents: bool = False
    # /v1/read analyses English only (Deepgram's docs, 2026); the field keeps the request honest.
    language: Literal["en"] = "en"

    @property
    def enabled(self) -> bool:
        return self.summary or self.sentiment or self.topics or self.intents
