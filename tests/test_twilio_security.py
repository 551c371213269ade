"""Signatures and one-time stream tokens."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from telephony.twilio.security import StreamTokens, TokenError, sign, valid_signature

URL = "https://bridge.example.com/twilio/voice"
PARAMS = {"CallSid": "CA1", "To": "+15550001111", "From": "+15550002222"}


def test_signature_round_trip_and_tamper() -> None:
    sig = sign("secret", URL, PARAMS)
    assert valid_signature("secret", URL, PARAMS, sig)
    assert not valid_signature("other", URL, PARAMS, sig)
    assert not valid_signature("secret", URL, {**PARAMS, "To": "+15559999999"}, sig)
    assert not valid_signature("secret", URL.replace("bridge", "evil"), PARAMS, sig)
    assert not valid_signature("secret", URL, PARAMS, "")


def test_signature_is_twilios_algorithm() -> None:
    """base64(HMAC-SHA1(auth_token, URL + each param's name+value sorted by name)), computed
    independently of the SDK so a change in how we call it cannot go unnoticed."""
    url = "https://mycompany.com/myapp.php?foo=1&bar=2"
    params = {
        "CallSid": "CA1234567890ABCDE",
        "Caller": "+12349013030",
        "Digits": "1234",
        "From": "+12349013030",
        "To": "+18005551212",
    }
    data = url + "".join(k + params[k] for k in sorted(params))
    digest = hmac.new(b"12345", data.encode(), hashlib.sha1).digest()
    assert sign("12345", url, params) == base64.b64encode(digest).decode()


def test_upgrade_signature_uses_empty_params() -> None:
    wss = "wss://bridge.example.com/twilio/media"
    assert valid_signature("secret", wss, {}, sign("secret", wss, {}))


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_token_is_one_time_bound_and_expires() -> None:
    clock = Clock()
    tokens = StreamTokens(b"k", ttl_s=30, clock=clock)
    token = tokens.mint("CA1", "support")
    with pytest.raises(TokenError, match="does not match"):
        tokens.redeem(token, "CA2", "support")
    with pytest.raises(TokenError, match="does not match"):
        tokens.redeem(token, "CA1", "sales")
    tokens.redeem(token, "CA1", "support")
    with pytest.raises(TokenError, match="already used"):
        tokens.redeem(token, "CA1", "support")
    late = tokens.mint("CA3", "support")
    clock.now += 31
    with pytest.raises(TokenError, match="expired"):
        tokens.redeem(late, "CA3", "support")


@pytest.mark.parametrize("bad", ["", "v1", "v2.1.a.b", "v1.x.a.b", "v1.1.a.b.c"])
def test_malformed_tokens(bad: str) -> None:
    with pytest.raises(TokenError, match="malformed"):
        StreamTokens(b"k").redeem(bad, "CA1", "p")


def test_forged_token_with_other_secret() -> None:
    token = StreamTokens(b"attacker").mint("CA1", "p")
    with pytest.raises(TokenError, match="does not match"):
        StreamTokens(b"k").redeem(token, "CA1", "p")
