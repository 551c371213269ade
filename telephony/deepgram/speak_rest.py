"""Aura's REST endpoint, `POST /v1/speak` (docs/protocol.md §10): a whole text in, its whole
audio out, for fixed phrases synthesised once and cached (telephony/session/phrases.py).

We ask for exactly what the playout sends Twilio, μ-law 8 kHz with no container, so the bytes
go to the line unchanged. Never used on the audio path: phrases are synthesised when the
configuration is loaded, in the background.
"""

from __future__ import annotations

import httpx

from telephony.deepgram.read import error_reason
from telephony.http_pool import tls_context

SPEAK_PATH = "/v1/speak"
MAX_CHARS = 2000  # Deepgram's limit per request


class SpeakRestError(Exception):
    """A synthesis that failed: the HTTP status and Deepgram's short reason, never the key."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class SpeakRestClient:
    def __init__(self, base_url: str, api_key: str, *, timeout_s: float = 15.0) -> None:
        self.url = base_url.rstrip("/") + SPEAK_PATH
        self._headers = {"Authorization": f"Token {api_key}"}
        self._http = httpx.AsyncClient(timeout=timeout_s, verify=tls_context())

    async def aclose(self) -> None:
        await self._http.aclose()

    async def synthesize(self, text: str, voice: str) -> bytes:
        """`text` in `voice` (an Aura model), as raw μ-law 8 kHz."""
        if not text.strip() or len(text) > MAX_CHARS:
            raise SpeakRestError(f"text must be 1 to {MAX_CHARS} characters")
        params = {"model": voice, "encoding": "mulaw", "sample_rate": "8000", "container": "none"}
        try:
            response = await self._http.post(
                self.url, params=params, json={"text": text}, headers=self._headers
            )
        except httpx.HTTPError as exc:
            raise SpeakRestError(f"request failed: {type(exc).__name__}") from None
        if response.status_code != 200:
            reason = error_reason(response)
            message = f"HTTP {response.status_code}" + (f": {reason}" if reason else "")
            raise SpeakRestError(message, status=response.status_code)
        if not response.content:
            raise SpeakRestError("HTTP 200 with no audio")
        return response.content
