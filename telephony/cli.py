"""`telephony` command line: serve, config check, db, users, insights, retention, emulator, call,
bench."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from telephony import cli_insights, cli_qa, cli_serve, cli_users
from telephony.cli_usage import (
    UsageError,
    check_config_file,
    check_port_free,
    checked_settings,
    database_errors,
)

if TYPE_CHECKING:
    from telephony.sim.deepgram_server import Script

# The API key `telephony emulator` accepts when DEEPGRAM_API_KEY is unset.
EMULATOR_DEFAULT_KEY = "test-key"


def _config_check(args: argparse.Namespace) -> int:
    from telephony.config import check

    ok, text = check(args.path, env=os.environ)
    print(text, file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


def _db_upgrade(args: argparse.Namespace) -> int:
    from telephony.store.migrate import upgrade_blocking

    settings = checked_settings()
    with database_errors():
        upgrade_blocking(settings.database_url)
    print("database schema is up to date")
    return 0


def _retention_run(args: argparse.Namespace) -> int:
    import asyncio

    from telephony.config import ConfigError, load_config
    from telephony.store.engine import make_engine
    from telephony.store.migrate import upgrade
    from telephony.store.retention import RetentionResult, run_retention

    settings = checked_settings()
    try:  # each call's retention comes from its profile in the current YAML
        profiles = load_config(settings.config_path).profiles
    except ConfigError as exc:
        print("\n".join(exc.errors), file=sys.stderr)
        return 1

    async def run() -> RetentionResult:
        engine = make_engine(settings.database_url)
        try:
            await upgrade(engine)
            return await run_retention(
                engine, profiles, default_days=args.default_days, dry_run=args.dry_run
            )
        finally:
            await engine.dispose()

    with database_errors():
        result = asyncio.run(run())
    if args.dry_run:
        for sid in result.calls:  # what would go, one SID per line, then the summary
            print(sid)
    print(result.summary())
    return 0


def _read_script(path: str) -> dict[str, Any]:
    from telephony.sim.deepgram.script_file import read_script
    from telephony.sim.deepgram_server import ScriptError

    try:
        return read_script(path)
    except ScriptError as exc:
        raise UsageError(f"--script {exc}") from None


def _script_from(path: str, data: dict[str, Any]) -> Script:
    """Script.from_dict, its errors (top-level keys, voiced turns) as a usage error."""
    from telephony.sim.deepgram_server import Script, ScriptError

    try:
        return Script.from_dict(data)
    except ScriptError as exc:
        raise UsageError(f"--script {path}: {exc}") from None


def _emulator(args: argparse.Namespace) -> int:
    from telephony.logs import setup_logging
    from telephony.sim.deepgram_server import run_emulator

    settings = checked_settings()
    script, tagged = None, {}
    if args.script:  # the `telephony call --script` timeline; `staff:` for "staff"-tagged sockets
        data = _read_script(args.script)
        staff = data.pop("staff", None)
        script = _script_from(args.script, data)
        if staff:
            tagged["staff"] = _script_from(args.script, {"turns": staff})
    check_port_free(args.host, args.port)
    if args.port:  # /v1/read is served over HTTP on the next port (sim/deepgram/read.py)
        check_port_free(args.host, args.port + 1)
    setup_logging(settings.log_format, settings.log_level)
    # The key clients must present: DEEPGRAM_API_KEY, or "test-key" when unset.
    key = settings.deepgram_api_key.get_secret_value() or EMULATOR_DEFAULT_KEY
    # run_emulator prints "fake Deepgram listening on ws://HOST:PORT" once it accepts.
    run_emulator(args.host, args.port, key, script, tagged)
    return 0


def _call(args: argparse.Namespace) -> int:
    import asyncio
    import json
    from pathlib import Path

    from telephony import demo
    from telephony.config import ConfigError, load_config
    from telephony.logs import setup_logging

    setup_logging("text", "WARNING")
    try:
        faults = [demo.parse_fault(f) for f in args.fault]
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    check_config_file(args.config, "--config")
    try:  # the file's own errors, as `telephony config check` lists them
        load_config(args.config)
    except ConfigError as exc:
        print("\n".join(exc.errors), file=sys.stderr)
        return 1
    script = staff = None
    if args.script:
        data = _read_script(args.script)
        if args.mode == "transcribe":  # `staff:` holds the other side's turns
            script = _script_from(args.script, {k: v for k, v in data.items() if k != "staff"})
            staff = _script_from(args.script, {"turns": data.get("staff") or []})
        else:
            script = _script_from(args.script, data)
    elif args.say:
        script = demo.say_script(args.say, args.mode)
    audio = None
    if args.audio:
        audio = _read_audio(args.audio)
    call = asyncio.run(
        demo.run_offline_call(
            number=args.number,
            mode=args.mode,
            script=script,
            audio=audio,
            config_path=Path(args.config),
            faults=faults,
            staff_script=staff,
            # --say: one question, one answer, then the caller hangs up (not the 30 s cap).
            hang_up_after_reply_s=demo.SAY_HANGUP_S if args.say and not args.script else None,
        )
    )
    if args.json:
        print(json.dumps(call.as_json(), indent=2))
    else:
        print(demo.format_text(call))
    return 0 if call.summary is not None else 1


def _read_audio(path: str) -> bytes:
    import struct

    from telephony.audio import read_wav_as_mulaw8k

    try:
        return read_wav_as_mulaw8k(path)
    except OSError as exc:
        raise UsageError(f"--audio {path}: cannot read: {exc.strerror or exc}") from None
    except (ValueError, EOFError, struct.error) as exc:  # not RIFF/WAVE, cut short, unsupported
        raise UsageError(f"--audio {path}: not a WAV file we can read: {exc}") from None


def _bench(args: argparse.Namespace) -> int:
    if args.hostile:
        from telephony import bench_hostile

        if len(args.calls) != 1:
            raise UsageError("--hostile takes one --calls count, not a sweep")
        return bench_hostile.main(
            args.hostile, args.calls[0], args.seconds, not args.no_pin, args.json
        )
    from telephony import bench_main

    return bench_main.main(args)


def _call_counts(text: str) -> tuple[int, ...]:
    """--calls: one count, or a comma-separated sweep of distinct counts."""
    counts = tuple(_positive_int(part.strip()) for part in text.split(","))
    if len(set(counts)) != len(counts):
        raise argparse.ArgumentTypeError(f"repeated call count in {text!r}")
    return counts


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not value >= 0:  # NaN too
        raise argparse.ArgumentTypeError("must be a number of seconds, 0 or more")
    return value


def _per_second(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1000:  # NaN too
        raise argparse.ArgumentTypeError("must be a rate per second, 0 to 1000")
    return value


def build_parser() -> argparse.ArgumentParser:
    from importlib.metadata import version

    parser = argparse.ArgumentParser(prog="telephony", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {version('telephony')}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser(
        "serve",
        help="run the service under uvicorn (SIGTERM drains calls, then exits)",
        description="Run the service under uvicorn. Settings come from the environment and "
        "./.env (see .env.example); SIGTERM drains calls, then exits.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,  # --help shows the defaults
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on")
    serve.add_argument(
        "--ws-max-size", type=int, default=64 * 1024, help="largest WebSocket message, bytes"
    )
    serve.add_argument(
        "--workers",
        type=_positive_int,
        default=1,
        metavar="N",
        help="worker processes sharing the port, each its own instance (needs PostgreSQL); "
        "TELEPHONY_MAX_CALLS is per worker",
    )
    serve.add_argument(
        "--internal-port",
        type=int,
        default=None,
        metavar="PORT",
        help="with --workers: worker k's private port (its internal URL, /metrics) is this + k; "
        "None: TELEPHONY_INTERNAL_URL's port, else --port + 1 (default: %(default)s)",
    )
    serve.set_defaults(func=cli_serve.serve)

    config = sub.add_parser("config", help="admin YAML tools")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    check = config_sub.add_parser("check", help="validate a numbers YAML file")
    check.add_argument("path")
    check.set_defaults(func=_config_check)

    db = sub.add_parser("db", help="transcript database tools")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    db_sub.add_parser("upgrade", help="apply migrations (also done on start)").set_defaults(
        func=_db_upgrade
    )

    cli_users.add_commands(sub)
    cli_insights.add_commands(sub)
    cli_qa.add_commands(sub)

    retention = sub.add_parser("retention", help="data retention")
    retention_sub = retention.add_subparsers(dest="retention_command", required=True)
    ret_run = retention_sub.add_parser(
        "run",
        help="delete calls (turns, events, recordings) older than their profile's "
        "retention_days; audited",
    )
    ret_run.add_argument(
        "--dry-run", action="store_true", help="list what would go; delete nothing (audited)"
    )
    ret_run.add_argument(
        "--default-days",
        type=_positive_int,
        default=30,
        help="retention of calls whose profile is no longer in the YAML (default 30)",
    )
    ret_run.set_defaults(func=_retention_run)

    emulator = sub.add_parser(
        "emulator",
        help="run the fake Deepgram server",
        description="The fake Deepgram (Flux /v2/listen, Aura /v1/speak, Voice Agent "
        "/v1/agent/converse, Nova /v1/listen) on one port, and Text Intelligence POST /v1/read "
        "over HTTP on the next (set DEEPGRAM_REST_URL to it). Clients authenticate with "
        "'Authorization: Token KEY', where KEY is $DEEPGRAM_API_KEY, or "
        f"'{EMULATOR_DEFAULT_KEY}' when that is unset.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    emulator.add_argument("--host", default="127.0.0.1", help="address to listen on")
    emulator.add_argument("--port", type=int, default=8765, help="port to listen on")
    emulator.add_argument(
        "--script",
        metavar="TIMELINE.yaml",
        help="what the fake says, as for `telephony call --script`: turns (Flux/Nova), agent "
        "steps, faults; staff: turns for Nova sockets tagged 'staff'",
    )
    emulator.set_defaults(func=_emulator)
    call = sub.add_parser("call", help="an offline call through the app and the fakes")
    call.add_argument("--number", help="the dialled number (default: first of --mode)")
    call.add_argument("--mode", choices=["flux", "agent", "transcribe"], default="flux")
    call.add_argument("--say", help="what the caller says (one scripted turn)")
    call.add_argument("--audio", help="a WAV file the caller streams")
    call.add_argument(
        "--script",
        help="a fake-Deepgram timeline YAML (turns, agent, faults; transcribe mode: turns for "
        "the caller, staff for the person who answers)",
    )
    call.add_argument("--config", default="infra/numbers.example.yaml", help="numbers YAML")
    call.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="KIND@SECONDS",
        help="inject a fault through the fake Deepgram (repeatable): "
        "flux-drop, flux-silent, flux-stuck, flux-error, agent-drop, speak-drop",
    )
    call.add_argument("--json", action="store_true", help="print one JSON object")
    call.set_defaults(func=_call)

    bench = sub.add_parser(
        "bench",
        help="load benchmark: N concurrent calls through the service, then a bare relay",
    )
    bench.add_argument(
        "--calls",
        type=_call_counts,
        default=(50,),
        help="concurrent calls; a comma-separated list (100,200,300) sweeps: a service and a "
        "relay per count, a table and the knee",
    )
    bench.add_argument("--seconds", type=float, default=30.0, help="measurement window")
    bench.add_argument(
        "--mode",
        choices=["flux", "agent", "both"],
        default="flux",
        help="both: a server phase per mode, one relay phase, a report per mode",
    )
    bench.add_argument("--json", metavar="FILE", help="write the JSON report here ('-': stdout)")
    bench.add_argument("--ramp", type=float, help="seconds over which calls start")
    bench.add_argument(
        "--settle",
        type=_seconds,
        default=1.0,
        help="seconds to wait after the warm-up call and after the last call starts",
    )
    bench.add_argument(
        "--churn",
        type=_per_second,
        default=0.0,
        metavar="PER_S",
        help="calls hung up and redialled per second through the window (the live count "
        "stays --calls): call setup, records written and ended calls' garbage in the figures",
    )
    bench.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    bench.add_argument(
        "--workers",
        type=_positive_int,
        default=1,
        help="the service as `telephony serve --workers N`, unpinned; above 1 needs "
        "TELEPHONY_BENCH_DATABASE_URL (a PostgreSQL database the bench may write to)",
    )
    bench.add_argument(
        "--hostile",
        metavar="ATTACKS",
        help="good calls beside one hostile client instead of the relay comparison: "
        "'all' or a comma-separated list of body,replay,pump,bigframes,login",
    )
    bench.set_defaults(func=_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from telephony.settings import env_file_path, load_env_file

    args = build_parser().parse_args(argv)
    load_env_file(env_file_path())  # ./.env, under the real environment
    try:
        return int(args.func(args))
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
