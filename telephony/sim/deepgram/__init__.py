"""A protocol-faithful fake of Deepgram's WebSocket APIs (see server.py)."""

from telephony.sim.deepgram.base import ConnectionLog, Options
from telephony.sim.deepgram.script import (
    AgentStep,
    Fault,
    Script,
    ScriptedFunctionCall,
    ScriptedTurn,
    ScriptError,
)
from telephony.sim.deepgram.server import (
    FakeDeepgram,
    Rejection,
    main,
    run_emulator,
    serve_forever,
)
from telephony.sim.deepgram.tts import bytes_per_ms, tts_audio, tts_text

__all__ = [
    "AgentStep",
    "ConnectionLog",
    "FakeDeepgram",
    "Fault",
    "Options",
    "Rejection",
    "Script",
    "ScriptError",
    "ScriptedFunctionCall",
    "ScriptedTurn",
    "bytes_per_ms",
    "main",
    "run_emulator",
    "serve_forever",
    "tts_audio",
    "tts_text",
]
