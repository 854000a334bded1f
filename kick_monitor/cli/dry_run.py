"""`kick-monitor --dry-run`: check config, database and schema; show what `run` would do.

Nothing is changed: no migration, no write, and no embedded database is created (an
existing one is started for the check and stopped again). The checks run before anything
is printed, so a failure is exactly one error line on stderr and exit code 2.
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import urlsplit

from .. import __version__
from ..config import Settings
from ..database import DatabaseUnavailable, describe_url
from ..embedded_pg import EmbeddedPostgres, EmbeddedPostgresError
from ..migrations import SchemaError, current_version
from ..sharding import (
    check_shard_selection,
    plan_shards,
    shard_count_for,
    subscriptions_per_streamer,
    unresolved,
)
from ..streamers import Streamer, list_streamers
from .database_commands import open_database
from .errors import EXIT_OK, EXIT_USAGE, CliError
from .render import clean_cell

SHOWN_PER_SHARD = 5
SHOWN_UNRESOLVED = 20
SHOWN_SOURCE_ROWS = 5


def dry_run(settings: Settings) -> int:
    where, version, streamers = check_database(settings)
    lines = [f"kick-monitor {__version__} dry run: configuration, database and shard plan (nothing changed)"]
    lines += ["", "effective configuration (secrets masked):"]
    lines += [f"  {key}={value}" for key, value in settings.effective().items()]
    lines += ["", f"database: {where}: reachable, schema version {version} (current)"]
    lines += password_notes(settings)
    lines += check_integration(settings)
    lines += ["", *describe_plan(settings, streamers)]
    print("\n".join(lines))
    return EXIT_OK


def check_database(settings: Settings) -> tuple[str, int, list[Streamer]]:
    """Where the database is, its schema version and the streamers; CliError (exit 2) if not usable."""
    if settings.database_url is None:
        pgdata = EmbeddedPostgres(settings.data_dir).pgdata
        if not (pgdata / "PG_VERSION").exists():
            raise CliError(
                f"no embedded database in {pgdata} yet; run `kick-monitor db migrate` to create it",
                EXIT_USAGE,
            )
        where = f"embedded PostgreSQL in {pgdata}"
    else:
        where = describe_url(settings.database_url.get_secret_value())
    try:
        with open_database(settings) as conn:
            version = current_version(conn)
            streamers = list_streamers(conn)
    except (DatabaseUnavailable, SchemaError, EmbeddedPostgresError) as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    return where, version, streamers


def check_integration(settings: Settings) -> list[str]:
    """Run the streamer source (first rows, count) and dry-run the status mirror; CliError if either fails."""
    from ..source_sync import SourceError, fetch_source, validate_rows
    from ..status_mirror import MirrorError, check_statement

    if settings.streamers_source is None and settings.status_mirror is None:
        return []
    lines: list[str] = []
    try:
        with open_database(settings) as conn:
            if settings.streamers_source is not None:
                columns, rows = fetch_source(conn, settings.streamers_source)
                validate_rows(columns, rows)
                shown = f"{len(rows)} rows, all valid; first rows:"
                lines += ["", f"streamer source (KICK_MONITOR_STREAMERS_SOURCE): {shown}"]
                lines.append("  " + " | ".join(columns))
                lines += ["  " + " | ".join(clean_cell(str(v)) for v in row) for row in rows[:SHOWN_SOURCE_ROWS]]
            if settings.status_mirror is not None:
                check_statement(conn, settings.status_mirror)
                lines += ["", "status mirror (KICK_MONITOR_STATUS_MIRROR): dry run executed and rolled back: ok"]
    except (SourceError, MirrorError, DatabaseUnavailable) as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    return lines


def password_notes(settings: Settings) -> list[str]:
    """Say so when the database password sits in the URL: it travels and shows wherever the URL does."""
    if settings.database_url is None or not url_password(settings.database_url.get_secret_value()):
        return []
    if settings.database_password is not None:
        return ["  note: KICK_MONITOR_DATABASE_PASSWORD is used; the password inside the URL is ignored: remove it"]
    return [
        "  note: the password is inside KICK_MONITOR_DATABASE_URL, the weaker way: put it in the credential"
        " database_password, KICK_MONITOR_DATABASE_PASSWORD_FILE or a libpq passfile (docs/deployment.md)"
    ]


def url_password(url: str) -> bool:
    """True if `url` carries a password (a malformed URL is reported elsewhere)."""
    try:
        return bool(urlsplit(url).password)
    except ValueError:
        return False


def describe_plan(settings: Settings, streamers: Sequence[Streamer]) -> list[str]:
    """The shard plan as text: shard count and why, streamers per shard, the unresolved ones."""
    waiting = unresolved(streamers)
    monitored = [s for s in streamers if s.is_monitored]
    resolved = [s for s in monitored if s.is_resolved]  # with a channel id: on Pusher
    count = shard_count_for(settings, len(resolved))
    try:
        check_shard_selection(settings, count)
    except ValueError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    if settings.shard_count:
        why = "KICK_MONITOR_SHARD_COUNT"
    else:
        channels = len(resolved) * subscriptions_per_streamer(settings)
        why = f"auto: {channels} Pusher channels, at most {settings.channels_per_connection} per connection"
    lines = [
        f"streamers: {len(streamers)} ({len(resolved)} resolved, {len(waiting)} unresolved)"
        + (f"; {len(monitored) - len(resolved)} monitored without Pusher (no channel id yet)"
           if len(monitored) > len(resolved) else ""),
        f"shard plan: {count} shard{'s' if count != 1 else ''} ({why})",
    ]
    for shard, members in plan_shards(monitored, count).items():
        names = ", ".join(s.username for s in members[:SHOWN_PER_SHARD])
        more = f", … +{len(members) - SHOWN_PER_SHARD}" if len(members) > SHOWN_PER_SHARD else ""
        listed = f" ({names}{more})" if members else ""
        marker = "  <- this process" if settings.shard_index == shard else ""
        lines.append(f"  shard {shard}: {len(members)} streamer{'s' if len(members) != 1 else ''}{listed}{marker}")
    if waiting:
        lines.append(f"  unresolved (monitored once their user id or channel id is known): {len(waiting)}")
        lines += [f"    {s.username}: {clean_cell(s.unresolved_reason)}" for s in waiting[:SHOWN_UNRESOLVED]]
        if len(waiting) > SHOWN_UNRESOLVED:
            lines.append(f"    … and {len(waiting) - SHOWN_UNRESOLVED} more (`kick-monitor status` lists them)")
    scope = "all shards" if settings.shard_index is None else f"shard {settings.shard_index} of {count}"
    lines.append(f"`kick-monitor run` would run: {scope}")
    return lines
