"""Twilio REST actions on a live call: hang up, and transfer by replacing the call's TwiML.

httpx.AsyncClient, not the twilio SDK's Client: that one is synchronous (requests) and would
block the event loop, and every call on this process, for a whole round trip. The API base URL
is a setting so tests and the offline demo can point it at `telephony.sim.twilio_rest`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
from collections.abc import Awaitable, Callable

import httpx

from telephony.http_pool import tls_context
from telephony.retry import SERVER_ERRORS, RetryPolicy, retry_after_s
from telephony.twilio import twiml

log = logging.getLogger(__name__)

MAX_TWIML_CHARS = 4000  # a longer `Twiml` parameter fails with Twilio error 32018
# Hang-up answers meaning "the call is not live any more", which is what hanging up wants:
# 20404 = no such (live) call; 21220 = call not in-progress (Twilio's page says completed
# calls "cannot be recorded or redirected"; that it also answers Status=completed so is
# unverified, but either way the caller is gone).
ALREADY_ENDED = frozenset({20404, 21220})
_SID = re.compile(r"[A-Za-z0-9]{1,64}")  # keeps path segments free of '/', '..', '?'
# Failures where the request surely never reached Twilio, so even a non-idempotent POST
# (a transfer, which would re-dial the target) is safe to repeat.
_UNSENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
# Answers Twilio documents as "not processed": 429 ("never processed and always safe to
# retry", error 20429) and 503 ("temporarily unavailable, try again", 20503). A 500 or 502
# may come after the update took effect, so a TwiML update (a redirect re-dials) stops there.
UNPROCESSED = frozenset({429, 503})


class TwilioCallsError(Exception):
    """A REST action failed; `status`/`code` are the HTTP status and Twilio's error code."""

    def __init__(self, message: str, *, status: int | None = None, code: int | None = None):
        super().__init__(message)
        self.status = status
        self.code = code


async def send_with_retries(
    send: Callable[[], Awaitable[httpx.Response]],
    policy: RetryPolicy,
    *,
    retry_errors: type[Exception] | tuple[type[Exception], ...] = httpx.TransportError,
) -> httpx.Response:
    """`send()` again while the reply's status is one of `policy.statuses` (waiting as long as
    its `Retry-After` asks, within `policy.max_wait_s`) or it raised one of `retry_errors`,
    for at most `policy.attempts` tries.

    Returns the last reply whatever its status; re-raises a transport error once out of tries
    or when it is not one of `retry_errors`.
    """
    attempt = 0
    while True:
        attempt += 1
        try:
            response = await send()
        except retry_errors:
            wait = policy.wait_before(attempt)
            if wait is None:
                raise
        else:
            if not policy.retryable(response.status_code):
                return response
            wait = policy.wait_before(attempt, retry_after_s(response.headers))
            if wait is None:  # out of tries, or Twilio asked for a longer wait than we give
                return response
        await asyncio.sleep(wait)


def _twilio_error(response: httpx.Response) -> tuple[int | None, str]:
    """(code, message) from Twilio's JSON error body, tolerating anything else."""
    try:
        body = response.json()
    except ValueError:
        return None, response.text[:200] or response.reason_phrase
    if not isinstance(body, dict):
        return None, response.reason_phrase
    code = body.get("code")
    return (code if isinstance(code, int) else None), str(body.get("message") or "")[:300]


class TwilioCalls:
    """Hang-up and transfer for live calls, via `POST .../Calls/{CallSid}.json`."""

    def __init__(
        self,
        *,
        account_sid: str,
        auth_token: str,
        api_url: str = "https://api.twilio.com",
        http: httpx.AsyncClient | None = None,
        timeout_s: float = 10.0,
        retries: int = 2,
    ) -> None:
        if not _SID.fullmatch(account_sid):
            raise ValueError(f"bad Twilio account SID: {account_sid!r}")
        self._calls_url = f"{api_url.rstrip('/')}/2010-04-01/Accounts/{account_sid}/Calls"
        self._auth = httpx.BasicAuth(account_sid, auth_token)
        self._secret = auth_token  # kept only to scrub it from error messages
        self._owns_http = http is None
        self._http = http or httpx.AsyncClient(verify=tls_context())
        self._timeout = httpx.Timeout(timeout_s)
        # A hang-up is idempotent (a repeat answers 20404, which counts as done): any 429/5xx
        # is worth another try. A TwiML update is not: only what Twilio did not process.
        self._idempotent = RetryPolicy(attempts=retries + 1, statuses=SERVER_ERRORS)
        self._unprocessed = RetryPolicy(attempts=retries + 1, statuses=UNPROCESSED)

    async def hang_up(self, call_sid: str) -> None:
        """End the call (`Status=completed`); a call that already ended counts as success."""
        response = await self._post(call_sid, {"Status": "completed"}, "hang-up", idempotent=True)
        if response.is_success:
            log.info("call hung up via REST", extra={"call_sid": call_sid})
            return
        code, _ = _twilio_error(response)
        if code in ALREADY_ENDED:
            log.info("hang-up: call already ended (Twilio %s)", code, extra={"call_sid": call_sid})
            return
        raise self._failure("hang-up", call_sid, response)

    async def transfer(
        self,
        call_sid: str,
        number: str,
        *,
        caller_id: str | None = None,
        whisper_url: str | None = None,
    ) -> None:
        """Replace the call's TwiML with `<Dial>number</Dial>` (with a whisper URL: `<Dial>
        <Number url>`, twiml.dial); Twilio then ends our stream."""
        try:
            dial = twiml.dial(number, caller_id=caller_id, whisper_url=whisper_url)
        except twiml.TwimlError as exc:
            raise TwilioCallsError(f"Twilio transfer of {call_sid} refused: {exc}") from exc
        await self.update_twiml(call_sid, dial, "transfer")
        log.info("call transferred via REST", extra={"call_sid": call_sid, "to": number})

    async def update_twiml(
        self, call_sid: str, document: str, action: str = "TwiML update"
    ) -> None:
        """Run new TwiML on the live call; `document` comes from telephony.twilio.twiml."""
        if len(document) > MAX_TWIML_CHARS:
            raise TwilioCallsError(
                f"Twilio {action} of {call_sid} refused: TwiML is {len(document)} chars, "
                f"over Twilio's {MAX_TWIML_CHARS} (error 32018)",
                code=32018,
            )
        # Not idempotent: a repeat after a reply we never saw would re-dial the target.
        response = await self._post(call_sid, {"Twiml": document}, action, idempotent=False)
        if not response.is_success:
            raise self._failure(action, call_sid, response)

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> TwilioCalls:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def _post(
        self, call_sid: str, form: dict[str, str], action: str, *, idempotent: bool
    ) -> httpx.Response:
        if not _SID.fullmatch(call_sid):
            raise TwilioCallsError(f"Twilio {action} refused: bad call SID {call_sid!r}")
        send = functools.partial(
            self._http.post,
            f"{self._calls_url}/{call_sid}.json",
            data=form,
            auth=self._auth,
            timeout=self._timeout,
        )
        try:
            if idempotent:
                return await send_with_retries(send, self._idempotent)
            return await send_with_retries(send, self._unprocessed, retry_errors=_UNSENT)
        except httpx.TransportError as exc:
            detail = f"{type(exc).__name__}: {exc}"
            raise TwilioCallsError(
                self._scrub(f"Twilio {action} of {call_sid} failed: {detail}")
            ) from exc

    def _failure(self, action: str, call_sid: str, response: httpx.Response) -> TwilioCallsError:
        code, message = _twilio_error(response)
        text = f"Twilio {action} of {call_sid} failed: HTTP {response.status_code}"
        text += f", code {code}: {message}" if code is not None else f": {message}"
        return TwilioCallsError(self._scrub(text), status=response.status_code, code=code)

    def _scrub(self, text: str) -> str:
        """Belt and braces: the auth token must never reach a log line or an exception."""
        return text.replace(self._secret, "[redacted]") if self._secret else text
