"""Environment settings. Secrets live only here (from the environment), never in the YAML."""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_CONFIG = Path("infra/numbers.example.yaml")
# The Twilio auth token used when TWILIO_AUTH_TOKEN is unset. It is public, so the service
# refuses to start with it unless DEV_FLAG is set (telephony/startup.py).
PUBLIC_DEV_AUTH_TOKEN = "dev-auth-token"
DEV_FLAG = "TELEPHONY_ALLOW_INSECURE_DEV"
# The `telephony` command reads this file (relative to the working directory) into its
# environment at start, when present. TELEPHONY_ENV_FILE names another; set empty, none.
ENV_FILE_VAR = "TELEPHONY_ENV_FILE"
DEFAULT_ENV_FILE = ".env"
# The file `load_env_file` read in this process, for the start-up log (telephony/startup.py).
_env_file_read: Path | None = None


def env_file_path(environ: MutableMapping[str, str] = os.environ) -> Path | None:
    """The .env file the `telephony` command should read, or None (TELEPHONY_ENV_FILE="")."""
    name = environ.get(ENV_FILE_VAR, DEFAULT_ENV_FILE)
    return Path(name) if name else None


def load_env_file(path: Path | None, environ: MutableMapping[str, str] = os.environ) -> list[str]:
    """Copy the variables of a .env file into `environ` (the process environment, so profile
    keys such as OPENAI_API_KEY reach the responders too); returns their names. The real
    environment wins: a variable already set is left alone. An empty value is skipped, as
    Settings ignores empty variables. A missing file reads nothing. The file is read the way
    `set -a; . ./.env` reads it in a POSIX shell (quotes, `export`, comments)."""
    global _env_file_read
    if path is None or not path.is_file():
        return []
    from dotenv import dotenv_values  # pydantic-settings' own .env reader

    loaded = []
    for name, value in dotenv_values(path).items():
        if value and name not in environ:
            environ[name] = value
            loaded.append(name)
    _env_file_read = path.resolve()
    return loaded


def env_file_read() -> Path | None:
    """The .env file this process read at start, if any."""
    return _env_file_read


def no_userinfo(url: str) -> str:
    """Refuse `scheme://user:key@host`: a credential in a URL ends up in logs and pages. The
    error names no part of the URL (it may hold the secret)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        raise ValueError("not a valid URL") from None
    if "@" in parts.netloc:
        raise ValueError("credentials in the URL (user:password@) are not allowed")
    return url


class Settings(BaseSettings):
    """Every variable is listed, with a comment, in .env.example."""

    # hide_input_in_errors: a bad value (a secret pasted into the wrong variable) is never
    # echoed in the error. env_ignore_empty: `VAR=` (as .env.example has them, and as
    # `set -a; . ./.env` exports them) means unset, not an empty secret or a bad boolean.
    # env_file=None: Settings never reads a .env itself (a stray one must not reach tests);
    # the CLI loads one into the environment explicitly (`load_env_file`).
    model_config = SettingsConfigDict(
        env_file=None,
        env_ignore_empty=True,
        extra="ignore",
        populate_by_name=True,
        hide_input_in_errors=True,
    )

    config_path: Path = Field(DEFAULT_CONFIG, alias="TELEPHONY_CONFIG")
    database_url: str = Field(
        "sqlite+aiosqlite:///data/telephony.db", alias="TELEPHONY_DATABASE_URL"
    )
    # Per-call stereo WAVs of profiles with `recording: true` (<CallSid>.wav), and their spools.
    recordings_dir: Path = Field(Path("data/recordings"), alias="TELEPHONY_RECORDINGS_DIR")
    # Fixed phrases synthesised ahead of time (greetings, fillers, reprompts); "" keeps them in
    # memory only, synthesised again at every start.
    phrase_cache_dir: str = Field("data/phrases", alias="TELEPHONY_PHRASE_CACHE_DIR")
    public_url: str = Field("http://127.0.0.1:8000", alias="TELEPHONY_PUBLIC_URL")
    # Turning signature checks off is for local development only; start-up logs a warning.
    validate_signatures: bool = Field(True, alias="TELEPHONY_VALIDATE_SIGNATURES")
    stream_token_ttl_s: float = Field(30.0, alias="TELEPHONY_STREAM_TOKEN_TTL_S")
    # Secret used to sign one-time stream tokens; defaults to the Twilio auth token.
    stream_token_secret: SecretStr | None = Field(None, alias="TELEPHONY_STREAM_TOKEN_SECRET")
    # Signs staff UI session cookies. Unset: a random key per process (everyone is logged out
    # on restart, and several instances behind one load balancer would not share sessions).
    session_secret: SecretStr | None = Field(None, alias="TELEPHONY_SESSION_SECRET")
    session_ttl_s: float = Field(8 * 3600.0, alias="TELEPHONY_SESSION_TTL_S")
    # Calls one instance carries at once; callers beyond it hear busy_message from the webhook.
    max_calls: int = Field(200, alias="TELEPHONY_MAX_CALLS", ge=1)
    busy_message: str = Field(
        "Sorry, all our lines are busy right now. Please call again in a few minutes.",
        alias="TELEPHONY_BUSY_MESSAGE",
    )
    # While draining (SIGTERM) or full: send new calls here with TwiML <Redirect> instead of
    # the busy message, e.g. the load balancer's webhook URL so another instance answers.
    overflow_redirect_url: str = Field("", alias="TELEPHONY_OVERFLOW_REDIRECT_URL")
    # On SIGTERM/SIGINT live calls run on for up to this long (new ones are turned away), then
    # get a goodbye and are ended; the process exits once they are over. Keep the platform's
    # kill timeout (Kubernetes terminationGracePeriodSeconds, compose stop_grace_period) above.
    drain_timeout_s: float = Field(300.0, alias="TELEPHONY_DRAIN_TIMEOUT_S", ge=0)
    max_bad_frames: int = Field(20, alias="TELEPHONY_MAX_BAD_FRAMES")
    # Each media track may bring at most 8 bytes (1 ms of μ-law) per ms since its stream started,
    # plus this much lead (Twilio catches up after a network stall); counted in bytes on every
    # frame, gap-fill silence included, whatever the timestamps. Beyond it the stream is closed
    # (a real one never gets there). telephony/session/policing.py AudioBudget.
    max_audio_ahead_ms: int = Field(2000, alias="TELEPHONY_MAX_AUDIO_AHEAD_MS", ge=100)
    # Non-media messages (marks, DTMF, ...) per second, averaged over 5 s, before closing.
    max_control_per_s: float = Field(50.0, alias="TELEPHONY_MAX_CONTROL_PER_S", gt=0)
    # -- Webhook hardening (issue 21): Twilio's webhook and status-callback bodies are a few
    # KB; a larger one is refused (413) unread, so it can never be parsed on the event loop.
    max_webhook_bytes: int = Field(
        64 * 1024, alias="TELEPHONY_MAX_WEBHOOK_BYTES", ge=4096, le=1024 * 1024
    )
    # How long the database may take to record a webhook's answer (one per call SID, shared by
    # every instance: a repeat gets the same answer) or a stream's claim on its call (one
    # instance per stream; decided while the call already runs) before going on without it.
    stream_claim_timeout_s: float = Field(2.0, alias="TELEPHONY_STREAM_CLAIM_TIMEOUT_S", gt=0)
    # Deepgram closes Voice Agent sessions at 2 h; the profile's session_cap_action runs 60 s
    # before this. Lowered only in tests.
    agent_session_cap_s: float = Field(7200.0, alias="TELEPHONY_AGENT_SESSION_CAP_S")
    # A name for this instance, stable across its restarts and unique among running ones (a
    # StatefulSet pod or compose service name): calls its previous incarnation left open are
    # closed at start-up instead of once its heartbeat is stale (telephony/store/instances.py).
    instance_id: str = Field("", alias="TELEPHONY_INSTANCE_ID", max_length=64)
    # How the other instances reach this one (listen-in on a call this one carries): e.g.
    # http://10.0.3.7:8000. `telephony serve` defaults it to this host's address and its port.
    internal_url: str = Field("", alias="TELEPHONY_INTERNAL_URL", max_length=256)
    # Live events for the staff UI's live views (README "The live floor"); off: calls publish
    # nothing (the live pages then show only what the database has).
    live_events: bool = Field(True, alias="TELEPHONY_LIVE_EVENTS")
    # --- staff login and the HTTP server (issue 21: login flood, proxies, slow clients) ---
    # Login attempts (counted before the password is checked) per client and account name, and
    # per client over all names, within TELEPHONY_LOGIN_WINDOW_S; and per minute for the whole
    # instance (load shedding: past it every login waits, but a flood cannot starve the calls).
    login_attempts_per_account: int = Field(5, alias="TELEPHONY_LOGIN_ATTEMPTS_PER_ACCOUNT", ge=1)
    login_attempts_per_client: int = Field(30, alias="TELEPHONY_LOGIN_ATTEMPTS_PER_CLIENT", ge=1)
    login_attempts_per_minute: int = Field(120, alias="TELEPHONY_LOGIN_ATTEMPTS_PER_MINUTE", ge=1)
    login_window_s: float = Field(300.0, alias="TELEPHONY_LOGIN_WINDOW_S", gt=0)
    # Threads checking passwords (scrypt: ~50 ms CPU and 16 MiB each), and attempts that may
    # wait for one; beyond that a login is answered 503 at once.
    login_hash_workers: int = Field(2, alias="TELEPHONY_LOGIN_HASH_WORKERS", ge=1)
    login_hash_queue: int = Field(8, alias="TELEPHONY_LOGIN_HASH_QUEUE", ge=0)
    # Reverse proxies whose X-Forwarded-For / X-Forwarded-Proto are believed: comma-separated
    # IPs or CIDR networks (e.g. "10.0.0.0/8"), or "*". Empty: none, the peer address is the
    # client (login limits key on it). Never list an address clients can connect from.
    trusted_proxies: str = Field("", alias="TELEPHONY_TRUSTED_PROXIES")
    # `telephony serve`: a connection must deliver a request's headers within
    # http_header_timeout_s of opening (or of its previous response), and its body within
    # http_body_timeout_s after them; idle keep-alive connections close after
    # http_keepalive_s. Past http_max_connections open connections (media sockets included),
    # new requests are answered 503.
    http_header_timeout_s: float = Field(10.0, alias="TELEPHONY_HTTP_HEADER_TIMEOUT_S", gt=0)
    http_body_timeout_s: float = Field(20.0, alias="TELEPHONY_HTTP_BODY_TIMEOUT_S", gt=0)
    http_keepalive_s: int = Field(5, alias="TELEPHONY_HTTP_KEEPALIVE_S", ge=1)
    http_max_connections: int = Field(1000, alias="TELEPHONY_HTTP_MAX_CONNECTIONS", ge=1)
    # Requests (WebSocket upgrades included) one client address may start per second; past it
    # `telephony serve` answers 429 before routing. Trusted proxies are exempt (limit there:
    # infra/nginx.conf). 0: no limit.
    http_client_rate: int = Field(200, alias="TELEPHONY_HTTP_CLIENT_RATE", ge=0)

    # --- storage faults (issue 21) ---
    # How often the transcript store checks, off the audio path, that its SQLite file is still
    # the one it opened (not deleted or replaced): a changed file makes /readyz not ready.
    store_check_s: float = Field(2.0, alias="TELEPHONY_STORE_CHECK_S", gt=0)

    # --- post-call insights (telephony/insights/; profiles' `insights:` switch them on) ---
    insights_queue: int = Field(1000, alias="TELEPHONY_INSIGHTS_QUEUE", ge=1)
    insights_workers: int = Field(2, alias="TELEPHONY_INSIGHTS_WORKERS", ge=1)
    insights_sweep_s: float = Field(60.0, alias="TELEPHONY_INSIGHTS_SWEEP_S", gt=0)
    insights_timeout_s: float = Field(30.0, alias="TELEPHONY_INSIGHTS_TIMEOUT_S", gt=0)

    log_format: str = Field("text", alias="TELEPHONY_LOG_FORMAT")
    log_level: str = Field("INFO", alias="TELEPHONY_LOG_LEVEL")

    # --- start-up hardening (telephony/startup.py) ---
    # Development only: start without a real TWILIO_AUTH_TOKEN (the public default then signs
    # webhooks and stream tokens). The offline demo and the tests set it; production never.
    allow_insecure_dev: bool = Field(False, alias=DEV_FLAG)

    twilio_account_sid: str = Field(
        "AC00000000000000000000000000000000", alias="TWILIO_ACCOUNT_SID"
    )
    twilio_auth_token: SecretStr = Field(
        SecretStr(PUBLIC_DEV_AUTH_TOKEN), alias="TWILIO_AUTH_TOKEN"
    )
    twilio_api_url: str = Field("https://api.twilio.com", alias="TWILIO_API_URL")

    deepgram_api_key: SecretStr = Field(SecretStr(""), alias="DEEPGRAM_API_KEY")
    deepgram_url: str = Field("wss://api.deepgram.com", alias="DEEPGRAM_URL")
    deepgram_agent_url: str = Field("wss://agent.deepgram.com", alias="DEEPGRAM_AGENT_URL")
    # Deepgram's REST endpoints (Text Intelligence /v1/read); empty: DEEPGRAM_URL as https://.
    deepgram_rest_url: str = Field("", alias="DEEPGRAM_REST_URL")

    @field_validator(
        "public_url",
        "overflow_redirect_url",
        "twilio_api_url",
        "deepgram_url",
        "deepgram_agent_url",
        "deepgram_rest_url",
    )
    @classmethod
    def _no_credentials_in_urls(cls, value: str) -> str:
        return no_userinfo(value)

    @property
    def media_stream_url(self) -> str:
        """The wss:// URL Twilio connects to; Twilio signs exactly this URL on the upgrade."""
        base = self.public_url.rstrip("/")
        if base.startswith("https://"):
            base = "wss://" + base.removeprefix("https://")
        elif base.startswith("http://"):
            base = "ws://" + base.removeprefix("http://")
        return base + "/twilio/media"

    @property
    def deepgram_rest_base(self) -> str:
        """Where Deepgram's REST API is: DEEPGRAM_REST_URL, else DEEPGRAM_URL's host over HTTP
        (wss:// -> https://), so one setting points both at a region or a proxy."""
        if self.deepgram_rest_url:
            return self.deepgram_rest_url.rstrip("/")
        base = self.deepgram_url.rstrip("/")
        if base.startswith("wss://"):
            return "https://" + base.removeprefix("wss://")
        if base.startswith("ws://"):
            return "http://" + base.removeprefix("ws://")
        return base

    @property
    def status_callback_url(self) -> str:
        """Where Twilio posts call and stream status callbacks (routes/twilio.py)."""
        return self.public_url.rstrip("/") + "/twilio/status"

    @property
    def whisper_url(self) -> str:
        """Where Twilio fetches a warm transfer's whisper (routes/whisper.py)."""
        return self.public_url.rstrip("/") + "/twilio/whisper"

    def token_secret(self) -> bytes:
        secret = self.stream_token_secret or self.twilio_auth_token
        return secret.get_secret_value().encode()
