"""`kick-monitor streams [SLUG] [--since DATE] [--json]`: one line per broadcast."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime

from ..broadcasts import list_broadcasts
from ..config import Settings
from ..streamers import StreamerError, find_streamer, validate_slug
from .database_commands import open_database
from .errors import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, CliError
from .render import clean_cell, format_duration, render_table


def parse_since(text: str | None) -> datetime | None:
    """`2026-11-30` or an ISO 8601 time (naive = UTC); CliError naming the bad value."""
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise CliError(f"--since {clean_cell(text, 40)!r} is not a date (e.g. 2026-11-30 or 2026-11-30T18:00)",
                       EXIT_USAGE) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def streams_command(args: argparse.Namespace, settings: Settings) -> int:
    """Broadcasts newest first: start, end, duration, title."""
    since = parse_since(args.since)
    slug = None
    if args.slug is not None:
        try:
            slug = validate_slug(args.slug)
        except StreamerError as exc:
            raise CliError(str(exc), EXIT_USAGE) from None
    with open_database(settings) as conn:
        if slug is not None and find_streamer(conn, slug) is None:
            raise CliError(f"no streamer {slug!r}; `kick-monitor streamers list` shows them", EXIT_FAILURE)
        found = list_broadcasts(conn, slug=slug, since=since, limit=args.limit or None)
    if args.json:
        print(json.dumps({"broadcasts": [b.as_json() for b in found]}, indent=2))
        return EXIT_OK
    if not found:
        print("no broadcasts recorded" + (f" for {slug}" if slug else "") + (" in that time" if since else ""))
        return EXIT_OK
    rows = []
    for b in found:
        ended = "live" if b.ended_at is None else _when(b.ended_at) + (" (inferred)" if b.end_inferred else "")
        rows.append([b.username, _when(b.started_at), ended, format_duration(b.seconds),
                     clean_cell(b.last_title or b.start_title)])
    print("\n".join(render_table(["SLUG", "STARTED", "ENDED", "DURATION", "TITLE"], rows)))
    if any(b.end_inferred for b in found):
        print("\n(inferred): the end was not seen (all connections down); the next broadcast's start implies it")
    return EXIT_OK


def _when(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
