"""FakeDeepgram: one loopback WebSocket server for Flux, Aura, the Voice Agent and Nova.

    async with FakeDeepgram(script=Script(turns=[ScriptedTurn(500, 2000, "hello there")])) as dg:
        url = dg.url + "/v2/listen?model=flux-general-en&encoding=mulaw&sample_rate=8000"
        ...
        assert dg.connections[0].violations == []

Handshake checks, in order: path (404), credentials (401), concurrent connections (429 with
`max_connections`; `refuse` answers an endpoint's next handshakes 429 the same way: Deepgram's
concurrency limit reached from elsewhere), query parameters (400 with the reason in the body).
Credentials:
`Authorization: Token <api_key>`; `Authorization: Bearer jwt:<api_key>` stands in for a JWT
from /v1/auth/grant (`Bearer <api_key>` fails, as on the real service);
`Sec-WebSocket-Protocol: token, <api_key>` for header-less clients.

Scripts: `set_script(tag, script)` serves connections whose query has `tag=<tag>` (the agent:
whose Settings `tags` contain it; Nova with several tags: `<tag1>:<tag2>` first, then each tag
in order); everything else gets the default script. Faults come from
the script plus `inject_fault`, and each applies to one connection (see `Fault`). A voiced
script's text cursor (which text the next heard turn gets) is per FakeDeepgram and tag, and
`set_script` resets it (see `Script`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import uuid
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
from starlette.routing import Route
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from telephony.inprocess import StartStop
from telephony.sim.deepgram import params as qp
from telephony.sim.deepgram.agent import AgentSession
from telephony.sim.deepgram.base import Assignment, ConnectionLog, Options, Session
from telephony.sim.deepgram.flux import FluxSession
from telephony.sim.deepgram.flux_voiced import TextCursor, VoicedFluxSession
from telephony.sim.deepgram.listen import ListenSession
from telephony.sim.deepgram.read import FakeRead
from telephony.sim.deepgram.script import Fault, Script
from telephony.sim.deepgram.speak import SpeakSession
from telephony.sim.deepgram.speak_rest import FakeSpeakRest

PATHS = {
    "/v2/listen": "flux",
    "/v1/speak": "speak",
    "/v1/agent/converse": "agent",
    "/v1/listen": "listen",
}
JWT_PREFIX = "jwt:"
TOKEN = Subprotocol("token")  # `Sec-WebSocket-Protocol: token, <key>` (docs/protocol.md §2)


@dataclass(frozen=True, slots=True)
class Rejection:
    """A refused upgrade (never a ConnectionLog)."""

    at: float
    path: str
    status: int
    reason: str


@dataclass(frozen=True, slots=True)
class _Accepted:
    endpoint: str
    path: str
    query: dict[str, list[str]]
    auth: str
    headers: dict[str, str]
    params: Any


class FakeConnection(ServerConnection):
    """Fake Deepgram's end of a socket: notes incoming pings for the session (Flux counts them
    as activity)."""

    accepted: _Accepted | None = None
    session: Session | None = None

    def process_event(self, event: Any) -> None:
        super().process_event(event)
        if self.session is not None and isinstance(event, Frame) and event.opcode is Opcode.PING:
            self.session.on_ping()


def _mask(value: str) -> str:
    """Keep the scheme, hide the secret: "Token ***"."""
    head, _, rest = value.partition(" ")
    return f"{head} ***" if rest else "***"


class FakeDeepgram(StartStop):
    connection_class: type[FakeConnection] = FakeConnection  # the benchmark's stamps its reads

    def __init__(
        self,
        *,
        api_key: str = "test-key",
        script: Script | None = None,
        speak_ms_per_char: int = 60,
        speak_first_byte_ms: int = 100,
        speak_speedup: float = 4.0,
        idle_timeout_s: float = 10.0,
        flux_idle_timeout_s: float = 60.0,
        flush_limit: int = 20,
        flush_window_s: float = 60.0,
        realtime: bool = True,
        agent_session_cap_s: float = 7200.0,
        agent_latency_s: float = 0.6,
        agent_history: bool = True,
        max_connections: int | None = None,
        refuse: Mapping[str, int] | None = None,
        log_audio: bool = True,
        tick_s: float = 0.05,
        serve_read: bool = False,
    ) -> None:
        self.options = Options(
            api_key=api_key,
            speak_ms_per_char=speak_ms_per_char,
            speak_first_byte_ms=speak_first_byte_ms,
            speak_speedup=speak_speedup,
            idle_timeout_s=idle_timeout_s,
            flux_idle_timeout_s=flux_idle_timeout_s,
            flush_limit=flush_limit,
            flush_window_s=flush_window_s,
            realtime=realtime,
            agent_session_cap_s=agent_session_cap_s,
            agent_latency_s=agent_latency_s,
            agent_history=agent_history,
            log_audio=log_audio,
            tick_s=tick_s,
        )
        self.max_connections = max_connections
        # Text Intelligence (POST /v1/read) needs an HTTP server of its own: started with this
        # one when `serve_read`, at `read.url` (set DEEPGRAM_REST_URL to it): on the port after
        # this one's when that was given, else on any free one.
        self.read = FakeRead(api_key)
        # ...which also serves Aura's REST endpoint (POST /v1/speak): fixed phrases.
        self.speak_rest = FakeSpeakRest(api_key, self.options.speak_ms_per_char)
        self.read.app.router.routes.append(
            Route("/v1/speak", self.speak_rest.handle, methods=["POST"])
        )
        self.serve_read = serve_read
        self._refusals: dict[str, int] = dict(refuse or {})  # endpoint -> handshakes to refuse
        self.connections: list[ConnectionLog] = []
        self.rejections: list[Rejection] = []
        self._scripts: dict[str | None, Script] = {None: script or Script()}
        self._injected: dict[str | None, list[Fault]] = defaultdict(list)
        self._cursors: dict[str | None, TextCursor] = defaultdict(TextCursor)  # voiced scripts
        self._counts: dict[tuple[str, str | None], int] = defaultdict(int)
        self._sessions: set[Session] = set()
        self._new_connection = asyncio.Event()
        self._server: Server | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._host = "127.0.0.1"
        self._port = 0

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._server = await serve(
            self._handler,
            host,
            port,
            process_request=self._process_request,
            select_subprotocol=lambda _conn, offered: TOKEN if TOKEN in offered else None,
            create_connection=self.connection_class,
            compression=None,  # cheaper for the benchmark; audio does not compress anyway
            ping_interval=None,  # clients keep the connection alive, not the server
            close_timeout=2,
        )
        self._host = host
        self._port = self._server.sockets[0].getsockname()[1]
        self._ticker = asyncio.get_running_loop().create_task(self._tick())
        if self.serve_read:  # a fixed port (the next one) when this one was chosen
            await self.read.start(host, port + 1 if port else 0)

    async def stop(self) -> None:
        await self.read.stop()
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"ws://{self._host}:{self._port}"

    # --- scripts, faults, inspection ---------------------------------------------------------

    def set_script(self, tag: str | None, script: Script) -> None:
        """Serve `script` to connections tagged `tag` (None: the default script)."""
        self._scripts[tag] = script
        self._cursors.pop(tag, None)  # a voiced script starts from its first text

    def refuse(self, endpoint: str, times: int = 1) -> None:
        """Answer the next `times` handshakes to `endpoint` with 429 (too many sockets)."""
        if endpoint not in PATHS.values():
            raise ValueError(f"no endpoint {endpoint!r}")
        self._refusals[endpoint] = self._refusals.get(endpoint, 0) + times

    def inject_fault(self, fault: Fault, tag: str | None = None) -> None:
        """Add a fault for future connections of that tag (None: untagged / unregistered)."""
        self._injected[tag].append(fault)

    def logs(self, endpoint: str) -> list[ConnectionLog]:
        return [c for c in self.connections if c.endpoint == endpoint]

    def violations(self) -> list[str]:
        """Every violation on every connection, prefixed with its endpoint."""
        return [f"{c.endpoint}: {v}" for c in self.connections for v in c.violations]

    async def wait_for_connection(
        self, endpoint: str, index: int = 0, within: float = 5.0
    ) -> ConnectionLog:
        """The `index`-th (0-based) accepted connection to `endpoint`, once it exists."""
        async with asyncio.timeout(within):
            while len(logs := self.logs(endpoint)) <= index:
                self._new_connection.clear()
                await self._new_connection.wait()
        return logs[index]

    def _assign(self, endpoint: str, tags: Sequence[str | None]) -> Assignment:
        key = next((t for t in tags if t in self._scripts or t in self._injected), None)
        index = self._counts[(endpoint, key)]
        self._counts[(endpoint, key)] += 1
        script = self._scripts.get(key) or self._scripts[None]
        faults = [*script.faults, *self._injected.get(key, ())]
        mine = tuple(f for f in faults if f.applies_to(endpoint, index))
        return Assignment(script, mine, key, index)

    # --- handshake ---------------------------------------------------------------------------

    def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        endpoint = PATHS.get(url.path)
        if endpoint is None:
            return self._reject(conn, url.path, HTTPStatus.NOT_FOUND, f"no endpoint {url.path}")
        auth = self._authenticate(request.headers)
        if auth is None:
            return self._reject(conn, url.path, HTTPStatus.UNAUTHORIZED, "invalid credentials")
        over = self.max_connections is not None and len(self._sessions) >= self.max_connections
        if over or self._refusals.get(endpoint, 0) > 0:
            if not over:
                self._refusals[endpoint] -= 1
            return self._reject(conn, url.path, HTTPStatus.TOO_MANY_REQUESTS, "too many sockets")
        query = parse_qs(url.query, keep_blank_values=True)
        try:
            params = self._params(endpoint, query)
        except qp.ParamError as exc:
            return self._reject(conn, url.path, HTTPStatus.BAD_REQUEST, str(exc))
        headers = {
            k: (_mask(v) if k in ("authorization", "sec-websocket-protocol") else v)
            for k in ("authorization", "sec-websocket-protocol", "user-agent")
            if (v := request.headers.get(k)) is not None
        }
        assert isinstance(conn, FakeConnection)
        conn.accepted = _Accepted(endpoint, url.path, query, auth, headers, params)
        return None

    @staticmethod
    def _params(endpoint: str, query: qp.Query) -> Any:
        if endpoint == "flux":
            return qp.flux_params(query)
        if endpoint == "speak":
            return qp.speak_params(query)
        if endpoint == "listen":
            return qp.listen_params(query)
        if query:
            raise qp.ParamError("the agent takes no query parameters (configure it in Settings)")
        return None

    def _authenticate(self, headers: Headers) -> str | None:
        key = self.options.api_key
        scheme, _, credential = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "token" and credential == key:
            return "token"
        if scheme.lower() == "bearer" and credential == JWT_PREFIX + key:
            return "bearer"
        offered = [
            p.strip() for h in headers.get_all("sec-websocket-protocol") for p in h.split(",")
        ]
        if len(offered) == 2 and offered[0].lower() == "token" and offered[1] == key:
            return "subprotocol"
        return None

    def _reject(
        self, conn: ServerConnection, path: str, status: HTTPStatus, reason: str
    ) -> Response:
        self.rejections.append(Rejection(asyncio.get_running_loop().time(), path, status, reason))
        body = {"err_code": status.phrase.upper().replace(" ", "_"), "err_msg": reason}
        response = conn.respond(status, orjson.dumps(body).decode() + "\n")
        response.headers["Content-Type"] = "application/json"
        return response

    # --- connections -------------------------------------------------------------------------

    async def _handler(self, conn: ServerConnection) -> None:
        assert isinstance(conn, FakeConnection) and conn.accepted is not None
        acc = conn.accepted
        log = ConnectionLog(
            endpoint=acc.endpoint,
            path=acc.path,
            query=acc.query,
            headers=acc.headers,
            auth=acc.auth,
            opened_at=asyncio.get_running_loop().time(),
            request_id=str(uuid.uuid4()),
        )
        self.connections.append(log)
        self._new_connection.set()
        session = self._session(conn, log, acc)
        conn.session = session
        self._sessions.add(session)
        try:
            await session.run()
        finally:
            self._sessions.discard(session)
            if log.closed_by is None:
                # False: we sent the first close frame (e.g. stop() closing with 1001).
                first = conn.protocol.close_rcvd_then_sent
                log.closed_by = "server" if first is False else "client"
                log.close_code = conn.close_code
                log.close_reason = conn.close_reason or ""
            log._done.set()

    def _session(self, conn: ServerConnection, log: ConnectionLog, acc: _Accepted) -> Session:
        opts = self.options
        if acc.endpoint == "agent":
            return AgentSession(opts, conn, log, self._assign)  # assigned at Settings
        tags: tuple[str | None, ...] = (acc.params.tag,)
        if acc.endpoint == "listen" and len(acc.params.tags) > 1:
            # Several tags (e.g. a call and the side of it): "<first>:<second>" is tried first
            # so one call's sides can have their own scripts, then each tag in order.
            tags = (f"{acc.params.tags[0]}:{acc.params.tags[1]}", *acc.params.tags)
        assignment = self._assign(acc.endpoint, tags)
        log.tag, log.index = assignment.tag, assignment.index
        script = assignment.script
        session: Session
        if acc.endpoint == "flux" and script.voiced:
            cursor = self._cursors[assignment.tag]
            session = VoicedFluxSession(opts, conn, log, acc.params, script, cursor)
        elif acc.endpoint == "flux":
            session = FluxSession(opts, conn, log, acc.params, script.turns)
        elif acc.endpoint == "listen":  # voiced turns are Flux only
            turns = [] if script.voiced else script.turns
            session = ListenSession(opts, conn, log, acc.params, turns)
        else:
            session = SpeakSession(opts, conn, log, acc.params)
        session.set_faults(assignment.faults)
        return session

    async def _tick(self) -> None:
        """One ticker for all connections: idle timeouts, caps and wall-clock faults."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.options.tick_s)
            now = loop.time()
            for session in list(self._sessions):
                session.tick(now)


# --- the offline emulator (`telephony emulator --port N`) ----------------------------------


async def serve_forever(
    port: int,
    host: str = "127.0.0.1",
    api_key: str = "test-key",
    script: Script | None = None,
    realtime: bool = True,
    tagged: Mapping[str, Script] | None = None,
) -> None:
    """`script` for every connection; `tagged` scripts for connections with that tag (e.g.
    "staff": the transcribe mode's other side, as `telephony call` sets it)."""
    fake = FakeDeepgram(api_key=api_key, script=script, realtime=realtime, serve_read=True)
    for tag, tagged_script in (tagged or {}).items():
        fake.set_script(tag, tagged_script)
    await fake.start(host, port)
    print(f"fake Deepgram listening on {fake.url}", flush=True)
    print(f"fake Deepgram /v1/read on {fake.read.url} (DEEPGRAM_REST_URL)", flush=True)
    try:
        await asyncio.Future()  # until cancelled
    finally:
        await fake.stop()


def run_emulator(
    host: str,
    port: int,
    api_key: str,
    script: Script | None = None,
    tagged: Mapping[str, Script] | None = None,
) -> None:
    """Serve the fake until interrupted (blocks)."""
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve_forever(port, host, api_key, script, tagged=tagged))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fake Deepgram (Flux, Aura, Agent, Nova)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--api-key", default=os.environ.get("DEEPGRAM_API_KEY", "test-key"))
    parser.add_argument("--script", type=Path, help="YAML script (turns, agent, faults)")
    args = parser.parse_args(argv)
    script = Script.from_yaml(args.script) if args.script else None
    run_emulator(args.host, args.port, args.api_key, script)
    return 0
