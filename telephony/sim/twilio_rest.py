"""A fake Twilio Calls REST endpoint: `POST /2010-04-01/Accounts/{AccountSid}/Calls/{CallSid}.json`.

Answers like Twilio: HTTP Basic auth (401 with code 20003 otherwise), form-encoded body, a JSON
call resource on success, `{"code": 20404, ...}` for calls in `ended`. A hang-up
(`Status=completed|canceled`) adds the call to `ended`, so a second one gets 20404 too.
`fail_next` injects that many `fail_status` replies (after recording) for retry tests, with a
`Retry-After: fail_retry_after` header when that is set.

`on_request(call_sid, form)` runs as a task once the reply is decided, so the offline demo can
end its fake caller's stream with `stop` the way Twilio does after a hang-up or transfer; like
Twilio, the REST reply does not wait for the stream to end.

Served by uvicorn inside the running event loop on a loopback port.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from collections.abc import Awaitable, Callable
from email.utils import formatdate
from typing import Any, NamedTuple
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from telephony.inprocess import InProcessServer, StartStop, bind_loopback

log = logging.getLogger(__name__)

DEFAULT_ACCOUNT_SID = "AC" + "0" * 32
CALL_PATH = "/2010-04-01/Accounts/{account_sid}/Calls/{call_sid}.json"
HANG_UP_STATUSES = frozenset({"completed", "canceled"})

OnRequest = Callable[[str, dict[str, str]], Awaitable[None]]


class RecordedRequest(NamedTuple):
    call_sid: str
    form: dict[str, str]
    time: float  # the loop's clock, so tests can measure retry spacing


def _error(
    status: int, code: int, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }
    return JSONResponse(body, status_code=status, headers=headers or None)


def _basic_credentials(header: str) -> tuple[str, str] | None:
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, sep, password = base64.b64decode(encoded, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return (user, password) if sep else None


class FakeTwilioRest(StartStop):
    def __init__(
        self, *, account_sid: str = DEFAULT_ACCOUNT_SID, auth_token: str = "test-auth-token"
    ) -> None:
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.requests: list[RecordedRequest] = []  # authenticated requests only, in order
        self.ended: set[str] = set()  # call SIDs that answer 404 / 20404
        self.fail_next = 0  # this many next requests answer `fail_status`
        self.fail_status = 500
        self.fail_retry_after: str | None = None  # Retry-After of the injected failures
        self.on_request: OnRequest | None = None
        self.app = Starlette(routes=[Route(CALL_PATH, self._update_call, methods=["POST"])])
        self._callbacks: set[asyncio.Task[None]] = set()
        self._server: InProcessServer | None = None
        self._port = 0

    @property
    def url(self) -> str:
        """The `api_url` to give TwilioCalls."""
        if not self._port:
            raise RuntimeError("FakeTwilioRest is not started")
        return f"http://127.0.0.1:{self._port}"

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        sock = bind_loopback(port, host)
        self._port = sock.getsockname()[1]
        self._server = InProcessServer(self.app, sock, lifespan="off", access_log=False)
        await self._server.start()

    async def stop(self) -> None:
        if self._callbacks:  # let a demo's "end the stream" callback finish, within reason
            _, late = await asyncio.wait(set(self._callbacks), timeout=1.0)
            for task in late:
                task.cancel()
        if self._server is None:
            return
        await self._server.stop()
        self._server = None
        self._port = 0

    # --- the endpoint ---------------------------------------------------------------------

    async def _update_call(self, request: Request) -> JSONResponse:
        account_sid = request.path_params["account_sid"]
        call_sid = request.path_params["call_sid"]
        # A path naming another account than the credentials is refused like bad credentials
        # (the exact code Twilio gives for that is unverified).
        credentials = _basic_credentials(request.headers.get("authorization", ""))
        if credentials != (self.account_sid, self.auth_token) or account_sid != self.account_sid:
            return _error(
                401, 20003, "Authenticate", {"WWW-Authenticate": 'Basic realm="Twilio API"'}
            )
        # Twilio posts single values; parse_qsl avoids a multipart dependency.
        form = dict(parse_qsl((await request.body()).decode(), keep_blank_values=True))
        self.requests.append(RecordedRequest(call_sid, form, asyncio.get_running_loop().time()))
        response = self._reply(request.url.path, call_sid, form)
        if response.status_code == 200 and self.on_request is not None:
            self._run_callback(self.on_request(call_sid, dict(form)))
        return response

    def _reply(self, path: str, call_sid: str, form: dict[str, str]) -> JSONResponse:
        if self.fail_next > 0:
            self.fail_next -= 1
            # 20429/20500/20503 are Twilio's codes; 20000+status for others is made up.
            wait = self.fail_retry_after
            headers = None if wait is None else {"Retry-After": wait}
            return _error(self.fail_status, 20000 + self.fail_status, "Injected failure", headers)
        if call_sid in self.ended:
            return _error(404, 20404, f"The requested resource {path} was not found")
        if len(form.get("Twiml", "")) > 4000:
            return _error(400, 32018, "TwiML exceeds 4000 characters")
        status = form.get("Status")
        if status in HANG_UP_STATUSES:
            self.ended.add(call_sid)
        else:
            status = None  # new TwiML (a transfer): the call goes on
        return JSONResponse(self._call_resource(path, call_sid, status))

    def _call_resource(self, path: str, call_sid: str, status: str | None) -> dict[str, Any]:
        return {
            "sid": call_sid,
            "account_sid": self.account_sid,
            "status": status or "in-progress",
            "date_updated": formatdate(usegmt=True),
            "uri": path,
        }

    def _run_callback(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._callbacks.add(task)
        task.add_done_callback(self._callback_done)

    def _callback_done(self, task: asyncio.Task[None]) -> None:
        self._callbacks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("FakeTwilioRest on_request failed", exc_info=task.exception())
