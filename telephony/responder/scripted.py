"""Scripted replies: regex rules over the caller's words, no network."""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass

from telephony.config import Action
from telephony.responder.base import Message, Reply


@dataclass(frozen=True, slots=True)
class ScriptRule:
    pattern: str
    reply: str
    action: Action = "none"


class ScriptedResponder:
    """First rule whose pattern is found in the caller's words (case-insensitive) wins."""

    def __init__(self, rules: Sequence[ScriptRule], fallback: str) -> None:
        self._rules = [(re.compile(r.pattern, re.IGNORECASE), r) for r in rules]
        self._fallback = fallback

    def match(self, user_text: str) -> tuple[str, Action]:
        for pattern, rule in self._rules:
            if pattern.search(user_text):
                return rule.reply, rule.action
        return self._fallback, "none"

    def respond(self, history: Sequence[Message], user_text: str) -> Reply:
        text, action = self.match(user_text)

        async def deltas(reply: Reply) -> AsyncGenerator[str, None]:
            reply.action = action
            for word in re.findall(r"\s*\S+\s*", text):
                yield word

        return Reply(deltas)

    async def aclose(self) -> None:
        pass
