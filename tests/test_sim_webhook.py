"""The fakes' one webhook hop (telephony.sim.webhook), as the full caller and the load
generator's Dialer both use it, and the Dialer's lean callers on the shared play-out buffer."""

from __future__ import annotations

from urllib.parse import parse_qsl

import httpx
import pytest
from twilio.request_validator import RequestValidator

from telephony.sim.lean_call import Dialer, LeanCall
from telephony.sim.load import Probes
from telephony.sim.playout import MAX_BUFFER_BYTES
from telephony.sim.webhook import read_twiml
from telephony.twilio import twiml

AUTH = "webhook-test-auth-token"
BASE = "http://service.test"
MEDIA = "wss://service.test/twilio/media"
TRICKY = "a&b<c>\"d'e"


def test_read_twiml_connect_stream_with_parameters() -> None:
    answer = read_twiml(twiml.connect_stream(MEDIA, {"token": TRICKY}, status_callback=BASE))
    assert answer.opens_stream and not answer.fork
    assert (answer.stream_url, answer.parameters, answer.verbs) == (
        MEDIA,
        {"token": TRICKY},
        ["Connect"],
    )


def test_verbs_after_connect_wait_for_the_stream_to_end() -> None:
    # <Connect> blocks: what follows it is not said (nor hung up) when the call starts, only
    # once the stream ends without a REST update having replaced the document.
    answer = read_twiml(
        twiml.connect_stream(MEDIA, {}, status_callback=BASE, then_apologise=(TRICKY, None))
    )
    assert answer.opens_stream and not answer.said and not answer.hung_up
    assert answer.after_stream is not None
    assert (answer.after_stream.said, answer.after_stream.hung_up) == ([TRICKY], True)


def test_read_twiml_fork_say_and_errors() -> None:
    fork = read_twiml(twiml.fork_and_dial(MEDIA, {}, queue="sales"))
    assert fork.fork and fork.track == "both_tracks" and fork.dialled == ["queue:sales"]
    goodbye = read_twiml(twiml.say_and_hang_up(TRICKY))
    assert (goodbye.said, goodbye.hung_up, goodbye.opens_stream) == ([TRICKY], True, False)
    assert read_twiml(b"<Response><Say>").error is not None
    # <Connect> streams the inbound track only: Twilio refuses any other (31941).
    both = b'<Response><Connect><Stream url="wss://x/y" track="both_tracks"/></Connect></Response>'
    assert read_twiml(both).error is not None and not read_twiml(both).opens_stream


def dialer_answering(body: str, seen: list[httpx.Request]) -> Dialer:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, text=body, headers={"content-type": "text/xml"})

    dialer = Dialer(Probes(1), base_url=BASE, auth_token=AUTH, number="+15550001000")
    dialer.http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return dialer


async def test_dialer_posts_a_signed_webhook_and_reads_the_stream() -> None:
    seen: list[httpx.Request] = []
    dialer = dialer_answering(
        twiml.connect_stream(MEDIA, {"k": TRICKY}, status_callback=BASE), seen
    )
    url, parameters = await dialer._webhook("CA" + "1" * 32)
    await dialer.aclose()
    assert (url, parameters) == (MEDIA, {"k": TRICKY})
    [request] = seen
    form = dict(parse_qsl(request.content.decode()))
    assert form["CallSid"] == "CA" + "1" * 32 and form["To"] == "+15550001000"
    signature = request.headers["x-twilio-signature"]
    assert RequestValidator(AUTH).validate(f"{BASE}/twilio/voice", form, signature)


@pytest.mark.parametrize(
    "body",
    [
        '<Response><Connect><Stream url="wss://x/y" track="both_tracks"/></Connect></Response>',
        twiml.fork_and_dial(MEDIA, {}, number="+15551234567"),
        twiml.say_and_hang_up("Busy."),
    ],
)
async def test_dialer_refuses_answers_twilio_would_not_stream(body: str) -> None:
    dialer = dialer_answering(body, [])
    with pytest.raises(ConnectionError):
        await dialer._webhook("CA" + "2" * 32)
    await dialer.aclose()


async def test_lean_call_plays_out_like_the_full_caller() -> None:
    probes = Probes(1)
    call = LeanCall(probes, 0, "CA" + "3" * 32, "ws://127.0.0.1:1/m", {}, {})
    call._on_media(b"\x01" * 800, 10.0)  # 100 ms of bot audio, nothing kept
    assert call.player.buffered == 800 and not call.player.pending
    assert call.player.mark("m", 10.0) == []
    [echo] = call.player.advance(10.1)
    assert echo.name == "m"
    # Past ~10 minutes buffered Twilio discards and warns (31931): counted, once.
    call._on_media(b"\x00" * (MAX_BUFFER_BYTES + 160), 20.0)
    call._on_media(b"\x00" * 160, 20.0)
    assert probes.errors["buffer_over_10min_31931"] == 1
    assert call.player.buffered == MAX_BUFFER_BYTES


def test_read_twiml_finds_number_urls() -> None:
    answer = read_twiml(
        '<Response><Dial answerOnBridge="true"><Number url="https://x.test/w?a=1&amp;b=2">'
        "+15557770000</Number><Number>+15557770001</Number></Dial></Response>"
    )
    assert answer.dialled == ["+15557770000", "+15557770001"]
    assert answer.number_urls == [("+15557770000", "https://x.test/w?a=1&b=2", "POST")]
