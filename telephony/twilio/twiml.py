"""Every TwiML document the service gives Twilio: webhook answers and REST call updates.

All are built with the `twilio` library's VoiceResponse, never with strings, so every value
(a `<Say>` text, a `<Parameter>` value, a URL) is XML-escaped (docs/protocol.md §1.1, §1.6).
None carries an XML declaration: Twilio does not need one, and on a REST update it would count
towards the 4000-character limit of the `Twiml` parameter.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from twilio.twiml.voice_response import Connect, Dial, Start, Stream, VoiceResponse

_E164 = re.compile(r"\+[1-9][0-9]{1,14}")
# Characters XML 1.0 forbids (ElementTree writes them as they are, and Twilio refuses the
# document): C0 controls but tab, newline and carriage return; surrogates; U+FFFE and U+FFFF.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
# In a <Parameter> value (a caller's From, the To) no control character is meant: all go.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")


class TwimlError(ValueError):
    """A builder was given something Twilio would refuse (or misread) in TwiML."""


def _xml(response: VoiceResponse) -> str:
    return response.to_xml(xml_declaration=False)


def _param(value: str) -> str:
    """A `<Parameter>` name or value as Twilio passes it on: control characters stripped (a
    From with a NUL or an escape made the whole document ill-formed)."""
    return _CONTROL.sub("", value)


def _text(value: str) -> str:
    """Element text (`<Say>`): only what XML cannot carry is stripped; line breaks stay."""
    return _NOT_XML.sub("", value)


def _e164(label: str, number: str) -> str:
    # A number goes in as <Dial>'s text: checked, so nothing but a number is ever dialled.
    if not _E164.fullmatch(number):
        raise TwimlError(f"{label} is not E.164: {number!r}")
    return number


def say_and_hang_up(message: str) -> str:
    """`<Say>` the message, then `<Hangup/>`: refusals, the time limit, the drain's goodbye."""
    response = VoiceResponse()
    response.say(_text(message))
    response.hangup()
    return _xml(response)


def redirect(url: str) -> str:
    """`<Redirect method="POST">url</Redirect>`: Twilio fetches its TwiML from `url` instead."""
    response = VoiceResponse()
    response.redirect(url, method="POST")
    return _xml(response)


def connect_stream(
    url: str,
    params: Mapping[str, str],
    *,
    status_callback: str,
    then_apologise: tuple[str, str | None] | None = None,
) -> str:
    """`<Connect><Stream url>` with our `<Parameter>`s: the bidirectional stream of a bot call.
    Twilio POSTs the stream's status changes to `status_callback`.

    `then_apologise` (message, transfer number or None): what Twilio runs if the stream ends
    without our REST update replacing this document — our server closed or lost the socket
    (a crash, an error close, a failed hand-over): the apology, then `<Dial>` or `<Hangup>`,
    so even then the caller is never left in silence. Every ending we choose (hang-up,
    transfer, failover, time limit, drain) replaces the document first, so these never run.
    """
    response = VoiceResponse()
    connect = Connect()
    stream = Stream(url=url, status_callback=status_callback, status_callback_method="POST")
    for name, value in params.items():
        stream.parameter(name=_param(name), value=_param(value))
    connect.append(stream)
    response.append(connect)
    if then_apologise is not None:
        _apologise(response, *then_apologise)
    return _xml(response)


def fork_and_dial(
    url: str,
    params: Mapping[str, str],
    *,
    number: str | None = None,
    queue: str | None = None,
    status_callback: str | None = None,
    whisper_url: str | None = None,
) -> str:
    """`<Start><Stream track="both_tracks">` (a one-way fork of both sides), then `<Dial>` a
    number or a `<Queue>`: a person takes the call while we transcribe it. Twilio runs `<Dial>`
    at once; the fork lasts until the call ends. `whisper_url`: see `dial`."""
    if (number is None) == (queue is None):
        raise TwimlError("fork_and_dial needs a number or a queue")
    response = VoiceResponse()
    start = Start()
    extra = {"status_callback": status_callback, "status_callback_method": "POST"}
    stream = start.stream(url=url, track="both_tracks", **(extra if status_callback else {}))
    for name, value in params.items():
        stream.parameter(name=_param(name), value=_param(value))
    response.append(start)
    if number is not None:
        response.append(_dial(_e164("dial number", number), whisper_url=whisper_url))
    else:
        dial = Dial()
        dial.queue(queue)
        response.append(dial)
    return _xml(response)


def dial(number: str, *, caller_id: str | None = None, whisper_url: str | None = None) -> str:
    """`<Dial>number</Dial>`: a transfer to a person (the call leaves our stream).

    With `whisper_url`, `<Dial><Number url="…">number</Number></Dial>`: when the person
    answers, Twilio fetches that URL (POST) and runs its TwiML to them alone before bridging
    the two (docs/protocol.md §1.7); the caller hears ringing meanwhile."""
    response = VoiceResponse()
    target = _e164("transfer number", number)
    extra = {} if caller_id is None else {"caller_id": _e164("caller ID", caller_id)}
    response.append(_dial(target, whisper_url=whisper_url, **extra))
    return _xml(response)


def _dial(number: str, *, whisper_url: str | None = None, **attrs: str) -> Dial:
    """`<Dial>` of a checked number; `<Number url>` around it when there is a whisper.
    `answer_on_bridge`: the caller hears ringing (not silence) while the whisper plays."""
    if whisper_url is None:
        return Dial(number, **attrs)
    dial = Dial(answer_on_bridge=True, **attrs)
    dial.number(number, url=whisper_url, method="POST")
    return dial


def whisper(text: str, *, voice: str | None = None, language: str | None = None) -> str:
    """The whisper's answer: `<Say>` the text to the person who answered (the caller does not
    hear it); an empty text (no whisper found) is an empty `<Response/>`: connect at once."""
    response = VoiceResponse()
    if text:
        attrs = {k: v for k, v in (("voice", voice), ("language", language)) if v}
        response.say(_text(text), **attrs)
    return _xml(response)


def apology(message: str, transfer_to: str | None = None) -> str:
    """`<Say>` the apology, then `<Dial>` a person or `<Hangup>`: needs nothing but Twilio, so
    it works whatever failed upstream."""
    response = VoiceResponse()
    _apologise(response, message, transfer_to)
    return _xml(response)


def _apologise(response: VoiceResponse, message: str, transfer_to: str | None) -> None:
    response.say(_text(message))
    if transfer_to is not None:
        response.dial(_e164("transfer number", transfer_to))
    else:
        response.hangup()
