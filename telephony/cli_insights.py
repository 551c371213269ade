"""`telephony insights run --since YYYY-MM-DD [--profile P] [--force]`: post-call insights for
ended calls from a shell, through the same client and store code as the app's worker.

Without `--force` it runs the calls that have no `done` insights (never analysed, pending,
failed, or left `off` by a profile that has since switched insights on); with it, every ended
call since the date. Only profiles whose `insights:` ask for something are run: nothing of a
profile with insights off is ever sent.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from datetime import UTC, datetime


def _since(value: str) -> float:
    try:
        day = datetime.strptime(value, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date as YYYY-MM-DD: {value!r}") from None
    return day.timestamp()


def _insights_run(args: argparse.Namespace) -> int:
    import asyncio

    from telephony.cli_usage import checked_settings, database_errors
    from telephony.config import ConfigError, load_config
    from telephony.deepgram.read import ReadClient
    from telephony.insights.analyze import analyze_call
    from telephony.store.engine import make_engine
    from telephony.store.insights import calls_to_run
    from telephony.store.migrate import upgrade

    settings = checked_settings()
    try:
        profiles = load_config(settings.config_path).profiles
    except ConfigError as exc:
        print("\n".join(exc.errors), file=sys.stderr)
        return 1
    wanted = {name: p for name, p in profiles.items() if p.insights.enabled}
    if args.profile:
        if args.profile not in profiles:
            print(f"error: no profile {args.profile!r} in the YAML", file=sys.stderr)
            return 1
        if args.profile not in wanted:
            print(f"error: profile {args.profile!r} has insights off", file=sys.stderr)
            return 1
        wanted = {args.profile: wanted[args.profile]}

    async def run() -> Counter[str]:
        engine = make_engine(settings.database_url)
        client = ReadClient(
            settings.deepgram_rest_base,
            settings.deepgram_api_key.get_secret_value(),
            timeout_s=settings.insights_timeout_s,
        )
        outcome: Counter[str] = Counter()
        try:
            await upgrade(engine)
            sids = await calls_to_run(engine, args.since, profiles=list(wanted), force=args.force)
            for sid in sids:
                status = await analyze_call(engine, client, wanted, sid)
                outcome[status or "skipped"] += 1
                print(f"{sid} {status or 'skipped'}", flush=True)
        finally:
            await client.aclose()
            await engine.dispose()
        return outcome

    with database_errors():
        outcome = asyncio.run(run())
    total = sum(outcome.values())
    parts = ", ".join(f"{n} {status}" for status, n in sorted(outcome.items()))
    print(f"{total} calls" + (f": {parts}" if parts else ""))
    return 1 if outcome.get("failed") else 0


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The `insights` subcommands, on the main parser's subparsers."""
    insights_cmd = sub.add_parser("insights", help="post-call insights (Deepgram /v1/read)")
    insights_sub = insights_cmd.add_subparsers(dest="insights_command", required=True)
    run = insights_sub.add_parser(
        "run",
        help="analyse ended calls since a date that have no insights yet (failed, pending); "
        "exit 1 if any fails",
    )
    run.add_argument("--since", type=_since, required=True, help="YYYY-MM-DD (UTC), inclusive")
    run.add_argument("--profile", default="", help="only this profile's calls")
    run.add_argument(
        "--force", action="store_true", help="also calls that already have insights (again)"
    )
    run.set_defaults(func=_insights_run)
