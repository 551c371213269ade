"""Fake Deepgram server: Flux, Aura, Voice Agent and Nova on one loopback port.

The implementation lives in the telephony.sim.deepgram package (one module per endpoint);
this module is the stable import path for tests, the benchmark and the CLI.
"""

from telephony.sim.deepgram import (
    AgentStep,
    ConnectionLog,
    FakeDeepgram,
    Fault,
    Options,
    Rejection,
    Script,
    ScriptedFunctionCall,
    ScriptedTurn,
    ScriptError,
    bytes_per_ms,
    main,
    run_emulator,
    serve_forever,
    tts_audio,
    tts_text,
)

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
