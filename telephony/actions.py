"""How a bot ends its side of a call: the `end_call` / `transfer_call` convention.

One definition for every mode: the Flux responder's LLM gets these as OpenAI tools, the Voice
Agent as client-side functions, scripted rules name the action directly. Either way the
action runs only after the goodbye (or handover line) has played (telephony/session/speech.py).
"""

from __future__ import annotations

from typing import Any, Literal

Action = Literal["none", "transfer", "hangup"]

END_CALL = "end_call"
TRANSFER_CALL = "transfer_call"
FUNCTION_ACTIONS: dict[str, Action] = {TRANSFER_CALL: "transfer", END_CALL: "hangup"}
BUILTIN_FUNCTIONS = frozenset(FUNCTION_ACTIONS)  # names a profile's own functions may not take

_DESCRIPTIONS = {
    END_CALL: "Hang up once the conversation is over. Say goodbye first.",
    TRANSFER_CALL: "Transfer the caller to a human. Say a short handover line first.",
}
_NO_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}

# When one reply asks for both (parallel_tool_calls is false, but not every server honours
# it), a transfer wins whatever the order: the caller asked for a person, and ending the call
# instead would lose them, while a transfer ends our side of the call too.
_PRECEDENCE: dict[Action, int] = {"none": 0, "hangup": 1, "transfer": 2}


def stronger(a: Action, b: Action) -> Action:
    """The action that wins when a reply asks for both."""
    return a if _PRECEDENCE[a] >= _PRECEDENCE[b] else b


def action_functions(*, transfer: bool = True) -> list[dict[str, Any]]:
    """The functions' definitions (name, description, parameters), end_call first; without
    `transfer` (no number to transfer to) transfer_call is not offered."""
    names = [END_CALL, TRANSFER_CALL] if transfer else [END_CALL]
    return [
        {"name": n, "description": _DESCRIPTIONS[n], "parameters": dict(_NO_PARAMETERS)}
        for n in names
    ]
