"""`kick-monitor streamers add|remove|list|import` and `kick-monitor status`."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from ..config import Settings
from ..streamers import (
    ImportReport,
    NewStreamer,
    Streamer,
    StreamerError,
    add_streamer,
    import_streamers,
    iso_utc,
    list_streamers,
    remove_streamer,
    status_summary,
    validate_slug,
)
from .database_commands import open_database
from .errors import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, CliError
from .render import clean_cell, format_age, format_duration, render_table


def refuse_with_source(settings: Settings, verb: str) -> None:
    """While a streamer source is configured it is the list: changing ours by hand would be undone."""
    if settings.streamers_source is not None:
        raise CliError(
            f"cannot {verb} streamers: the list comes from KICK_MONITOR_STREAMERS_SOURCE"
            " (change the application's table, or unset the source)",
            EXIT_USAGE,
        )


def add_command(args: argparse.Namespace, settings: Settings) -> int:
    refuse_with_source(settings, "add")
    try:  # validate before touching (or starting) a database
        new = NewStreamer.build(args.slug, args.channel_id, args.user_id, args.chatroom_id)
    except StreamerError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    with open_database(settings) as conn:
        added = add_streamer(
            conn,
            new.username,
            channel_id=new.channel_id,
            user_id=new.kick_user_id,
            chatroom_id=new.chatroom_id,
        )
    if added.is_resolved:
        print(f"added {added.username} (channel id {added.channel_id})")
    else:
        print(f"added {added.username} (unresolved: {added.unresolved_reason}; the running service looks it up)")
    return EXIT_OK


def remove_command(args: argparse.Namespace, settings: Settings) -> int:
    refuse_with_source(settings, "remove")
    try:
        username = validate_slug(args.slug)
    except StreamerError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    with open_database(settings) as conn:
        if not remove_streamer(conn, username):
            raise CliError(f"no streamer named {username!r}")
    print(f"removed {username}")
    return EXIT_OK


def list_command(args: argparse.Namespace, settings: Settings) -> int:
    with open_database(settings) as conn:
        streamers = list_streamers(conn)
    if args.json:
        print(json.dumps([streamer.as_json() for streamer in streamers], indent=2))
        return EXIT_OK
    if not streamers:
        print("no streamers yet; add one with `kick-monitor streamers add SLUG`")
        return EXIT_OK
    rows = [
        [
            s.username,
            _id_text(s.channel_id),
            _id_text(s.kick_user_id),
            _id_text(s.chatroom_id),
            s.status if s.is_resolved else f"unresolved ({clean_cell(s.unresolved_reason)})",
        ]
        for s in streamers
    ]
    print("\n".join(render_table(["SLUG", "CHANNEL ID", "USER ID", "CHATROOM ID", "STATUS"], rows)))
    return EXIT_OK


def _id_text(value: int | None) -> str:
    return "-" if value is None else str(value)


@contextlib.contextmanager
def _open_lines(name: str) -> Iterator[TextIO]:
    """The import file (`-` = stdin); undecodable bytes become U+FFFD and fail on their own line.

    `utf-8-sig` drops the byte-order mark spreadsheets (Excel, LibreOffice) put first; without it
    the header's first cell would be `\ufeffslug`.
    """
    if name == "-":
        yield sys.stdin
        return
    try:
        handle = Path(name).open(encoding="utf-8-sig", errors="replace", newline="")  # noqa: SIM115
    except OSError as exc:
        raise CliError(f"cannot read {name}: {exc.strerror or exc}", EXIT_USAGE) from None
    with handle:
        yield handle


def import_command(args: argparse.Namespace, settings: Settings) -> int:
    """Import a slug list or CSV; exit 0 if every line was good, 1 if some were reported bad."""
    refuse_with_source(settings, "import")
    name = str(args.file)
    shown = "<stdin>" if name == "-" else name
    progress = _show_progress if sys.stderr.isatty() else None
    with _open_lines(name) as lines, open_database(settings) as conn:
        report = import_streamers(conn, lines, progress=progress)
    if progress is not None:
        print(file=sys.stderr)
    for bad in report.bad_lines:
        print(f"{shown}:{bad.number}: {bad.reason}", file=sys.stderr)
    summary = f"imported {shown}: {report.added} added, {report.already_present} already present"
    if report.bad_lines:
        summary += f", {len(report.bad_lines)} bad line{'s' if len(report.bad_lines) != 1 else ''} not imported"
    print(summary)
    return EXIT_FAILURE if report.bad_lines else EXIT_OK


def _show_progress(report: ImportReport) -> None:
    print(
        f"\rimporting: {report.lines} lines read, {report.added} added, {len(report.bad_lines)} bad",
        end="",
        file=sys.stderr,
        flush=True,
    )


def status_command(args: argparse.Namespace, settings: Settings) -> int:
    """The status table (or JSON) with the counts under it."""
    with open_database(settings) as conn:
        summary = status_summary(conn)
    if args.json:
        document = {"streamers": [_status_json(s, settings) for s in summary.streamers], "counts": summary.counts()}
        print(json.dumps(document, indent=2))
        return EXIT_OK
    if summary.streamers:
        rows = [_status_row(s, settings) for s in summary.streamers]
        print("\n".join(render_table(["SLUG", "STATUS", "SINCE", "SOURCES", "TITLE"], rows)))
        print()
    else:
        print("no streamers yet; add one with `kick-monitor streamers add SLUG`")
    counts = summary.counts()
    without = counts.pop("without_pusher")
    print("  ".join(f"{name}: {count}" for name, count in counts.items()))
    if without:
        interval = settings.reconcile_interval_without_pusher or settings.reconcile_interval
        print(f"monitored without Pusher: {without} (no channel id yet: detected every {interval:g} s"
              " by the API, not in milliseconds)")
    return EXIT_OK


def coverage(s: Streamer, settings: Settings) -> tuple[list[str], dict[str, str]]:
    """Which sources watch this streamer, and why each missing one does not."""
    sources: list[str] = []
    missing: dict[str, str] = {}
    if not s.is_monitored:
        return sources, {"pusher": "no channel id", "api": "no user id or channel id yet"}
    if s.channel_id is not None:
        sources.append("pusher")
    else:
        interval = settings.reconcile_interval_without_pusher or settings.reconcile_interval
        missing["pusher"] = f"no channel id yet (the API checks every {interval:g} s)"
    if settings.has_api_credentials:
        sources.append("api")
    else:
        missing["api"] = "no Kick API credentials"
    return sources, missing


def _since(s: Streamer) -> str:
    if s.status == "online":
        seconds = s.live_seconds if s.live_seconds is not None else s.since_seconds
        return "-" if seconds is None else f"live for {format_duration(seconds)}"
    return format_age(s.since_seconds)


def _status_row(s: Streamer, settings: Settings) -> list[str]:
    if not s.is_monitored:
        return [s.username, "unresolved", "-", "-", f"({clean_cell(s.unresolved_reason)})"]
    sources, missing = coverage(s, settings)
    cover = "+".join(sources) or "none"
    if missing:
        cover += " (" + "; ".join(f"no {name}: {why}" for name, why in missing.items()) + ")"
    title = clean_cell(s.stream_title) if s.status == "online" else ""
    return [s.username, s.status, _since(s), cover, title]


def _status_json(s: Streamer, settings: Settings) -> dict[str, object]:
    sources, missing = coverage(s, settings)
    online = s.status == "online"
    return {
        "slug": s.username,
        "status": s.status,
        "resolved": s.is_resolved,
        "monitored": s.is_monitored,
        "unresolved_reason": s.unresolved_reason,
        "channel_id": s.channel_id,
        "user_id": s.kick_user_id,
        "sources": sources,
        "missing_sources": missing,
        "since": iso_utc(s.last_status_change),
        "since_seconds": s.since_seconds,
        "live_since": iso_utc(s.stream_started_at) if online else None,
        "live_seconds": s.live_seconds if online else None,
        "title": s.stream_title if online else None,
        "livestream_id": s.livestream_id,
        "last_seen_online": iso_utc(s.last_seen_online),
    }
