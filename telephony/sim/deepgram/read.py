"""The fake Text Intelligence endpoint, `POST /v1/read` (docs/protocol.md §9).

A plain HTTP server of its own (uvicorn in the running loop, on a loopback port): the fake's
WebSocket server cannot take request bodies. It checks what Deepgram checks (the `Token`
key, `language=en`, boolean switches, a JSON body with non-empty `text`) and answers with
results computed from the text alone, so the same text always gets the same answer:

- sentiment: the text split into sentences (a word ending in . ! or ?), each scored from a
  small word list, `start_word`/`end_word` inclusive over whitespace-separated words; the
  average weighted by words; labels at ±1/3 as Deepgram documents;
- topics and intents: from keyword tables, one segment per sentence with a keyword;
- summary: "The caller …" and the caller's first sentence.

`fail_next(status, times, retry_after)` answers the next requests with an error (after
recording them), `delay_s` holds every answer (timeouts). `requests` records each request's
query, body text and masked credentials, for tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from telephony.inprocess import InProcessServer, StartStop, bind_loopback

SWITCHES = ("summarize", "sentiment", "topics", "intents")
# Parameters Deepgram documents for /v1/read that we do not use: accepted, ignored here.
OTHER_PARAMS = frozenset(
    {
        "tag",
        "callback",
        "callback_method",
        "custom_topic",
        "custom_topic_mode",
        "custom_intent",
        "custom_intent_mode",
    }
)
POSITIVE = frozenset(
    [
        "thanks",
        "thank",
        "great",
        "good",
        "perfect",
        "wonderful",
        "happy",
        "love",
        "excellent",
        "helpful",
        "appreciate",
        "brilliant",
        "lovely",
        "glad",
        "awesome",
        "fantastic",
    ]
)
NEGATIVE = frozenset(
    [
        "angry",
        "terrible",
        "awful",
        "bad",
        "broken",
        "late",
        "never",
        "refund",
        "wrong",
        "problem",
        "upset",
        "disappointed",
        "worst",
        "cancel",
        "complaint",
        "frustrated",
        "annoyed",
    ]
)
TOPICS = {
    "refund": "Refund request",
    "order": "Order status",
    "delivery": "Delivery",
    "parcel": "Delivery",
    "card": "Payment",
    "payment": "Payment",
    "bill": "Billing",
    "invoice": "Billing",
    "hours": "Opening hours",
    "open": "Opening hours",
    "appointment": "Scheduling",
}
INTENTS = {
    "refund": "Request refund",
    "cancel": "Cancel order",
    "human": "Speak to an agent",
    "person": "Speak to an agent",
    "book": "Book appointment",
    "track": "Track order",
    "where": "Track order",
}
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)?")
_MODEL = "00000000-0000-4000-8000-00000000f4ce"  # the fake's "model_uuid"


@dataclass(frozen=True, slots=True)
class RecordedRead:
    query: dict[str, str]
    text: str
    auth: str  # "Token ***" when it matched, else what scheme was sent, masked
    status: int
    time: float  # the loop's clock


def _label(score: float) -> str:
    return "positive" if score > 1 / 3 else "negative" if score < -1 / 3 else "neutral"


def _sentences(words: list[str]) -> list[tuple[int, int]]:
    """Inclusive word ranges of sentences: a word ending in . ! or ? ends one."""
    out: list[tuple[int, int]] = []
    start = 0
    for i, word in enumerate(words):
        if word.endswith((".", "!", "?")) or i == len(words) - 1:
            out.append((start, i))
            start = i + 1
    return out


def _keys(words: list[str]) -> list[str]:
    return [m.group().casefold() for w in words for m in _WORD.finditer(w)]


def _score(words: list[str]) -> float:
    keys = _keys(words)
    pos = sum(k in POSITIVE for k in keys)
    neg = sum(k in NEGATIVE for k in keys)
    return round(0.9 * (pos - neg) / (pos + neg), 4) if pos + neg else 0.0


def _labelled(
    words: list[str], spans: list[tuple[int, int]], table: dict[str, str], item: str
) -> dict[str, Any]:
    segments = []
    for start, end in spans:
        keys = _keys(words[start : end + 1])
        found = list(dict.fromkeys(table[k] for k in keys if k in table))
        if found:
            segments.append(
                {
                    "text": " ".join(words[start : end + 1]),
                    "start_word": start,
                    "end_word": end,
                    item + "s": [
                        {item: label, "confidence_score": round(0.95 - 0.1 * n, 2)}
                        for n, label in enumerate(found)
                    ],
                }
            )
    return {"segments": segments}


def analyse(text: str, switches: dict[str, bool]) -> dict[str, Any]:
    """The `results` object for `text` with the switches that are on."""
    words = text.split()
    spans = _sentences(words)
    results: dict[str, Any] = {}
    if switches["summarize"]:
        caller = [line.split(None, 1) for line in text.splitlines() if line.startswith("Caller:")]
        said = next((parts[1] for parts in caller if len(parts) > 1), " ".join(words))
        first = _sentences(said.split())[0] if said.split() else (0, -1)
        sentence = " ".join(said.split()[first[0] : first[1] + 1])
        results["summary"] = {"text": f"The caller said: {sentence}".strip()}
    if switches["topics"]:
        results["topics"] = _labelled(words, spans, TOPICS, "topic")
    if switches["intents"]:
        results["intents"] = _labelled(words, spans, INTENTS, "intent")
    if switches["sentiment"]:
        segments: list[dict[str, Any]] = []
        for start, end in spans:
            score = _score(words[start : end + 1])
            segments.append(
                {
                    "text": " ".join(words[start : end + 1]),
                    "start_word": start,
                    "end_word": end,
                    "sentiment": _label(score),
                    "sentiment_score": score,
                }
            )
        total = sum((s["end_word"] - s["start_word"] + 1) for s in segments) or 1
        average = (
            sum(s["sentiment_score"] * (s["end_word"] - s["start_word"] + 1) for s in segments)
            / total
        )
        results["sentiments"] = {
            "segments": segments,
            "average": {"sentiment": _label(average), "sentiment_score": round(average, 4)},
        }
    return results


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Any:
    body = {"err_code": code, "err_msg": message, "request_id": str(uuid.uuid4())}
    return JSONResponse(body, status_code=status, headers=headers)


class FakeRead(StartStop):
    def __init__(self, api_key: str = "test-key", *, delay_s: float = 0.0) -> None:
        self.api_key = api_key
        self.delay_s = delay_s
        self.requests: list[RecordedRead] = []
        self._failures: list[tuple[int, str | None]] = []
        self._server: InProcessServer | None = None
        self._host = "127.0.0.1"
        self._stopping = asyncio.Event()
        self.app = Starlette(routes=[Route("/v1/read", self._read, methods=["POST"])])

    @property
    def started(self) -> bool:
        return self._server is not None

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the fake /v1/read is not serving")
        return f"http://{self._host}:{self._server.port}"

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._stopping.clear()
        if self._server is None:
            self._host = host
            server = InProcessServer(self.app, bind_loopback(port, host), lifespan="off")
            await server.start()
            self._server = server

    async def stop(self) -> None:
        server, self._server = self._server, None
        self._stopping.set()
        if server is not None:
            await server.stop()

    def fail_next(self, status: int, times: int = 1, retry_after: str | None = None) -> None:
        """The next `times` requests get `status` (with `Retry-After` when given)."""
        self._failures += [(status, retry_after)] * times

    async def _read(self, request: Request) -> Any:
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        auth_ok = scheme.lower() == "token" and key == self.api_key
        query = dict(request.query_params)
        body = await request.body()
        text = ""
        data: Any = None
        with contextlib.suppress(orjson.JSONDecodeError):
            data = orjson.loads(body) if body else None
        if isinstance(data, dict) and isinstance(data.get("text"), str):
            text = data["text"]
        response = self._answer(auth_ok, query, data, text)
        masked = f"{scheme} ***" if scheme else ""
        loop = asyncio.get_running_loop()
        self.requests.append(RecordedRead(query, text, masked, response.status_code, loop.time()))
        if self.delay_s:  # cut short by stop(), so a held answer never holds up the test
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.delay_s)
        return response

    def _answer(self, auth_ok: bool, query: dict[str, str], data: Any, text: str) -> Any:
        if not auth_ok:
            return _error(401, "INVALID_AUTH", "Invalid credentials.")
        if self._failures:
            status, retry_after = self._failures.pop(0)
            headers = {"Retry-After": retry_after} if retry_after is not None else None
            return _error(status, "FAKE_FAULT", f"injected {status}", headers)
        unknown = sorted(set(query) - set(SWITCHES) - OTHER_PARAMS - {"language"})
        if unknown:
            return _error(400, "INVALID_QUERY_PARAMETER", f"unknown parameter {unknown[0]}")
        if query.get("language") != "en":
            return _error(400, "INVALID_QUERY_PARAMETER", "language must be en")
        switches: dict[str, bool] = {}
        for name in SWITCHES:
            value = query.get(name, "false")
            if value not in ("true", "false"):
                return _error(400, "INVALID_QUERY_PARAMETER", f"{name} takes true or false")
            switches[name] = value == "true"
        if not isinstance(data, dict) or set(data) != {"text"} or not text.strip():
            return _error(400, "INVALID_REQUEST", 'the body must be {"text": "<non-empty>"}')
        request_id = str(uuid.uuid5(uuid.NAMESPACE_URL, repr(sorted(query.items())) + text))
        info = {"model_uuid": _MODEL, "input_tokens": len(text.split()), "output_tokens": 0}
        metadata: dict[str, Any] = {
            "request_id": request_id,
            "created": datetime.fromtimestamp(time.time(), UTC).isoformat(),
            "language": "en",
        }
        for name, key in zip(
            SWITCHES, ("summary_info", "sentiment_info", "topics_info", "intents_info"), strict=True
        ):
            if switches[name]:
                metadata[key] = info
        body = {"metadata": {"metadata": metadata}, "results": analyse(text, switches)}
        return JSONResponse(body, headers={"dg-request-id": request_id})
