"""What one chat-completions request carries: messages, the action tools and the settings.

Built to the documented API (`POST /chat/completions`), not to what any one server tolerates:

- The token limit goes out as `max_completion_tokens` by default: `max_tokens` is deprecated
  and reasoning models (o1, o3, gpt-5, ...) refuse it. `token_limit_param: max_tokens` is for
  OpenAI-compatible servers that predate the new name. Only one of the two is ever sent.
- `temperature` is sent only when configured: reasoning models refuse any but the default.
- With the tools, `parallel_tool_calls: false`: one action per reply (see `actions.stronger` for
  which wins when a server sends two anyway).
- Roles alternate. Strict chat templates (vLLM with Mistral's, for one) refuse a conversation
  whose roles do not go user, assistant, user, ... after the system prompt, yet a call's
  history starts with the bot's greeting, and a reply cut off before the caller heard any of
  it leaves two caller turns in a row. See `chat_messages`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from telephony.actions import action_functions
from telephony.config import TokenLimitParam
from telephony.responder.base import Message, Role

# The action convention as OpenAI tools (no arguments needed).
TOOLS: list[dict[str, Any]] = [{"type": "function", "function": f} for f in action_functions()]


@dataclass(frozen=True, slots=True)
class RequestSettings:
    model: str
    system_prompt: str = ""
    temperature: float | None = None
    max_tokens: int | None = None
    token_limit_param: TokenLimitParam = "max_completion_tokens"
    actions: bool = True

    def body(self, history: Sequence[Message], user_text: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": chat_messages(self.system_prompt, history, user_text),
            "stream": True,
        }
        if self.temperature is not None:
            body["temperature"] = self.temperature
        if self.max_tokens is not None:
            body[self.token_limit_param] = self.max_tokens
        if self.actions:
            body["tools"] = TOOLS
            body["parallel_tool_calls"] = False  # the API refuses it without tools
        return body


def chat_messages(
    system_prompt: str, history: Sequence[Message], user_text: str
) -> list[dict[str, str]]:
    """System prompt, then user and assistant strictly alternating, ending with the caller.

    Consecutive turns of one role become one message (lines joined): two caller turns in a row
    are one thing the caller said, as far as the model can answer it. What the bot said before
    the caller's first words (the greeting) is told in the system prompt: a system message
    followed by an assistant one is what strict templates refuse, and a made-up user turn
    would put words in the caller's mouth that the model might answer.
    """
    system = system_prompt
    turns: list[tuple[Role, str]] = []
    for role, content in [*((m.role, m.content) for m in history), ("user", user_text)]:
        if role == "system":  # only ever first: one system message, whatever the history says
            system = f"{system}\n\n{content}" if system else content
        elif turns and turns[-1][0] == role:
            turns[-1] = (role, f"{turns[-1][1]}\n{content}")
        else:
            turns.append((role, content))
    if turns and turns[0][0] == "assistant":
        opening = f'You opened the call by saying: "{turns.pop(0)[1]}"'
        system = f"{system}\n\n{opening}" if system else opening
    messages = [{"role": "system", "content": system}] if system else []
    messages += [{"role": role, "content": content} for role, content in turns]
    return messages
