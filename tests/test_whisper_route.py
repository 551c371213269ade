"""`POST /twilio/whisper`: signed by Twilio, bound to one call, never an error that drops the
transfer. Through real uvicorn on loopback (the call's whisper event put where a transfer
puts it: this instance's finished calls, or only the shared store)."""

from __future__ import annotations

import time
from urllib.parse import urlencode

import httpx
import pytest

from routes import whisper as whisper_route
from telephony.session.summary import CallSummary
from telephony.transcript import Event, EventKind
from telephony.twilio.security import sign, whisper_query
from tests.conftest import AUTH_TOKEN, RunningApp

pytestmark = pytest.mark.clock(4)  # timers run 4x real time (tests/fast_clock.py)

TEXT = "Transferring a caller. They said: I want a refund. They asked for a person."


def leg_form(parent: str = "CA1") -> dict[str, str]:
    """What Twilio posts for the dialled person's leg when they answer."""
    return {
        "CallSid": "CA" + "9" * 32,
        "ParentCallSid": parent,
        "AccountSid": "AC1",
        "From": "+15557654321",
        "To": "+15557770000",
        "CallStatus": "in-progress",
        "Direction": "outbound-dial",
    }


def url_for(app: RunningApp, call_sid: str, **kw: float) -> str:
    query = whisper_query(app.settings.token_secret(), call_sid, **kw)  # type: ignore[arg-type]
    return f"{app.settings.whisper_url}?{urlencode(query)}"


async def post(
    app: RunningApp, url: str, form: dict[str, str], signature: str | None = None
) -> httpx.Response:
    if signature is None:
        signature = sign(AUTH_TOKEN, url, form)
    async with app.http() as client:
        return await client.post(
            url.removeprefix(app.url), data=form, headers={"X-Twilio-Signature": signature}
        )


def carried_here(app: RunningApp, call_sid: str, **data: str) -> None:
    """A call this instance carried and transferred with a whisper."""
    summary = CallSummary(
        call_sid=call_sid,
        stream_sid="MZ1",
        profile="support",
        from_number="+15557654321",
        to_number="+15550001000",
        started_at=time.time(),
    )
    summary.transcript.events.append(
        Event(5000, EventKind.WHISPER, {"text": TEXT, "source": "template", **data})
    )
    app.app.state.services.registry.finished.append(summary)


async def test_signed_whisper_request_gets_the_calls_text(running_app: RunningApp) -> None:
    carried_here(running_app, "CA1", voice="Polly.Joanna")
    resp = await post(running_app, url_for(running_app, "CA1"), leg_form())
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/xml")
    assert resp.text == f'<Response><Say voice="Polly.Joanna">{TEXT}</Say></Response>'


@pytest.mark.parametrize("signature", ["", "bm90IGEgc2lnbmF0dXJl"])
async def test_unsigned_or_forged_request_is_refused(
    running_app: RunningApp, signature: str
) -> None:
    carried_here(running_app, "CA1")
    resp = await post(running_app, url_for(running_app, "CA1"), leg_form(), signature)
    assert resp.status_code == 403
    assert TEXT not in resp.text


async def test_signature_covers_the_query(running_app: RunningApp) -> None:
    """A signature Twilio made for call A's URL does not carry over to call B's."""
    carried_here(running_app, "CA1")
    carried_here(running_app, "CA2")
    signed_for_a = sign(AUTH_TOKEN, url_for(running_app, "CA1"), leg_form("CA2"))
    resp = await post(running_app, url_for(running_app, "CA2"), leg_form("CA2"), signed_for_a)
    assert resp.status_code == 403


async def test_a_token_opens_its_own_call_only(running_app: RunningApp) -> None:
    carried_here(running_app, "CA1")
    carried_here(running_app, "CA2")
    # Call CA2's URL with CA1's MAC: connected, without anybody's whisper.
    good = whisper_query(running_app.settings.token_secret(), "CA1")
    forged = {**good, "call": "CA2"}
    url = f"{running_app.settings.whisper_url}?{urlencode(forged)}"
    resp = await post(running_app, url, leg_form("CA2"))
    assert resp.status_code == 200 and resp.text == "<Response />"
    # A valid URL for CA1 asked for by a leg of another call: likewise.
    resp = await post(running_app, url_for(running_app, "CA1"), leg_form("CA2"))
    assert resp.text == "<Response />"


async def test_expired_token_connects_without_a_whisper(running_app: RunningApp) -> None:
    carried_here(running_app, "CA1")
    url = url_for(running_app, "CA1", now=time.time() - 3600)
    resp = await post(running_app, url, leg_form())
    assert resp.status_code == 200 and resp.text == "<Response />"


async def test_unknown_call_connects_without_a_whisper(
    running_app: RunningApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(whisper_route, "WHISPER_WAIT_S", 0.5)
    resp = await post(running_app, url_for(running_app, "CA404"), leg_form("CA404"))
    assert resp.status_code == 200 and resp.text == "<Response />"


async def test_another_instance_reads_the_whisper_from_the_store(
    running_app: RunningApp,
) -> None:
    """The call was carried by another instance: only the shared store has its whisper, and
    it may arrive a moment after Twilio asks (write-behind)."""
    store = running_app.app.state.services.transcripts
    store.call_started("CA7", profile="support", mode="flux")
    store.event("CA7", Event(5000, EventKind.WHISPER, {"text": TEXT, "source": "llm"}))
    resp = await post(running_app, url_for(running_app, "CA7"), leg_form("CA7"))
    assert resp.status_code == 200
    assert resp.text == f"<Response><Say>{TEXT}</Say></Response>"
