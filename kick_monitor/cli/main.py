"""The `kick-monitor` command: parse, load settings, dispatch, and turn every failure into one line.

Exit codes: 0 ok, 1 runtime failure (database down, a conflict, bad lines in an import),
2 usage or configuration error (also: no database URL and no embedded PostgreSQL installed).
Errors are one line on stderr, `kick-monitor: error: ...`, with every known secret masked;
a traceback is logged at DEBUG level only.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any, NoReturn

import psycopg2

from .. import __version__
from ..config import SECRET_FIELDS, ConfigError, Settings, env_key, load_settings
from ..credentials import SecretSources, scrub_environment
from ..database import DatabaseUnavailable, require_database
from ..embedded_pg import EmbeddedPostgresError, EmbeddedPostgresMissing
from ..logsetup import configure_logging, redact, register_secret, register_url_secrets
from ..migrations import SchemaError
from ..streamers import StreamerError
from .broadcast_commands import streams_command
from .cluster_commands import cluster_status_command
from .database_commands import migrate_command
from .dry_run import dry_run
from .errors import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, CliError
from .hooks import describe, load_command, require, tool_commands
from .notify_commands import add_notify_commands  # notifier (issue 19)
from .options import COMMON, add_settings_flags, given_settings
from .streamer_commands import add_command, import_command, list_command, remove_command, status_command
from .webhook_commands import add_webhook_commands  # issue 16

log = logging.getLogger(__name__)
Handler = Callable[[argparse.Namespace, Settings], int]
SERVICE_COMMANDS = frozenset({"run", "demo", "bench"})

DESCRIPTION = "Watches Kick.com streamers and keeps their online/offline status in PostgreSQL."
EPILOG = """\
settings come from flags > $KICK_MONITOR_* > --config FILE > defaults.
exit codes: 0 ok, 1 runtime failure, 2 usage or configuration error.
`kick-monitor COMMAND --help` describes each command."""


class CliParser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line (CliError, exit 2) and never abbreviates."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        self.tool_help: dict[str, tuple[EntryPoint, argparse.Action]] = {}

    def format_help(self) -> str:
        # Tool commands are imported for their one-line help only when the help is shown.
        for entry, action in self.tool_help.values():
            action.help = describe(entry)
        return super().format_help()

    def error(self, message: str) -> NoReturn:
        where = self.prog.removeprefix("kick-monitor").strip()
        prefix = f"{where}: " if where else ""
        raise CliError(f"{prefix}{message} (see `{self.prog} --help`)", EXIT_USAGE)


def build_parser() -> CliParser:
    parser = CliParser(
        prog="kick-monitor",
        usage="kick-monitor [-h] [--version] [--dry-run] [--config FILE] [--SETTING VALUE ...] COMMAND ...",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"kick-monitor {__version__}")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="check config, database and schema; print the effective config and shard plan; change nothing",
    )
    add_settings_flags(parser)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")

    run = commands.add_parser(
        "run",
        help="run the monitor (all shards, or --shard-index I --shard-count N)",
        usage="kick-monitor run [-h] [--dry-run] [--config FILE] [--SETTING VALUE ...]",
    )
    run.add_argument("--dry-run", action="store_true", default=argparse.SUPPRESS, help="check and plan only")
    add_settings_flags(run)
    run.set_defaults(handler=run_command)

    db = commands.add_parser("db", help="database schema").add_subparsers(
        dest="db_command", metavar="COMMAND", required=True
    )
    migrate = db.add_parser("migrate", help="apply pending schema migrations (idempotent, safe while running)")
    _leaf(migrate, migrate_command)

    _add_streamer_commands(commands.add_parser("streamers", help="add, remove, list or import streamers"))

    status = commands.add_parser("status", help="every streamer's status, with counts")
    status.add_argument("--json", action="store_true", help="print JSON: {streamers: [...], counts: {...}}")
    _leaf(status, status_command)

    streams = commands.add_parser("streams", help="broadcasts: start, end, duration, title (newest first)")
    streams.add_argument("slug", metavar="SLUG", nargs="?", help="only this streamer's broadcasts")
    streams.add_argument("--since", metavar="DATE", help="only broadcasts going on at or after DATE (ISO 8601, UTC)")
    streams.add_argument("--limit", type=int, default=100, metavar="N", help="at most N broadcasts (0: all)")
    streams.add_argument("--json", action="store_true", help="print JSON: {broadcasts: [...]}")
    _leaf(streams, streams_command)

    add_webhook_commands(commands, _leaf)  # issue 16: `webhooks sync|status`
    # notifier (issue 19)
    add_notify_commands(commands.add_parser("notify", help="go-live notifications: Discord, Slack, JSON webhooks"),
                        _leaf)
    # --- issue 17 (cluster) ---
    cluster = commands.add_parser("cluster", help="nodes, shard leases and duties of the deployment").add_subparsers(
        dest="cluster_command", metavar="COMMAND", required=True
    )
    cluster_status = cluster.add_parser("status", help="nodes, shards (owner, epoch, streamers), duties, leases")
    cluster_status.add_argument("--json", action="store_true", help="print JSON: {plan, nodes, shards, duties, ...}")
    _leaf(cluster_status, cluster_status_command)
    # --- end issue 17 ---

    for name, entry in tool_commands().items():  # parsed by the tool's own parser, imported only when used
        if name in commands.choices:
            continue  # a tool cannot take over a command of the product
        commands.add_parser(name, help=f"see `kick-monitor {name} --help`", add_help=False).set_defaults(hook=entry)
        parser.tool_help[name] = (entry, commands._choices_actions[-1])
    return parser


def _add_streamer_commands(streamers: argparse.ArgumentParser) -> None:
    commands = streamers.add_subparsers(dest="streamers_command", metavar="COMMAND", required=True)
    add = commands.add_parser(
        "add", help="add a streamer (without --channel-id it is unresolved until the service looks it up)"
    )
    add.add_argument("slug", metavar="SLUG", help="Kick slug: letters, digits, _ and -, 1-64 characters")
    add.add_argument("--channel-id", metavar="N", help="Kick channel id (positive integer)")
    add.add_argument("--user-id", metavar="N", help="Kick user id (positive integer)")
    add.add_argument("--chatroom-id", metavar="N", help="Kick chatroom id (positive integer)")
    _leaf(add, add_command)

    remove = commands.add_parser("remove", help="remove a streamer (its status history is kept)")
    remove.add_argument("slug", metavar="SLUG")
    _leaf(remove, remove_command)

    listing = commands.add_parser("list", help="list streamers and their ids")
    listing.add_argument("--json", action="store_true", help="print a JSON array")
    _leaf(listing, list_command)

    importing = commands.add_parser(
        "import",
        help="import streamers from a file",
        description="One slug per line, or CSV lines slug,channel_id,user_id,chatroom_id (ids optional, "
        "an optional header line, # starts a comment); a spreadsheet's CSV export (byte-order mark, quoted "
        "cells, CRLF) reads as it is. Bad lines are reported with their numbers and "
        "skipped; good ones are kept. Slugs already present with the same ids are left as they are. "
        "Exit 0 if every line was good, 1 if some were bad.",
    )
    importing.add_argument("file", metavar="FILE", help="the file to read; - reads stdin")
    _leaf(importing, import_command)


def _leaf(parser: argparse.ArgumentParser, handler: Handler) -> None:
    add_settings_flags(parser, COMMON)
    parser.set_defaults(handler=handler)


def run_command(args: argparse.Namespace, settings: Settings) -> int:
    """`kick-monitor run`: hand over to the coordinator; SIGHUP re-reads flags, environment, config file,
    secret files and credentials."""
    from workers.coordinator import run_service  # the process roles, imported only by the command that runs them

    require_database(settings)  # no URL and no `embedded` extra: one line and exit 2, before any fork
    scrub_environment()  # secrets were captured in dispatch(); no process of the tree inherits them
    return int(run_service(settings, lambda: load(args)))


def load(args: argparse.Namespace) -> Settings:
    """Settings from the given flags, the environment and the config file (flag or $KICK_MONITOR_CONFIG)."""
    config: Path | None = getattr(args, "config", None)
    if config is None and os.environ.get("KICK_MONITOR_CONFIG"):
        config = Path(os.environ["KICK_MONITOR_CONFIG"])
    sources: SecretSources | None = getattr(args, "secret_sources", None)
    return load_settings(cli=given_settings(args), environ=os.environ, config_file=config, sources=sources)


def log_level(settings: Settings, command: str | None) -> str:
    """Short commands log warnings only, unless a level was configured; services log at theirs."""
    if command in SERVICE_COMMANDS or "log_level" in settings.model_fields_set:
        return settings.log_level
    return "WARNING"


def dispatch(argv: Sequence[str]) -> int:
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    command = args.command
    if args.dry_run and command not in (None, "run"):
        parser.error("--dry-run goes with `run` or on its own")
    if getattr(args, "hook", None) is not None:
        return run_hook(args.hook, args, extras)
    if extras:
        parser.error(f"unrecognized arguments: {' '.join(extras)}")
    if command is None and not args.dry_run:
        parser.error("no command given")
    args.secret_sources = SecretSources.capture(os.environ)  # once: `run` scrubs the environment
    settings = load(args)
    configure_logging(settings, log_level(settings, command), role="cli")
    if args.dry_run:
        return dry_run(settings)
    handler: Handler = args.handler
    return handler(args, settings)


def run_hook(entry: EntryPoint, args: argparse.Namespace, extras: list[str]) -> int:
    """Import the tool command, let it add its arguments, parse the rest and run it."""
    name = entry.name
    args.secret_sources = SecretSources.capture(os.environ)
    command = load_command(entry)
    add_arguments = require(command, "add_arguments", name)
    run = require(command, "run", name)
    takes_settings = bool(getattr(command, "TAKES_SETTINGS", False))
    parser = CliParser(prog=f"kick-monitor {name}", description=getattr(command, "HELP", None))
    if takes_settings:
        add_settings_flags(parser)
    add_arguments(parser)
    own = parser.parse_args(extras)
    if not takes_settings:
        return int(run(own))
    settings = load(argparse.Namespace(**{**vars(args), **vars(own)}))
    configure_logging(settings, log_level(settings, name), role=name)
    return int(run(own, settings))


def report(message: str, code: int) -> int:
    """Print `kick-monitor: error: <first line>` with secrets masked; return `code`."""
    lines = str(message).strip().splitlines() or ["unknown error"]
    print(f"kick-monitor: error: {redact(' '.join(lines[0].split()))}", file=sys.stderr, flush=True)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """The console entry point; returns the exit code."""
    configure_logging("auto", "WARNING", role="cli")
    for name in sorted(SECRET_FIELDS - {"database_url"}):  # before anything can echo them (files: once read)
        register_secret(os.environ.get(env_key(name)))
    register_url_secrets(os.environ.get(env_key("database_url")))  # of a URL, only its password
    try:
        return dispatch(sys.argv[1:] if argv is None else list(argv))
    except SystemExit as exc:  # --help, --version, or a command that called sys.exit
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or EXIT_OK
        return report(str(exc.code), EXIT_FAILURE)
    except CliError as exc:
        return report(str(exc), exc.code)
    except (ConfigError, EmbeddedPostgresMissing) as exc:
        return report(str(exc), EXIT_USAGE)
    except (DatabaseUnavailable, SchemaError, EmbeddedPostgresError, StreamerError) as exc:
        return report(str(exc), EXIT_FAILURE)
    except psycopg2.Error as exc:
        log.debug("database error", exc_info=True)
        return report(f"database error: {exc}", EXIT_FAILURE)
    except BrokenPipeError:  # `kick-monitor status | head`: the reader left; not an error worth a line
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return report("interrupted", EXIT_INTERRUPTED)
    except Exception as exc:
        log.debug("unexpected error", exc_info=True)
        return report(
            f"unexpected {type(exc).__name__}: {exc} (KICK_MONITOR_LOG_LEVEL=DEBUG shows the traceback)",
            EXIT_FAILURE,
        )


if __name__ == "__main__":
    raise SystemExit(main())
