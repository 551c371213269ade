"""`telephony users add|remove|role|password|disable|enable`: staff UI accounts, from a shell.

Every change is written to the audit log (as `cli:<OS user>`) in the same transaction, and a
removal, role change or new password ends the account's sessions (telephony/store/users.py).
Passwords come from a prompt or stdin, never the command line.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

# telephony/store/users.py ROLES, spelled out so building the parser imports no database code
# (tests/test_qa_roles.py checks they agree).
ROLE_CHOICES = ("staff", "supervisor", "admin")


def _read_password(name: str) -> str | None:
    """From a prompt on a terminal (twice); from stdin otherwise; never the command line."""
    import getpass

    if sys.stdin.isatty():
        password = getpass.getpass(f"password for {name}: ")
        if getpass.getpass("again: ") != password:
            print("passwords differ", file=sys.stderr)
            return None
        return password
    return sys.stdin.readline().rstrip("\n")


def _operator() -> str:
    """Who ran the command, for the audit log: `cli:<OS user>`."""
    import getpass

    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # a container user with no passwd entry and no $USER
        return "cli"


def _on_users(change: Callable[[AsyncEngine], Awaitable[str]]) -> int:
    """Run one account change against the database; print its result or its error."""
    import asyncio

    from telephony.cli_usage import checked_settings, database_errors
    from telephony.store.engine import make_engine
    from telephony.store.migrate import upgrade
    from telephony.store.users import UserError

    settings = checked_settings()  # invalid: one line, exit 2 (telephony/cli.py main)

    async def run() -> str:
        engine = make_engine(settings.database_url)
        try:
            await upgrade(engine)
            return await change(engine)
        finally:
            await engine.dispose()

    try:
        with database_errors():
            print(asyncio.run(run()))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _users_add(args: argparse.Namespace) -> int:
    from telephony.store.users import add_user

    password = _read_password(args.name)
    if password is None:
        return 1

    async def add(engine: AsyncEngine) -> str:
        await add_user(engine, args.name, args.role, password, actor=_operator())
        return f"user {args.name} ({args.role}) added"

    return _on_users(add)


def _users_remove(args: argparse.Namespace) -> int:
    from telephony.store.users import remove_user

    async def remove(engine: AsyncEngine) -> str:
        await remove_user(engine, args.name, actor=_operator())
        return f"user {args.name} removed; their sessions have ended"

    return _on_users(remove)


def _users_role(args: argparse.Namespace) -> int:
    from telephony.store.users import set_role

    async def role(engine: AsyncEngine) -> str:
        if not await set_role(engine, args.name, args.role, actor=_operator()):
            return f"user {args.name} is already {args.role}"
        return f"user {args.name} is now {args.role}; their sessions have ended"

    return _on_users(role)


def _users_password(args: argparse.Namespace) -> int:
    from telephony.store.users import set_password

    password = _read_password(args.name)
    if password is None:
        return 1

    async def reset(engine: AsyncEngine) -> str:
        await set_password(engine, args.name, password, actor=_operator())
        return f"password of {args.name} changed; their sessions have ended"

    return _on_users(reset)


def _users_disabled(args: argparse.Namespace) -> int:
    from telephony.store.users import set_disabled

    disable = args.users_command == "disable"

    async def switch(engine: AsyncEngine) -> str:
        if not await set_disabled(engine, args.name, disable, actor=_operator()):
            return f"user {args.name} is already {args.users_command}d"
        if disable:
            return f"user {args.name} disabled; their sessions have ended"
        return f"user {args.name} enabled"

    return _on_users(switch)


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The `users` subcommands, on the main parser's subparsers."""
    users_cmd = sub.add_parser("users", help="staff UI accounts")
    users_sub = users_cmd.add_subparsers(dest="users_command", required=True)
    add = users_sub.add_parser("add", help="add a user (password from a prompt or stdin; audited)")
    add.add_argument("name")
    add.add_argument("--role", choices=ROLE_CHOICES, default="staff")
    add.set_defaults(func=_users_add)
    remove = users_sub.add_parser("remove", help="delete a user; their sessions end (audited)")
    remove.add_argument("name")
    remove.set_defaults(func=_users_remove)
    role = users_sub.add_parser("role", help="change a user's role; their sessions end (audited)")
    role.add_argument("name")
    role.add_argument("role", choices=ROLE_CHOICES)
    role.set_defaults(func=_users_role)
    password = users_sub.add_parser(
        "password",
        help="set a new password (from a prompt or stdin); their sessions end (audited)",
    )
    password.add_argument("name")
    password.set_defaults(func=_users_password)
    for verb, what in (("disable", "no login, their sessions end"), ("enable", "log in again")):
        cmd = users_sub.add_parser(verb, help=f"{verb} a user: {what} (audited)")
        cmd.add_argument("name")
        cmd.set_defaults(func=_users_disabled)
