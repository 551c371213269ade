"""Start-up checks of the settings: refuse a public Twilio auth token, say what was defaulted.

An unset `TWILIO_AUTH_TOKEN` used to become the public default `dev-auth-token`, which also
keys the stream tokens: anyone could sign webhooks and media upgrades. The service now refuses
to start without a real token unless `TELEPHONY_ALLOW_INSECURE_DEV=1` says this is a
development run (the offline demo, the tests). Both `telephony serve` and `create_app` check,
so an app embedded under another ASGI server cannot skip it.
"""

from __future__ import annotations

import logging

from telephony.settings import DEV_FLAG, PUBLIC_DEV_AUTH_TOKEN, Settings

log = logging.getLogger(__name__)

# Values that are public (in this repository or its manifests), hence no secret at all.
_PLACEHOLDER_PREFIX = "change-me"


class InsecureSettings(Exception):
    """The settings would let strangers sign Twilio requests; the message says what to set."""


def is_public_token(value: str) -> bool:
    """True for an unset token, the old default and the manifests' placeholders."""
    value = value.strip()
    return not value or value == PUBLIC_DEV_AUTH_TOKEN or value.startswith(_PLACEHOLDER_PREFIX)


def refusal(settings: Settings) -> str | None:
    """Why the service must not start with these settings, or None."""
    if settings.allow_insecure_dev:
        return None
    if is_public_token(settings.twilio_auth_token.get_secret_value()):
        return (
            "refusing to start: TWILIO_AUTH_TOKEN is unset or a public placeholder, so anyone "
            "could sign webhooks and media streams. Set TWILIO_AUTH_TOKEN to your Twilio auth "
            f"token, or set {DEV_FLAG}=1 for local development only."
        )
    secret = settings.stream_token_secret
    if secret is not None and is_public_token(secret.get_secret_value()):
        return (
            "refusing to start: TELEPHONY_STREAM_TOKEN_SECRET is a public placeholder. Set it "
            "to a random value (the same on every instance), or leave it unset to use "
            f"TWILIO_AUTH_TOKEN; {DEV_FLAG}=1 allows it for local development only."
        )
    # A known session secret lets anyone sign a staff UI cookie for any account name.
    session = settings.session_secret
    if session is not None and is_public_token(session.get_secret_value()):
        return (
            "refusing to start: TELEPHONY_SESSION_SECRET is empty or a public placeholder. Set "
            "it to a random value (the same on every instance), or leave it unset for a random "
            f"key per process; {DEV_FLAG}=1 allows it for local development only."
        )
    return None


def defaulted(settings: Settings) -> list[tuple[int, str]]:
    """(level, line) for each setting that matters and was left at its default: one line per
    setting, naming the variable and what the default means; never a secret's value."""
    given = settings.model_fields_set
    lines: list[tuple[int, str]] = []
    if settings.allow_insecure_dev:
        lines.append((logging.WARNING, f"{DEV_FLAG} is set: development mode, not for production"))
    if is_public_token(settings.twilio_auth_token.get_secret_value()):
        lines.append(
            (
                logging.WARNING,
                "TWILIO_AUTH_TOKEN unset or a placeholder: using the public development token; "
                "anyone can sign webhooks and media streams",
            )
        )
    if "stream_token_secret" not in given:
        lines.append(
            (
                logging.INFO,
                "TELEPHONY_STREAM_TOKEN_SECRET unset: stream tokens are keyed by TWILIO_AUTH_TOKEN",
            )
        )
    if not settings.deepgram_api_key.get_secret_value():
        lines.append(
            (logging.WARNING, "DEEPGRAM_API_KEY unset: every call to Deepgram will be refused")
        )
    if "public_url" not in given:
        lines.append(
            (
                logging.WARNING,
                f"TELEPHONY_PUBLIC_URL unset: defaulting to {settings.public_url}; Twilio cannot "
                "reach it and signatures from the real Twilio will not match",
            )
        )
    if "twilio_account_sid" not in given:
        lines.append(
            (
                logging.WARNING,
                "TWILIO_ACCOUNT_SID unset: REST calls (hang-up, transfer) use a placeholder "
                "account",
            )
        )
    if "database_url" not in given:
        lines.append(
            (logging.INFO, f"TELEPHONY_DATABASE_URL unset: defaulting to {settings.database_url}")
        )
    if "config_path" not in given:
        lines.append(
            (logging.INFO, f"TELEPHONY_CONFIG unset: defaulting to {settings.config_path}")
        )
    return lines


def check_startup(settings: Settings) -> None:
    """Raise InsecureSettings, or log one line per defaulted setting."""
    why = refusal(settings)
    if why is not None:
        raise InsecureSettings(why)
    for level, line in defaulted(settings):
        log.log(level, "%s", line)
