"""`telephony serve --workers N`: N worker processes on one public port, and a parent that
supervises them.

The parent binds the sockets, starts the workers and waits: no app, no event loop, no database.
Each worker is a fresh interpreter (`python -m telephony.cli serve`: create_app runs in it, not
forked after an app exists) with its own loop and full app, and is an instance of its own as
the store knows it (telephony/store/instances.py): its own id, heartbeat and internal URL, since
peers must reach the worker that carries a call (the listen-in relay, routes/listen_relay.py).

The public port is one listening socket, bound by the parent and inherited by every worker (as
uvicorn's own Multiprocess supervisor does), not an SO_REUSEPORT socket per worker:
- a worker's uvicorn serves an inherited socket exactly as one it bound itself
  (`Server.run(sockets=...)`), with our DrainingServer, GuardedHttpProtocol and the sans-I/O
  WebSocket fast paths: nothing in telephony/http_server.py or routes/sansio.py changes;
- the socket outlives any one worker: while a dead worker restarts, the others take every new
  connection and none already queued is lost (an SO_REUSEPORT socket's queue is reset when it
  closes, and until then the kernel keeps hashing a share of new connections to it);
- no other process can join the port (SO_REUSEPORT admits any process of the same user).
A new connection wakes every worker and the first to accept it takes it, so an idle worker tends
to win (no hash; `telephony bench --workers 2` found the calls evenly split).

Worker k also listens on a private port of its own, internal base + k (`--internal-port`;
default the port of TELEPHONY_INTERNAL_URL when set, else --port + 1), serving the same app:
its internal URL (TELEPHONY_INTERNAL_URL's port + k, else this host's address), and its own
/metrics, /healthz and /readyz (the public port lands on any worker).

The parent sets in worker k's environment: TELEPHONY_INSTANCE_ID `<id>-w<k>` (unset:
`<host>-<parent pid>-w<k>`), so a restarted worker closes the calls its dead predecessor left
open at once instead of after a stale heartbeat; TELEPHONY_INTERNAL_URL; TELEPHONY_SESSION_SECRET
(a random one when unset: a staff cookie or a relay token must be good on every worker); and
TELEPHONY_WORKER (its index, the two socket descriptors, the parent's pid).

Signals: SIGTERM and SIGINT to the parent are passed to every worker, which drains as
telephony/drain.py says (a second and a third signal likewise); the parent exits once all have,
0 when every worker exited 0. SIGHUP is passed on (each worker re-reads the numbers YAML). Workers
run in a session of their own, so a terminal's Ctrl-C reaches them once, through the parent;
each gets SIGTERM should the parent die (Linux PR_SET_PDEATHSIG). A worker that dies on its own
is logged and restarted (at once; after 1 s, doubling to 30 s, while it keeps dying within 10 s
of starting); its calls were cut off, as on a crash.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from telephony.cli_usage import UsageError

if TYPE_CHECKING:
    from telephony.settings import Settings

log = logging.getLogger(__name__)

WORKER_ENV = "TELEPHONY_WORKER"  # "index,public fd,internal fd,parent pid"; set by the parent
BACKLOG = 2048  # uvicorn's default
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
POLL_S = 0.1  # how often the parent looks for a dead worker
RESTART_DELAY_S = (1.0, 30.0)  # first and largest wait before restarting a worker that crashes
CRASH_LOOP_S = 10.0  # a worker dying sooner than this after its start is crashing in a loop
NAME_CHARS = 64  # TELEPHONY_INSTANCE_ID's bound (instances.name)
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class Inherited:
    """What a worker got from its parent (TELEPHONY_WORKER)."""

    index: int
    public_fd: int
    internal_fd: int
    parent_pid: int

    def sockets(self) -> list[socket.socket]:
        return [socket.socket(fileno=self.public_fd), socket.socket(fileno=self.internal_fd)]


def inherited() -> Inherited | None:
    """This process's worker details when the parent started it, else None. Taken out of the
    environment, so nothing this worker starts takes itself for a worker."""
    value = os.environ.pop(WORKER_ENV, "")
    if not value:
        return None
    index, public_fd, internal_fd, parent_pid = (int(part) for part in value.split(","))
    return Inherited(index, public_fd, internal_fd, parent_pid)


def die_with_parent(parent_pid: int) -> None:
    """SIGTERM (a drain) to this worker when its parent dies, however it dies (Linux only)."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent_pid:  # it died before the line above: no call is here yet
        os.kill(os.getpid(), signal.SIGTERM)


def needs_postgres(settings: Settings) -> None:
    """Workers are instances sharing a store and a live bus: only PostgreSQL is shared."""
    from sqlalchemy.engine import make_url

    if make_url(settings.database_url).get_backend_name() != "postgresql":
        raise UsageError(
            "--workers needs PostgreSQL: each worker is an instance of its own, and with SQLite "
            "the live floor (events, listen-in) stays within one process. Set "
            "TELEPHONY_DATABASE_URL=postgresql+asyncpg://..., or serve with --workers 1"
        )


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on HOST:PORT (0: any free port), inheritable by the workers."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        sock.bind(address)
        sock.listen(BACKLOG)  # connections wait here while a worker starts or restarts
    except OSError as exc:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


def _with_port(url: str, port: int) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _url_port(url: str) -> int:
    parts = urlsplit(url)
    return parts.port or (443 if parts.scheme == "https" else 80)


def internal_base_port(settings: Settings, port: int, internal_port: int | None) -> int:
    """Where worker 0's private listener goes; worker k's is this + k (0: any free ports)."""
    if internal_port is not None:
        return internal_port
    if settings.internal_url:
        return _url_port(settings.internal_url)
    return port + 1 if port else 0


def internal_urls(settings: Settings, default_url: str, bound_ports: list[int]) -> list[str]:
    """Each worker's TELEPHONY_INTERNAL_URL: the one set names worker 0's and worker k's is on
    its port + k (the listeners may be mapped to other ports: --internal-port); unset, this
    host's address and the port each worker's listener has."""
    if settings.internal_url:
        base = _url_port(settings.internal_url)
        return [_with_port(settings.internal_url, base + k) for k in range(len(bound_ports))]
    return [_with_port(default_url, port) for port in bound_ports]


def worker_names(settings: Settings, workers: int) -> list[str]:
    base = settings.instance_id or f"{socket.gethostname()[:40] or 'host'}-{os.getpid()}"
    names = [f"{base}-w{k}" for k in range(workers)]
    if len(names[-1]) > NAME_CHARS:
        raise UsageError(
            f"TELEPHONY_INSTANCE_ID is too long for --workers {workers}: each worker's is it plus "
            f"'-w<k>', at most {NAME_CHARS} characters"
        )
    return names


@dataclass
class Worker:
    index: int
    env: dict[str, str]
    internal: socket.socket
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restart_at: float | None = None  # when a crashed worker is due to start again
    delay_s: float = 0.0  # the wait before the next restart, grown while it crash-loops
    exit_code: int | None = None  # once it exited after the stop began
    sent: int = 0  # how many of the signals received it has been sent


class Supervisor:
    """Starts the workers, restarts one that dies, passes signals on, waits for the drain.

    The signal handler only records the signal; the loop passes it on (within POLL_S): a
    handler may run between any two bytecodes, e.g. between a worker's start and its
    bookkeeping, so no signal is sent twice or missed."""

    def __init__(self, argv: list[str], public: socket.socket, workers: list[Worker]) -> None:
        self.argv = argv
        self.public = public
        self.workers = workers
        self.received: list[int] = []  # every signal, in order
        self.handled = 0  # how many of them the loop has taken in
        self.stopping = False

    def run(self) -> int:
        previous = {sig: signal.signal(sig, self._on_signal) for sig in FORWARDED}
        try:
            for worker in self.workers:
                self._start(worker)
            while not self._all_exited():
                self._pass_on()
                self._reap()
                self._restart_due()
                time.sleep(POLL_S)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            for worker in self.workers:
                worker.internal.close()
            self.public.close()
        failed = [w.index for w in self.workers if w.exit_code != 0]
        if failed:
            log.error("workers %s did not exit cleanly", failed)
            return 1
        log.info("every worker has exited")
        return 0

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        self.received.append(sig)

    def _start(self, worker: Worker) -> None:
        worker.restart_at = None
        if self.stopping:  # not started (again): it has no call to drain
            worker.exit_code = 0
            return
        fds = (self.public.fileno(), worker.internal.fileno())
        env = worker.env | {WORKER_ENV: f"{worker.index},{fds[0]},{fds[1]},{os.getpid()}"}
        # Signals not taken in yet are passed on to it too (a SIGTERM: it stops at once).
        worker.sent = self.handled
        # A session of its own: a terminal's Ctrl-C goes to the parent only, which passes it
        # on once (twice would be "end the calls now").
        worker.proc = subprocess.Popen(self.argv, env=env, pass_fds=fds, start_new_session=True)
        worker.started_at = time.monotonic()
        log.info("worker %d started (pid %d)", worker.index, worker.proc.pid)

    def _pass_on(self) -> None:
        upto = len(self.received)
        for index in range(self.handled, upto):
            sig = self.received[index]
            name = signal.Signals(sig).name
            if sig == signal.SIGHUP:
                log.info("%s: passed on to every worker (the numbers YAML is read again)", name)
                continue
            self.stopping = True
            count = sum(1 for s in self.received[: index + 1] if s != signal.SIGHUP)
            log.warning("%s (%d): passed on to every worker (telephony/drain.py)", name, count)
        self.handled = upto
        for worker in self.workers:
            if worker.proc is not None:
                for sig in self.received[worker.sent : upto]:
                    with contextlib.suppress(ProcessLookupError):
                        worker.proc.send_signal(sig)
            worker.sent = upto

    def _reap(self) -> None:
        for worker in self.workers:
            proc = worker.proc
            if proc is None or proc.poll() is None:
                continue
            worker.proc = None
            if self.stopping:
                worker.exit_code = proc.returncode
                log.info("worker %d (pid %d) %s", worker.index, proc.pid, _how(proc))
                continue
            ran_s = time.monotonic() - worker.started_at
            worker.delay_s = (
                min(max(2 * worker.delay_s, RESTART_DELAY_S[0]), RESTART_DELAY_S[1])
                if ran_s < CRASH_LOOP_S
                else 0.0
            )
            worker.restart_at = time.monotonic() + worker.delay_s
            log.error(
                "worker %d (pid %d) %s after %.0f s: restarting it%s; the calls it carried were "
                "cut off (the store closes them as `restart`)",
                worker.index,
                proc.pid,
                _how(proc),
                ran_s,
                f" in {worker.delay_s:.0f} s" if worker.delay_s else "",
            )

    def _restart_due(self) -> None:
        now = time.monotonic()
        for worker in self.workers:
            if worker.restart_at is not None and (now >= worker.restart_at or self.stopping):
                self._start(worker)

    def _all_exited(self) -> bool:
        return self.stopping and all(w.proc is None and w.restart_at is None for w in self.workers)


def _how(proc: subprocess.Popen[bytes]) -> str:
    code = proc.returncode
    if code is not None and code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with status {code}"


def supervise(
    settings: Settings,
    *,
    workers: int,
    host: str,
    port: int,
    internal_port: int | None,
    ws_max_size: int,
    default_url: str,
) -> int:
    """Bind the public port and the workers' private ones, run the workers until they have
    drained. `default_url`: an internal URL for this host, its port to be replaced per worker."""
    needs_postgres(settings)
    names = worker_names(settings, workers)
    base = internal_base_port(settings, port, internal_port)
    public = listen(host, port)
    port = public.getsockname()[1]
    internals: list[socket.socket] = []
    try:
        for k in range(workers):
            internals.append(listen(host, base + k if base else 0))
    except UsageError:
        for sock in [public, *internals]:
            sock.close()
        raise
    shared = dict(os.environ)
    if settings.session_secret is None:
        log.warning(
            "TELEPHONY_SESSION_SECRET unset: a random one shared by the workers; staff logins "
            "will not survive a restart"
        )
        shared["TELEPHONY_SESSION_SECRET"] = secrets.token_urlsafe(32)
    ports = [sock.getsockname()[1] for sock in internals]
    plan = []
    for k, url in enumerate(internal_urls(settings, default_url, ports)):
        env = shared | {"TELEPHONY_INSTANCE_ID": names[k], "TELEPHONY_INTERNAL_URL": url}
        plan.append(Worker(k, env, internals[k]))
        log.info("worker %d: instance %s, internal URL %s", k, names[k], url)
    log.info("listening on %s:%d with %d workers", host, port, workers)
    argv = [sys.executable, "-m", "telephony.cli", "serve", "--host", host, "--port", str(port)]
    argv += ["--ws-max-size", str(ws_max_size)]
    return Supervisor(argv, public, plan).run()
