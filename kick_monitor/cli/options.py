"""Command-line flags for the settings, generated from the `Settings` model so they cannot drift.

Every field gets `--field-name` (except the client secret and the database password: a secret
on a command line is visible to every user through `ps`; they come from a credential, a
`_FILE`, the environment or the config file).
Flags default to `argparse.SUPPRESS`, so a flag the user did not give is absent from the
namespace and `load_settings` sees only what was actually given — and the same flag can be
accepted both before and after the subcommand without one position overriding the other.
"""

from __future__ import annotations

import argparse
import types
import typing
from pathlib import Path
from typing import Any, get_args, get_origin

from ..config import Settings
from .errors import EXIT_USAGE, CliError

DEST_PREFIX = "setting__"
NOT_FLAGS = frozenset({"client_secret", "database_password"})
# The flags every short command (db, streamers, status) takes; `run` and friends take them all.
COMMON = ("database_url", "data_dir", "log_format", "log_level")


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def _metavar(name: str, annotation: Any) -> str:
    for suffix, metavar in (("_url", "URL"), ("_host", "HOST"), ("_id", "ID")):
        if name.endswith(suffix):
            return metavar
    if get_origin(annotation) in (typing.Union, types.UnionType):
        annotation = next(arg for arg in get_args(annotation) if arg is not type(None))
    if get_origin(annotation) is typing.Literal:
        return "{" + ",".join(str(choice) for choice in get_args(annotation)) + "}"
    if annotation is Path:
        return "DIR"
    if annotation in (int, float):
        return "N"
    return "VALUE"


def add_config_flag(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE",
        type=Path,
        default=argparse.SUPPRESS,
        help="KEY=VALUE settings file (systemd EnvironmentFile format); also $KICK_MONITOR_CONFIG",
    )


class RefuseSecretFlag(argparse.Action):
    """A secret on a command line would show in `ps`; say where it belongs instead."""

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        field = self.dest
        key = "KICK_MONITOR_" + field.upper()
        raise CliError(
            f"{flag_name(field)} is not accepted on the command line (other users can read it in ps); "
            f"use the systemd credential {field}, {key}_FILE, {key} or the --config file",
            EXIT_USAGE,
        )


def add_settings_flags(parser: argparse.ArgumentParser, fields: tuple[str, ...] | None = None) -> None:
    """Add `--config` and a flag per setting (all of them, or just `fields`) in one group."""
    group = parser.add_argument_group("settings (override $KICK_MONITOR_* and --config)")
    add_config_flag(group)
    for name in sorted(NOT_FLAGS):
        group.add_argument(flag_name(name), dest=name, nargs="?", action=RefuseSecretFlag, help=argparse.SUPPRESS)
    for name, info in Settings.model_fields.items():
        if name in NOT_FLAGS or (fields is not None and name not in fields):
            continue
        group.add_argument(
            flag_name(name),
            dest=DEST_PREFIX + name,
            metavar=_metavar(name, info.annotation),
            default=argparse.SUPPRESS,
            help=(info.description or "").replace("%", "%%"),  # argparse %-formats help text
        )


def given_settings(args: argparse.Namespace) -> dict[str, str]:
    """The settings flags the user gave, keyed by field name (for `load_settings(cli=...)`)."""
    return {key.removeprefix(DEST_PREFIX): value for key, value in vars(args).items() if key.startswith(DEST_PREFIX)}
