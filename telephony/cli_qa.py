"""`telephony qa flag --since YYYY-MM-DD`: the review queue's flags for calls that ended
before revision 0010 (the writer flags every call it ends since), with the current YAML's
thresholds. Idempotent: a second run changes nothing; audited once per run (`qa.flag`)."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, date, datetime

from telephony.cli_usage import checked_settings, database_errors


def _since(text: str) -> float:
    try:
        day = date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError("must be a date, YYYY-MM-DD (UTC)") from None
    return datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()


def _qa_flag(args: argparse.Namespace) -> int:
    import asyncio

    from telephony.cli_users import _operator
    from telephony.config import ConfigError, load_config
    from telephony.store.engine import make_engine
    from telephony.store.migrate import upgrade
    from telephony.store.review_queue import backfill

    settings = checked_settings()
    try:
        config = load_config(settings.config_path)
    except ConfigError as exc:
        print("\n".join(exc.errors), file=sys.stderr)
        return 1

    async def run() -> tuple[int, int]:
        engine = make_engine(settings.database_url)
        try:
            await upgrade(engine)
            return await backfill(engine, args.since, config.review_for, actor=_operator())
        finally:
            await engine.dispose()

    with database_errors():
        seen, flagged = asyncio.run(run())
    print(f"{seen} ended calls looked at; {flagged} flagged for review")
    return 0


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The `qa` subcommands, on the main parser's subparsers."""
    qa = sub.add_parser("qa", help="call review (QA) tools")
    qa_sub = qa.add_subparsers(dest="qa_command", required=True)
    flag = qa_sub.add_parser(
        "flag",
        help="compute the review queue's flags for ended calls started since a day (UTC), "
        "e.g. calls from before the QA upgrade; audited",
    )
    flag.add_argument("--since", type=_since, required=True, metavar="YYYY-MM-DD")
    flag.set_defaults(func=_qa_flag)
