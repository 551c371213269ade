"""The voice-webhook hop as Twilio makes it, for every fake caller: the signed form POST and
the reading of the TwiML answer (docs/protocol.md §1.1, §1.5)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass, field

import httpx

from telephony.http_pool import tls_context
from telephony.twilio.security import sign as twilio_sign

DEFAULT_ACCOUNT_SID = "AC" + "0" * 32
WEBHOOK_PATH = "/twilio/voice"
# <Stream track=...> (with <Start>) -> the tracks Twilio sends; <Connect> is inbound only.
STREAM_TRACKS = {
    None: ("inbound",),
    "inbound_track": ("inbound",),
    "outbound_track": ("outbound",),
    "both_tracks": ("inbound", "outbound"),
}
CONNECT_TRACKS = (None, "inbound_track")


def webhook_params(
    call_sid: str,
    to: str,
    *,
    from_number: str,
    account_sid: str = DEFAULT_ACCOUNT_SID,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The form of an incoming call's voice webhook."""
    return {
        "CallSid": call_sid,
        "AccountSid": account_sid,
        "From": from_number,
        "To": to,
        "CallStatus": "ringing",
        "Direction": "inbound",
        "ApiVersion": "2010-04-01",
        **(extra or {}),
    }


def signature_header(
    auth_token: str, url: str, params: Mapping[str, str], sign: bool | str = True
) -> dict[str, str]:
    """X-Twilio-Signature over `url` (what Twilio believes it calls) and `params`: True = the
    correct one, False = none, a str = send that (tests of forged signatures)."""
    if sign is True:
        return {"X-Twilio-Signature": twilio_sign(auth_token, url, params)}
    return {"X-Twilio-Signature": sign} if sign else {}


async def post_webhook(
    http: httpx.AsyncClient | None,
    url: str,
    params: Mapping[str, str],
    headers: Mapping[str, str],
) -> httpx.Response:
    """POST the form, on `http` or (None) a client of its own."""
    if http is not None:
        return await http.post(url, data=params, headers=headers)
    async with httpx.AsyncClient(timeout=10, verify=tls_context()) as client:
        return await client.post(url, data=params, headers=headers)


@dataclass
class TwimlAnswer:
    """What Twilio makes of a TwiML document."""

    verbs: list[str] = field(default_factory=list)  # top-level verbs, in order
    said: list[str] = field(default_factory=list)
    hung_up: bool = False  # <Hangup/> or <Reject/>
    dialled: list[str] = field(default_factory=list)  # <Dial> targets: numbers, "queue:NAME"
    # <Dial><Number url> (number, url, method): TwiML Twilio fetches when that person answers
    # and runs to them alone before bridging (a warm transfer's whisper)
    number_urls: list[tuple[str, str, str]] = field(default_factory=list)
    stream_url: str | None = None
    parameters: dict[str, str] = field(default_factory=dict)
    fork: bool = False  # a one-way <Start><Stream> (the service must send nothing on it)
    track: str | None = None  # its <Stream track=...>
    error: str | None = None  # what Twilio would refuse
    # The verbs after a <Connect>: Twilio runs them when the stream ends without a REST update
    # having replaced the document (our server closed the socket, or lost it).
    after_stream: TwimlAnswer | None = None

    @property
    def opens_stream(self) -> bool:
        return self.error is None and self.stream_url is not None


def read_twiml(body: bytes | str) -> TwimlAnswer:
    """Parse TwiML as Twilio runs it: the verbs, and the `<Connect><Stream>` (bidirectional) or
    `<Start><Stream>` (a fork) to open, with its `<Parameter>`s."""
    answer = TwimlAnswer()
    try:
        root = ET.fromstring(body)
    except ET.ParseError as exc:
        answer.error = f"bad TwiML: {exc}"
        return answer
    answer.verbs = [child.tag for child in root]
    children = list(root)
    if "Connect" in answer.verbs:  # <Connect> blocks until its stream ends
        cut = answer.verbs.index("Connect") + 1
        rest = ET.Element("Response")
        rest.extend(children[cut:])
        answer.after_stream = read_twiml(ET.tostring(rest))
        for child in children[cut:]:
            root.remove(child)
    answer.said = [(say.text or "") for say in root.iter("Say")]
    answer.hung_up = any(child.tag in ("Hangup", "Reject") for child in root)
    for dial in root.iter("Dial"):
        queue, numbers = dial.find("Queue"), dial.findall("Number")
        if queue is not None:
            answer.dialled.append(f"queue:{queue.text}")
        for number in numbers:
            answer.dialled.append((number.text or "").strip())
            if number.get("url"):
                method = number.get("method", "POST").upper()  # POST is Twilio's default
                answer.number_urls.append((answer.dialled[-1], number.get("url", ""), method))
        if queue is None and not numbers:
            answer.dialled.append(dial.text or "")
    stream = root.find("./Connect/Stream")
    if stream is None:
        stream = root.find("./Start/Stream")
        answer.fork = stream is not None
    if stream is None:
        return answer
    answer.track = stream.get("track")
    if answer.track not in (STREAM_TRACKS if answer.fork else CONNECT_TRACKS):
        answer.error = f"31941: invalid <Stream track={answer.track!r}>"
        return answer
    answer.stream_url = stream.get("url")
    answer.parameters = {p.get("name", ""): p.get("value", "") for p in stream.findall("Parameter")}
    return answer


async def dial_stream(
    http: httpx.AsyncClient,
    base_url: str,
    auth_token: str,
    call_sid: str,
    to: str,
    from_number: str,
) -> tuple[str, dict[str, str]]:
    """A correctly signed incoming-call webhook; the bot stream's URL and `<Parameter>`s of the
    `<Connect><Stream>` it answered (ConnectionError for anything else: busy, refused, fork)."""
    params = webhook_params(call_sid, to, from_number=from_number)
    url = base_url.rstrip("/") + WEBHOOK_PATH
    response = await post_webhook(http, url, params, signature_header(auth_token, url, params))
    response.raise_for_status()
    answer = read_twiml(response.content)
    if not answer.opens_stream or answer.fork or answer.stream_url is None:
        why = answer.error or response.text[:200]
        raise ConnectionError(f"no <Connect><Stream> in TwiML: {why}")
    return answer.stream_url, answer.parameters
