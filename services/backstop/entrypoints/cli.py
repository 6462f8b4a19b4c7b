"""The `backstop` command line. Each subcommand parses its arguments and calls one adapter or use case."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from backstop import __version__


def _cmd_db_migrate(args: argparse.Namespace) -> int:
    import asyncio

    from backstop.adapters.postgres.migrations import migrate
    from backstop.settings import Settings

    dsn = args.dsn or Settings().pg_dsn
    applied = asyncio.run(migrate(dsn))
    for version in applied:
        print(f"applied {version}")
    print(f"schema up to date ({len(applied)} migration(s) applied now)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="backstop",
        description="Event-sourced insurance-fund and ADL ledger for perpetual-futures venues.",
    )
    parser.add_argument("--version", action="version", version=f"backstop {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    db = commands.add_parser("db", help="PostgreSQL schema management")
    db_commands = db.add_subparsers(dest="db_command", metavar="DB_COMMAND", required=True)
    migrate = db_commands.add_parser("migrate", help="apply pending schema migrations (idempotent)")
    migrate.add_argument("--dsn", help="PostgreSQL DSN (default: $BACKSTOP_PG_DSN)")
    migrate.set_defaults(handler=_cmd_db_migrate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 0
    result: int = handler(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
