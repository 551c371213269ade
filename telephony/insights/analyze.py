"""One ended call through `/v1/read`, with retries, and its results (or failure) stored.

Shared by the app's worker and `telephony insights run`, so both send the same text (the
stored turns, redacted again when the profile redacts) and store the same shape. A profile
missing from the YAML, or with every `insights:` switch off, sends nothing: the row is `off`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping

from sqlalchemy.ext.asyncio import AsyncEngine

from telephony.config.schema import Profile
from telephony.deepgram.read import ReadClient, ReadError, ReadOptions, ReadResult
from telephony.insights.metrics import InsightsMetrics, result_label
from telephony.insights.text import build_text, labels, turn_sentiments
from telephony.retry import SERVER_ERRORS, Backoff, RetryPolicy
from telephony.store import insights as store
from telephony.store.insights import DONE, FAILED, OFF, PENDING, Insights

log = logging.getLogger(__name__)

# Nobody waits on a post-call analysis: back off for longer than a live link would, and
# honour a Retry-After of up to two minutes before giving the call up as failed.
POLICY = RetryPolicy(
    attempts=4,
    statuses=SERVER_ERRORS,
    backoff=Backoff(base_s=1.0, cap_s=30.0),
    max_wait_s=120.0,
)

Sleep = Callable[[float], Awaitable[None]]


def read_options(profile: Profile | None) -> ReadOptions | None:
    """What to ask `/v1/read` for this profile; None: nothing (insights off or no profile)."""
    if profile is None or not profile.insights.enabled:
        return None
    cfg = profile.insights
    return ReadOptions(cfg.summary, cfg.sentiment, cfg.topics, cfg.intents, cfg.language)


async def _request(
    client: ReadClient, text: str, options: ReadOptions, metrics: InsightsMetrics | None
) -> ReadResult:
    started = time.perf_counter()
    try:
        result = await client.analyze(text, options)
    except ReadError as exc:
        if metrics is not None:
            label = result_label(exc.status, timed_out=exc.timed_out)
            metrics.requests.labels(label).inc()
            metrics.latency.observe(time.perf_counter() - started)
        raise
    if metrics is not None:
        metrics.requests.labels("ok").inc()
        metrics.latency.observe(time.perf_counter() - started)
    return result


async def analyze_call(
    engine: AsyncEngine,
    client: ReadClient,
    profiles: Mapping[str, Profile],
    sid: str,
    *,
    policy: RetryPolicy = POLICY,
    metrics: InsightsMetrics | None = None,
    sleep: Sleep = asyncio.sleep,
    only_pending: bool = False,
) -> str:
    """Analyse one ended call and store the outcome; returns its status (done | failed | off),
    or "" when nothing was done: the call is unknown or not over, or (`only_pending`, the
    worker) its row is not pending or another taker claimed it first."""
    call = await store.call_for_insights(engine, sid)
    if call is None:
        return ""
    if only_pending and (
        call["status"] != PENDING or not await store.claim(engine, sid, call["updated_at"])
    ):
        return ""
    profile = profiles.get(call["profile"])
    options = read_options(profile)
    if options is None or profile is None:
        await store.save_off(engine, sid)
        return _finished(metrics, OFF)
    text = build_text(call["turns"], redaction=profile.redaction)
    if not text.turns:  # nothing was said: nothing to send
        await store.save_done(engine, sid, Insights(), attempts=0)
        return _finished(metrics, DONE)
    attempt = 0
    while True:
        attempt += 1
        try:
            result = await _request(client, text.text, options, metrics)
            break
        except ReadError as exc:
            wait = policy.wait_before(attempt, exc.retry_after_s) if exc.retryable else None
            if wait is None:
                log.warning(
                    "insights failed after %d tries: %s", attempt, exc, extra={"call_sid": sid}
                )
                await store.save_failed(engine, sid, str(exc), attempts=attempt)
                return _finished(metrics, FAILED)
            await sleep(wait)
    found = Insights(
        summary=result.summary,
        sentiment=result.sentiment,
        sentiment_score=result.sentiment_score,
        topics=labels(result.topics),
        intents=labels(result.intents),
        turn_sentiments=turn_sentiments(text.turns, result.sentiments),
    )
    await store.save_done(engine, sid, found, attempts=attempt)
    return _finished(metrics, DONE)


def _finished(metrics: InsightsMetrics | None, status: str) -> str:
    if metrics is not None:
        metrics.calls.labels(status).inc()
    return status
