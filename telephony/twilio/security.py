"""Twilio request signatures (both hops) and one-time per-call stream tokens.

The webhook and the media WebSocket upgrade both carry X-Twilio-Signature. Behind a proxy the
URL we see is not the URL Twilio signed, so signatures are checked against the configured
public URL. The stream token travels in a TwiML <Parameter> (a query string on the Stream URL
would be dropped by Twilio) and comes back in `start.customParameters`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from twilio.request_validator import RequestValidator


class TokenError(ValueError):
    """A stream token that is malformed, forged, expired, replayed or for another call.

    `authentic`: its HMAC checked out (expired or replayed), so we minted it for this call."""

    def __init__(self, message: str, *, authentic: bool = False) -> None:
        super().__init__(message)
        self.authentic = authentic


def valid_signature(auth_token: str, url: str, params: Mapping[str, str], signature: str) -> bool:
    """X-Twilio-Signature check for a form-encoded POST (params) or a WS upgrade (no params)."""
    if not signature:
        return False
    return RequestValidator(auth_token).validate(url, dict(params), signature)


def sign(auth_token: str, url: str, params: Mapping[str, str]) -> str:
    """The signature Twilio would send; used by the fake caller and `telephony call`."""
    return RequestValidator(auth_token).compute_signature(url, dict(params))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@dataclass
class StreamTokens:
    """Mints and redeems one-time HMAC tokens bound to a call SID with a short TTL.

    Redeemed tokens are remembered until they expire, so a replay within the TTL is refused.
    The memory is per instance: the media socket of a call lands on one instance, and a
    replay to another instance still fails once the TTL (seconds) has passed.
    """

    secret: bytes
    ttl_s: float = 30.0
    clock: Callable[[], float] = time.time
    _used: dict[str, float] = field(default_factory=dict)

    def _mac(self, call_sid: str, profile: str, expires: int, nonce: str) -> str:
        msg = f"v1|{call_sid}|{profile}|{expires}|{nonce}".encode()
        return _b64(hmac.new(self.secret, msg, hashlib.sha256).digest())

    def mint(self, call_sid: str, profile: str) -> str:
        """A token for this call and the profile the webhook chose (so neither can be swapped)."""
        expires = int(self.clock() + self.ttl_s)
        nonce = _b64(secrets.token_bytes(12))
        return f"v1.{expires}.{nonce}.{self._mac(call_sid, profile, expires, nonce)}"

    def redeem(self, token: str, call_sid: str, profile: str) -> None:
        """Accept the token once for this call and profile, or raise TokenError saying why."""
        parts = token.split(".")
        if len(parts) != 4 or parts[0] != "v1" or not parts[1].isdigit():
            raise TokenError("malformed stream token")
        expires, nonce, mac = int(parts[1]), parts[2], parts[3]
        if not hmac.compare_digest(mac, self._mac(call_sid, profile, expires, nonce)):
            raise TokenError("stream token does not match this call")
        now = self.clock()
        if now > expires:
            raise TokenError("stream token expired", authentic=True)
        self._forget_expired(now)
        if nonce in self._used:
            raise TokenError("stream token already used", authentic=True)
        self._used[nonce] = expires

    def _forget_expired(self, now: float) -> None:
        for nonce in [n for n, exp in self._used.items() if exp < now]:
            del self._used[nonce]


# --- the whisper URL ------------------------------------------------------------------------
# Twilio fetches a transfer's whisper (`<Dial><Number url>`) when the person answers, maybe a
# minute after the transfer, on whichever instance the load balancer picks. The URL carries
# the call SID, an expiry and an HMAC over both, so it opens that call's whisper only, for a
# while only; X-Twilio-Signature over the whole URL proves Twilio asks.
WHISPER_TTL_S = 600


def _whisper_mac(secret: bytes, call_sid: str, expires: int) -> str:
    msg = f"whisper|v1|{call_sid}|{expires}".encode()
    return _b64(hmac.new(secret, msg, hashlib.sha256).digest())


def whisper_query(
    secret: bytes, call_sid: str, *, ttl_s: float = WHISPER_TTL_S, now: float | None = None
) -> dict[str, str]:
    """The whisper URL's query for this call: `call`, `exp` and the MAC `sig`."""
    expires = int((time.time() if now is None else now) + ttl_s)
    return {"call": call_sid, "exp": str(expires), "sig": _whisper_mac(secret, call_sid, expires)}


def check_whisper_query(
    secret: bytes, query: Mapping[str, str], *, now: float | None = None
) -> str:
    """The call SID a whisper URL's query opens, or TokenError (forged, for another call,
    expired)."""
    call_sid, exp, sig = query.get("call", ""), query.get("exp", ""), query.get("sig", "")
    if not call_sid or not exp.isdigit() or not sig:
        raise TokenError("malformed whisper token")
    if not hmac.compare_digest(sig, _whisper_mac(secret, call_sid, int(exp))):
        raise TokenError("whisper token does not match the call")
    if (time.time() if now is None else now) > int(exp):
        raise TokenError("whisper token expired", authentic=True)
    return call_sid
