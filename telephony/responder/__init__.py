"""Reply generation for the Flux engine: an OpenAI-compatible streaming LLM, or scripted rules.

`responder.respond(history, user_text)` returns a `Reply`: an async iterator of text deltas,
consumed as they arrive so TTS can start on the first sentence; its `action` (none / transfer /
hangup) is final once iteration ends. Nothing is sent until the first delta is awaited. Use it as

    async with responder.respond(history, text) as reply:
        async for delta in reply:
            ...

so a barge-in that cancels the consuming task also closes the HTTP stream at once: the exit
closes the generator even when the task was cancelled between two deltas.

base.py: the protocol and its types; scripted.py: rules; llm.py: the chat-completions client,
sse.py: its stream parsing; fallback.py: several LLM backends, the next answering a turn the
one before failed; build.py: from a profile's config. The HTTP pool the LLM shares
is telephony/http_pool.py; the sentence chunker for TTS is telephony/session/sentences.py.
"""

from telephony.responder.base import Message, Reply, Responder, ResponderError
from telephony.responder.build import build_responder
from telephony.responder.fallback import FallbackResponder, Switch
from telephony.responder.llm import LLMResponder
from telephony.responder.scripted import ScriptedResponder, ScriptRule

__all__ = [
    "FallbackResponder",
    "LLMResponder",
    "Message",
    "Reply",
    "Responder",
    "ResponderError",
    "ScriptRule",
    "ScriptedResponder",
    "Switch",
    "build_responder",
]
