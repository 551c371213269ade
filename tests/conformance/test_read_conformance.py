"""The fake's `/v1/read` against Deepgram's own SDK models (the SDK is a test oracle only),
and our client's request against the SDK's request type and parameters."""

from __future__ import annotations

import inspect
from typing import Any

import httpx
import pytest
from deepgram.read.v1.text.raw_client import AsyncRawTextClient
from deepgram.types.read_v1request_text import ReadV1RequestText
from deepgram.types.read_v1response import ReadV1Response
from deepgram.types.shared_intents import SharedIntents
from deepgram.types.shared_sentiments import SharedSentiments
from deepgram.types.shared_topics import SharedTopics

from telephony.deepgram.read import ReadClient, ReadOptions
from telephony.sim.deepgram.read import FakeRead
from tests.conformance.sdk_oracle import conform

TEXT = (
    "Agent: Hello, how can I help?\n"
    "Caller: Where is my order? It is late and I want a refund. Thanks for nothing.\n"
    "Agent: I am sorry. I can book a call back, great."
)
ALL = ReadOptions(summary=True, sentiment=True, topics=True, intents=True)


async def _post(fake: FakeRead, query: dict[str, str], body: Any, key: str = "k") -> httpx.Response:
    async with httpx.AsyncClient() as http:
        return await http.post(
            fake.url + "/v1/read",
            params=query,
            json=body,
            headers={"Authorization": f"Token {key}"},
        )


async def test_the_fakes_answer_is_the_sdks_response_model() -> None:
    async with FakeRead("k") as fake:
        got = await _post(fake, ALL.query(), {"text": TEXT})
    assert got.status_code == 200, got.text
    body = got.json()
    results = body["results"]
    # Sentiments, topics and intents: exactly the SDK's shared models, strictly.
    assert conform(SharedSentiments, results["sentiments"]) == []
    assert conform(SharedTopics, results["topics"]) == []
    assert conform(SharedIntents, results["intents"]) == []
    # The summary is what Deepgram's docs show (`results.summary.text`); the SDK (v5) models
    # it one level deeper (`summary.results.summary.text`) but keeps unknown keys, so it
    # parses either way and our client reads the documented shape (docs/protocol.md §9).
    assert set(results["summary"]) == {"text"} and results["summary"]["text"]
    parsed = ReadV1Response.model_validate(body)
    assert parsed.results.sentiments is not None and parsed.results.sentiments.average is not None
    assert parsed.results.sentiments.average.sentiment in ("positive", "neutral", "negative")
    segments = parsed.results.sentiments.segments or []
    assert len(segments) >= 3 and segments[0].start_word == 0
    words = TEXT.split()
    assert segments[-1].end_word == len(words) - 1  # inclusive, whitespace words
    for seg in segments:  # each segment's text is exactly its words
        assert seg.text == " ".join(words[int(seg.start_word) : int(seg.end_word) + 1])
    assert parsed.metadata.metadata is not None and parsed.metadata.metadata.request_id


async def test_the_fake_is_deterministic_and_answers_only_what_was_asked() -> None:
    async with FakeRead("k") as fake:
        a = (await _post(fake, ALL.query(), {"text": TEXT})).json()
        b = (await _post(fake, ALL.query(), {"text": TEXT})).json()
        only = (await _post(fake, ReadOptions(sentiment=True).query(), {"text": TEXT})).json()
    assert a["results"] == b["results"]
    assert a["metadata"]["metadata"]["request_id"] == b["metadata"]["metadata"]["request_id"]
    assert set(only["results"]) == {"sentiments"}
    assert set(only["metadata"]["metadata"]) >= {"sentiment_info"}
    assert "summary_info" not in only["metadata"]["metadata"]


@pytest.mark.parametrize(
    ("query", "body", "key", "status"),
    [
        ({"language": "en", "sentiment": "true"}, {"text": "hi"}, "wrong", 401),
        ({"sentiment": "true"}, {"text": "hi"}, "k", 400),  # language is required
        ({"language": "en", "summarize": "v2"}, {"text": "hi"}, "k", 400),  # boolean on /read
        ({"language": "en", "sentiment": "yes"}, {"text": "hi"}, "k", 400),
        ({"language": "en", "diarize": "true"}, {"text": "hi"}, "k", 400),
        ({"language": "en", "sentiment": "true"}, {"text": "  "}, "k", 400),
        ({"language": "en", "sentiment": "true"}, {"url": "https://x"}, "k", 400),
    ],
)
async def test_the_fake_refuses_what_deepgram_refuses(
    query: dict[str, str], body: Any, key: str, status: int
) -> None:
    async with FakeRead("k") as fake:
        got = await _post(fake, query, body, key)
    assert got.status_code == status
    assert set(got.json()) >= {"err_code", "err_msg"}


async def test_our_request_is_the_sdks_request() -> None:
    """Body: the SDK's ReadV1RequestText; every query parameter one the SDK's analyze() has,
    booleans as "true"; the key as `Token`."""
    assert conform(ReadV1RequestText, {"text": TEXT}) == []
    sdk_params = set(inspect.signature(AsyncRawTextClient.analyze).parameters)
    assert set(ALL.query()) <= sdk_params
    assert ALL.query() == {
        "language": "en",
        "summarize": "true",
        "sentiment": "true",
        "topics": "true",
        "intents": "true",
    }
    async with FakeRead("k") as fake:
        client = ReadClient(fake.url, "k")
        try:
            await client.analyze(TEXT, ALL)
        finally:
            await client.aclose()
    (seen,) = fake.requests
    assert (seen.status, seen.auth, seen.text, seen.query) == (200, "Token ***", TEXT, ALL.query())
