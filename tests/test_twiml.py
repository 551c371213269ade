"""telephony.twilio.twiml: each builder's document, parsed, with hostile values escaped."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from telephony.twilio import twiml

URL = "wss://example.test/twilio/media"
STATUS = "https://example.test/twilio/status"
# Would end the element (or add a verb) if it were pasted into the XML unescaped.
HOSTILE = 'a<b>&"c"</Say><Hangup/>'


def parse(document: str) -> ET.Element:
    assert not document.startswith("<?xml")  # counts towards the 4000 chars for nothing
    root = ET.fromstring(document)
    assert root.tag == "Response"
    return root


def verbs(root: ET.Element) -> list[str]:
    return [child.tag for child in root]


def test_say_and_hang_up_escapes_the_message() -> None:
    root = parse(twiml.say_and_hang_up(HOSTILE))
    assert verbs(root) == ["Say", "Hangup"]
    assert root.findtext("Say") == HOSTILE


def test_redirect_posts_to_the_url() -> None:
    url = "https://other.test/voice?a=1&b=2"
    root = parse(twiml.redirect(url))
    [verb] = root
    assert (verb.tag, verb.text, verb.get("method")) == ("Redirect", url, "POST")


def test_connect_stream_carries_parameters_and_status_callback() -> None:
    root = parse(
        twiml.connect_stream(URL, {"call_token": HOSTILE, "to": "+1"}, status_callback=STATUS)
    )
    assert verbs(root) == ["Connect"]
    stream = root.find("./Connect/Stream")
    assert stream is not None
    assert stream.get("url") == URL
    assert stream.get("track") is None  # <Connect> streams the inbound track only
    assert (stream.get("statusCallback"), stream.get("statusCallbackMethod")) == (STATUS, "POST")
    params = {p.get("name"): p.get("value") for p in stream.findall("Parameter")}
    assert params == {"call_token": HOSTILE, "to": "+1"}


@pytest.mark.parametrize("transfer_to,then", [(None, "Hangup"), ("+15551234567", "Dial")])
def test_connect_stream_apologises_if_the_stream_ever_ends_unreplaced(
    transfer_to: str | None, then: str
) -> None:
    answer = twiml.connect_stream(
        URL, {}, status_callback=STATUS, then_apologise=(HOSTILE, transfer_to)
    )
    root = parse(answer)
    assert verbs(root) == ["Connect", "Say", then]  # Twilio runs these once the stream ends
    assert root.findtext("Say") == HOSTILE
    if transfer_to:
        assert root.findtext("Dial") == transfer_to


def test_fork_and_dial_a_number() -> None:
    root = parse(twiml.fork_and_dial(URL, {"k": HOSTILE}, number="+15551234567"))
    assert verbs(root) == ["Start", "Dial"]
    stream = root.find("./Start/Stream")
    assert stream is not None
    assert (stream.get("url"), stream.get("track")) == (URL, "both_tracks")
    assert stream.get("statusCallback") is None
    assert [(p.get("name"), p.get("value")) for p in stream.findall("Parameter")] == [
        ("k", HOSTILE)
    ]
    assert root.findtext("Dial") == "+15551234567"


def test_fork_and_dial_a_queue_with_status_callback() -> None:
    root = parse(twiml.fork_and_dial(URL, {}, queue="sales<1>", status_callback=STATUS))
    stream = root.find("./Start/Stream")
    assert stream is not None and stream.get("statusCallback") == STATUS
    assert root.findtext("./Dial/Queue") == "sales<1>"


@pytest.mark.parametrize(
    ("number", "queue"), [(None, None), ("+15551234567", "q"), ("555<Hangup/>", None)]
)
def test_fork_and_dial_refuses_bad_targets(number: str | None, queue: str | None) -> None:
    with pytest.raises(twiml.TwimlError):
        twiml.fork_and_dial(URL, {}, number=number, queue=queue)


def test_dial_with_caller_id() -> None:
    root = parse(twiml.dial("+15551234567", caller_id="+15550001000"))
    [verb] = root
    assert (verb.tag, verb.text, verb.get("callerId")) == ("Dial", "+15551234567", "+15550001000")
    assert parse(twiml.dial("+15551234567")).find("Dial").get("callerId") is None  # type: ignore[union-attr]


@pytest.mark.parametrize("number", ["5551234567", "+1555<Hangup/>", "+0123", ""])
def test_dial_refuses_non_e164(number: str) -> None:
    with pytest.raises(twiml.TwimlError, match=r"E\.164"):
        twiml.dial(number)
    with pytest.raises(twiml.TwimlError, match=r"E\.164"):
        twiml.dial("+15551234567", caller_id=number)


def test_apology_then_hang_up_or_transfer() -> None:
    hang_up = parse(twiml.apology(HOSTILE))
    assert verbs(hang_up) == ["Say", "Hangup"] and hang_up.findtext("Say") == HOSTILE
    transfer = parse(twiml.apology("Sorry.", "+15551234567"))
    assert verbs(transfer) == ["Say", "Dial"] and transfer.findtext("Dial") == "+15551234567"
    with pytest.raises(twiml.TwimlError):
        twiml.apology("Sorry.", "not a number")


def test_control_characters_are_stripped_so_the_document_stays_well_formed() -> None:
    frm = "+1555\x00\x01\x08\x1b\x7f\x85\ufffe0001\r\n\t"
    for document in (
        twiml.connect_stream(URL, {"from": frm}, status_callback=STATUS),
        twiml.fork_and_dial(URL, {"from": frm}, number="+15551234567"),
    ):
        stream = parse(document).find(".//Stream")
        assert stream is not None
        [param] = stream.findall("Parameter")
        assert param.get("value") == "+15550001"
    root = parse(twiml.say_and_hang_up("Hello\x00 there,\nfriend\x1f."))
    assert root.findtext("Say") == "Hello there,\nfriend."


WHISPER_URL = "https://example.test/twilio/whisper?call=CA1&exp=1&sig=a/b+c"


def test_dial_with_a_whisper_url_wraps_the_number() -> None:
    root = parse(twiml.dial("+15557770000", whisper_url=WHISPER_URL))
    [dial] = root
    assert (dial.tag, dial.get("answerOnBridge"), (dial.text or "").strip()) == ("Dial", "true", "")
    [number] = dial
    assert (number.tag, number.text) == ("Number", "+15557770000")
    assert (number.get("url"), number.get("method")) == (WHISPER_URL, "POST")


def test_fork_and_dial_with_a_whisper_url() -> None:
    root = parse(twiml.fork_and_dial(URL, {}, number="+15557770000", whisper_url=WHISPER_URL))
    assert verbs(root) == ["Start", "Dial"]
    number = root.find("./Dial/Number")
    assert number is not None and number.get("url") == WHISPER_URL


def test_whisper_says_the_text_escaped_with_its_voice_or_nothing_at_all() -> None:
    root = parse(twiml.whisper(HOSTILE, voice="Polly.Joanna", language="en-US"))
    [say] = root
    assert (say.tag, say.text, say.get("voice"), say.get("language")) == (
        "Say",
        HOSTILE,
        "Polly.Joanna",
        "en-US",
    )
    assert parse(twiml.whisper("Hello.")).find("Say").attrib == {}  # type: ignore[union-attr]
    assert verbs(parse(twiml.whisper(""))) == []  # connect at once
