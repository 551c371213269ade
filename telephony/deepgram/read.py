"""Text Intelligence `POST /v1/read` client: one transcript in, summary, sentiment, topics and
intents out (docs/protocol.md §9).

One request per call, made after the call has ended, never on the audio path. Segments
come back as word offsets (`start_word`..`end_word`, both inclusive, counting
whitespace-separated words of the text we sent); the caller maps them onto its own turns
(telephony/insights/text.py).

Errors are `ReadError`s whose message holds the HTTP status and Deepgram's own short reason,
never the request (it is a caller's words) nor the key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from telephony.http_pool import tls_context
from telephony.retry import SERVER_ERRORS, retry_after_s

READ_PATH = "/v1/read"
_REASON_CHARS = 200


@dataclass(frozen=True, slots=True)
class ReadOptions:
    """The analyses asked for; at least one must be on."""

    summary: bool = False
    sentiment: bool = False
    topics: bool = False
    intents: bool = False
    language: str = "en"

    def query(self) -> dict[str, str]:
        # Deepgram's docs and SDK: /v1/read takes `summarize` as a boolean (the `v2` value
        # is the pre-recorded /v1/listen option); a switch that is off is left out.
        params = {"language": self.language}
        for name, on in (
            ("summarize", self.summary),
            ("sentiment", self.sentiment),
            ("topics", self.topics),
            ("intents", self.intents),
        ):
            if on:
                params[name] = "true"
        return params


@dataclass(frozen=True, slots=True)
class Segment:
    """A labelled stretch of the text: words `start_word`..`end_word`, both inclusive."""

    start_word: int
    end_word: int
    label: str  # a sentiment (positive|neutral|negative), a topic or an intent
    score: float  # sentiment_score (-1..1) or confidence_score (0..1)


@dataclass(frozen=True, slots=True)
class ReadResult:
    request_id: str = ""
    summary: str = ""
    sentiment: str = ""  # the average over the text; "" when not asked for
    sentiment_score: float | None = None
    sentiments: tuple[Segment, ...] = ()
    topics: tuple[Segment, ...] = ()
    intents: tuple[Segment, ...] = ()


class ReadError(Exception):
    """A failed request. `retryable`: 429, 5xx or a transport failure (timeouts included);
    `retry_after_s`: the server's requested wait, when it sent one."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retry_after_s: float | None = None,
        timed_out: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after_s = retry_after_s
        self.timed_out = timed_out

    @property
    def retryable(self) -> bool:
        return self.status is None or self.status in SERVER_ERRORS


def _num(value: Any, default: float = 0.0) -> float:
    return (
        float(value) if isinstance(value, int | float) and not isinstance(value, bool) else default
    )


def _segments(block: Any, items_key: str, label_key: str) -> tuple[Segment, ...]:
    """Topic or intent segments: each segment's labels, one `Segment` per label."""
    out: list[Segment] = []
    for seg in (block or {}).get("segments") or ():
        start, end = int(_num(seg.get("start_word"))), int(_num(seg.get("end_word")))
        for item in seg.get(items_key) or ():
            label = str(item.get(label_key) or "").strip()
            if label:
                out.append(Segment(start, end, label, _num(item.get("confidence_score"))))
    return tuple(out)


def parse_response(body: dict[str, Any]) -> ReadResult:
    """Our view of a `/v1/read` response; absent parts (not asked for) stay empty."""
    results = body.get("results") or {}
    meta = (body.get("metadata") or {}).get("metadata") or {}
    summary = results.get("summary") or {}
    sentiments = results.get("sentiments") or {}
    average = sentiments.get("average") or {}
    sentiment_segments = tuple(
        Segment(
            int(_num(seg.get("start_word"))),
            int(_num(seg.get("end_word"))),
            str(seg.get("sentiment") or ""),
            _num(seg.get("sentiment_score")),
        )
        for seg in sentiments.get("segments") or ()
    )
    score = average.get("sentiment_score")
    return ReadResult(
        request_id=str(meta.get("request_id") or ""),
        summary=str(summary.get("text") or "").strip(),
        sentiment=str(average.get("sentiment") or ""),
        sentiment_score=_num(score) if score is not None else None,
        sentiments=sentiment_segments,
        topics=_segments(results.get("topics"), "topics", "topic"),
        intents=_segments(results.get("intents"), "intents", "intent"),
    )


def error_reason(response: httpx.Response) -> str:
    """Deepgram's short reason from an error response (REST endpoints share the shape)."""
    try:
        body = response.json()
    except ValueError:
        return ""
    if not isinstance(body, dict):
        return ""
    reason = body.get("err_msg") or body.get("message") or body.get("err_code") or ""
    return " ".join(str(reason).split())[:_REASON_CHARS]


class ReadClient:
    """`POST /v1/read` with `Authorization: Token <key>`; one pooled HTTP client."""

    def __init__(self, base_url: str, api_key: str, *, timeout_s: float = 30.0) -> None:
        self.url = base_url.rstrip("/") + READ_PATH
        self._headers = {"Authorization": f"Token {api_key}"}
        self._http = httpx.AsyncClient(timeout=timeout_s, verify=tls_context())

    async def aclose(self) -> None:
        await self._http.aclose()

    async def analyze(self, text: str, options: ReadOptions) -> ReadResult:
        try:
            response = await self._http.post(
                self.url, params=options.query(), json={"text": text}, headers=self._headers
            )
        except httpx.TimeoutException:
            raise ReadError("timed out", timed_out=True) from None
        except httpx.HTTPError as exc:
            raise ReadError(f"request failed: {type(exc).__name__}") from None
        if response.status_code != 200:
            reason = error_reason(response)
            raise ReadError(
                f"HTTP {response.status_code}" + (f": {reason}" if reason else ""),
                status=response.status_code,
                retry_after_s=retry_after_s(response.headers),
            )
        try:
            body = response.json()
        except ValueError:
            raise ReadError("HTTP 200 with a body that is not JSON") from None
        if not isinstance(body, dict):
            raise ReadError("HTTP 200 with a body that is not a JSON object")
        return parse_response(body)
