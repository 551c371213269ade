"""`telephony serve`: the app under uvicorn, draining on SIGTERM; with `--workers N` the
parent of N such processes on one port (telephony/workers.py)."""

from __future__ import annotations

import argparse
import socket
import sys

from telephony.cli_usage import check_config_file, check_port_free, checked_settings
from telephony.settings import Settings


def serve(args: argparse.Namespace) -> int:
    """`telephony serve`: one process, or a `--workers N` parent (telephony/workers.py)."""
    from telephony import workers
    from telephony.logs import setup_logging

    settings = checked_settings()
    check_config_file(settings.config_path, "TELEPHONY_CONFIG")
    worker = workers.inherited()  # a worker of `--workers N`: its parent bound the ports
    if worker is None:
        check_port_free(args.host, args.port)
    setup_logging(settings.log_format, settings.log_level)
    if worker is None and args.workers > 1:
        return _supervise(args, settings)
    if worker is not None:
        workers.die_with_parent(worker.parent_pid)
    return _serve_app(args, settings, worker.sockets() if worker is not None else None)


def _serve_app(
    args: argparse.Namespace, settings: Settings, sockets: list[socket.socket] | None
) -> int:
    """The app under uvicorn in this process: on its own port, or on the sockets a
    `--workers` parent bound (telephony/workers.py)."""
    import uvicorn

    from routes.app import create_app
    from routes.sansio import UVICORN_WS
    from routes.state import started_services
    from telephony.config import ConfigError
    from telephony.drain import SHUTDOWN_GRACE_S, DrainingServer
    from telephony.http_server import uvicorn_options
    from telephony.startup import InsecureSettings

    if not settings.internal_url:  # how the other instances reach this one (listen-in)
        settings = settings.model_copy(update={"internal_url": _internal_url(args.host, args.port)})
    try:
        app = create_app(settings, freeze_heap=True)  # see create_app: no GC stalls
    except ConfigError as exc:
        print("\n".join(exc.errors), file=sys.stderr)
        return 1
    except InsecureSettings as exc:  # no real TWILIO_AUTH_TOKEN (telephony/startup.py)
        print(exc, file=sys.stderr)
        return 2
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_config=None,
        **UVICORN_WS,  # routes/sansio.py: batched writes, frames handled as parsed
        ws_max_size=args.ws_max_size,
        timeout_graceful_shutdown=SHUTDOWN_GRACE_S,
        **uvicorn_options(settings),  # timeouts, connection bound, trusted proxies
    )
    # SIGTERM/SIGINT drain the calls first (telephony/drain.py), then uvicorn shuts down.
    server = DrainingServer(config, lambda: started_services(app), settings.drain_timeout_s)
    server.run(sockets=sockets)
    return 1 if server.forced else 0


def _supervise(args: argparse.Namespace, settings: Settings) -> int:
    """`--workers N`: the parent (telephony/workers.py); the settings are checked here once,
    so a mistake is one message and an exit status, not N workers failing in a loop."""
    from telephony import workers
    from telephony.config import ConfigError, load_config
    from telephony.startup import refusal

    why = refusal(settings)  # create_app's check (no real TWILIO_AUTH_TOKEN), made up front
    if why is not None:
        print(why, file=sys.stderr)
        return 2
    try:
        load_config(settings.config_path)
    except ConfigError as exc:
        print("\n".join(exc.errors), file=sys.stderr)
        return 1
    return workers.supervise(
        settings,
        workers=args.workers,
        host=args.host,
        port=args.port,
        internal_port=args.internal_port,
        ws_max_size=args.ws_max_size,
        default_url=_internal_url(args.host, args.port),
    )


def _internal_url(host: str, port: int) -> str:
    """This instance's address as its peers see it: the host's own address (a container's or
    pod's on their network) unless it listens on one address only."""
    import socket

    if host not in ("0.0.0.0", "::", ""):
        return f"http://{host}:{port}"
    try:
        address = socket.gethostbyname(socket.gethostname())
    except OSError:
        address = "127.0.0.1"
    return f"http://{address}:{port}"
