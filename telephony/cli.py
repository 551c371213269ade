"""`telephony` command line: serve, config check, emulator."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from routes.app import create_app
    from telephony.config import ConfigError
    from telephony.logs import setup_logging
    from telephony.settings import Settings

    settings = Settings()
    setup_logging(settings.log_format, settings.log_level)
    try:
        app = create_app(settings)
    except ConfigError as exc:
        print("\n".join(exc.errors), file=sys.stderr)
        return 1
    config = uvicorn.Config(
        app, host=args.host, port=args.port, log_config=None, ws_max_size=args.ws_max_size
    )
    uvicorn.Server(config).run()
    return 0


def _config_check(args: argparse.Namespace) -> int:
    from telephony.config import check

    ok, text = check(args.path)
    print(text, file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


def _emulator(args: argparse.Namespace) -> int:
    from telephony.logs import setup_logging
    from telephony.settings import Settings
    from telephony.sim.deepgram_server import run_emulator

    settings = Settings()
    setup_logging(settings.log_format, settings.log_level)
    # The key clients must present: DEEPGRAM_API_KEY, or "test-key" when unset.
    key = settings.deepgram_api_key.get_secret_value() or "test-key"
    print(f"fake Deepgram on ws://{args.host}:{args.port}", flush=True)
    run_emulator(args.host, args.port, key)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="telephony", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the service under uvicorn")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument(
        "--ws-max-size", type=int, default=64 * 1024, help="largest WebSocket message, bytes"
    )
    serve.set_defaults(func=_serve)

    config = sub.add_parser("config", help="admin YAML tools")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    check = config_sub.add_parser("check", help="validate a numbers YAML file")
    check.add_argument("path")
    check.set_defaults(func=_config_check)

    emulator = sub.add_parser("emulator", help="run the fake Deepgram server")
    emulator.add_argument("--host", default="127.0.0.1")
    emulator.add_argument("--port", type=int, default=8765)
    emulator.set_defaults(func=_emulator)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
