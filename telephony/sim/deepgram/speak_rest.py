"""The fake Aura REST endpoint, `POST /v1/speak` (docs/protocol.md §10): one text in, its
whole audio out, served on the fake's HTTP server beside `/v1/read`.

It checks what Deepgram checks that we rely on (the `Token` key, a JSON body with non-empty
`text` of at most 2000 characters, an Aura model, an encoding and container it offers) and
answers with the same tone-per-character speech as the streaming fake (`tts.py`), so
`tts_text` reads either back. Only the raw encodings are produced (`container=none`, or
`wav`'s data without its header is never asked for by us): mulaw, alaw, linear16.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from telephony.sim.deepgram.tts import TTS_ENCODINGS, tts_audio

MAX_CHARS = 2000
CONTAINERS = ("none", "wav", "ogg")


@dataclass
class FakeSpeakRest:
    api_key: str
    ms_per_char: int
    requests: list[dict[str, str]] = field(default_factory=list)  # query + text, for tests
    fail_status: list[int] = field(default_factory=list)  # the next requests' errors

    async def handle(self, request: Request) -> Response:
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "token" or key != self.api_key:
            return _error(401, "INVALID_AUTH", "Invalid credentials.")
        q = request.query_params
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            return _error(400, "INVALID_QUERY_PARAMETER", "Body must be JSON.")
        text = body.get("text") if isinstance(body, dict) else None
        self.requests.append({**dict(q), "text": str(text)})
        if self.fail_status:
            return _error(self.fail_status.pop(0), "FAKE_FAILURE", "Injected by the test.")
        if not isinstance(text, str) or not text.strip():
            return _error(400, "INVALID_QUERY_PARAMETER", "text must be a non-empty string.")
        if len(text) > MAX_CHARS:
            return _error(413, "PAYLOAD_TOO_LARGE", f"text is over {MAX_CHARS} characters.")
        model = q.get("model", "aura-asteria-en")
        if not model.startswith("aura-"):
            return _error(400, "UNSUPPORTED_MODEL", f"{model} is not a text-to-speech model.")
        encoding = q.get("encoding", "mp3")
        container = q.get("container", "none" if encoding in TTS_ENCODINGS else "")
        if encoding not in TTS_ENCODINGS or container not in CONTAINERS or container == "ogg":
            return _error(400, "UNSUPPORTED_ENCODING", f"the fake makes raw {TTS_ENCODINGS}")
        if container != "none":
            return _error(400, "UNSUPPORTED_ENCODING", "the fake makes container=none only")
        try:
            rate = int(q.get("sample_rate", "24000" if encoding == "linear16" else "8000"))
        except ValueError:
            return _error(400, "INVALID_QUERY_PARAMETER", "sample_rate must be a number.")
        audio = tts_audio(text, self.ms_per_char, encoding, rate)
        return Response(
            audio,
            media_type="application/octet-stream",
            headers={
                "dg-request-id": str(uuid.uuid4()),
                "dg-model-name": model,
                "dg-char-count": str(len(text)),
            },
        )


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"err_code": code, "err_msg": message}, status_code=status)
