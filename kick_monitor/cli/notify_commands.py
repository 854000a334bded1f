"""`kick-monitor notify add|list|remove|test|enable`: go-live notification targets.

The webhook URL is a credential: it is read from the argument, from stdin (`-`: keeps it out
of the process list and shell history) or referenced as `file:/path` of a secret file, and
it is never printed — every output shows its mask (kick_monitor/notify_targets.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

import psycopg2.extensions

from ..config import ConfigError, Settings
from ..logsetup import register_secret
from ..notify_format import TemplateError, render_body, sample_announcement
from ..notify_outbox import NOTIFIER_LOCK_KEY
from ..notify_sender import post
from ..notify_targets import (
    Target,
    TargetError,
    add_target,
    find_target,
    list_targets,
    remove_target,
    set_enabled,
    url_secrets,
)
from ..tls import new_session
from .database_commands import open_database
from .errors import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, CliError
from .render import clean_cell, render_table

Leaf = Callable[[argparse.ArgumentParser, Callable[[argparse.Namespace, Settings], int]], None]


def add_notify_commands(notify: argparse.ArgumentParser, leaf: Leaf) -> None:
    commands = notify.add_subparsers(dest="notify_command", metavar="COMMAND", required=True)
    add = commands.add_parser(
        "add", help="add a target: a Discord, Slack or JSON webhook",
        description="URL is the webhook URL (a credential: never printed), - to read it from stdin, or"
        " file:/path of a secret file holding it (read by the service each time). Templates use"
        " {username} {title} {category} {url} {started_at} {duration}.",
    )
    add.add_argument("url", metavar="URL", help="webhook URL, - (stdin) or file:/path")
    add.add_argument("--kind", choices=("discord", "slack", "json"), help="default: from the URL's host")
    add.add_argument("--streamer", metavar="SLUG", action="append", help="only this streamer (repeat); default all")
    add.add_argument("--on", choices=("live", "offline", "both"), default="live", help="which events (default live)")
    add.add_argument("--template", metavar="TEXT", help="go-live text (Discord: the message above the embed)")
    add.add_argument("--offline-template", metavar="TEXT", help="offline text")
    _leaf(add, leaf, add_command)

    listing = commands.add_parser("list", help="targets, their state and delivery counts (URLs masked)")
    listing.add_argument("--json", action="store_true", help="print JSON: {targets: [...]}")
    _leaf(listing, leaf, list_command)

    remove = commands.add_parser("remove", help="remove a target (and its delivery records)")
    remove.add_argument("id", metavar="ID", type=int)
    _leaf(remove, leaf, remove_command)

    test = commands.add_parser("test", help="send a sample announcement to a target now and print the answer")
    test.add_argument("id", metavar="ID", type=int)
    test.add_argument("--event", choices=("live", "offline"), default="live")
    _leaf(test, leaf, test_command)

    enable = commands.add_parser("enable", help="enable a target again (after it was disabled on a 404)")
    enable.add_argument("id", metavar="ID", type=int)
    _leaf(enable, leaf, enable_command)


def _leaf(parser: argparse.ArgumentParser, leaf: Leaf, handler: Callable[[argparse.Namespace, Settings], int]) -> None:
    leaf(parser, handler)


def read_url(text: str) -> str:
    if text == "-":
        text = sys.stdin.readline().strip()
        if not text:
            raise CliError("no webhook URL on stdin", EXIT_USAGE)
    for secret in url_secrets(text):
        register_secret(secret)  # from here on no log line or error can show it
    return text


def add_command(args: argparse.Namespace, settings: Settings) -> int:
    url = read_url(args.url)
    with open_database(settings) as conn:
        try:
            target = add_target(conn, url, kind=args.kind, streamers=args.streamer, on=args.on,
                                template=args.template, offline_template=args.offline_template)
        except (TargetError, TemplateError) as exc:
            raise CliError(str(exc), EXIT_USAGE) from None
        running = notifier_running(conn)
    who = ", ".join(target.streamers) if target.streamers else "every streamer"
    print(f"added notify target {target.id}: {target.kind} {target.shown_url}, {who}, on {target.on}")
    if not running:
        print("no notifier is running: it starts with the service when a target exists (KICK_MONITOR_NOTIFY=auto);"
              " restart the service to start it")
    return EXIT_OK


def list_command(args: argparse.Namespace, settings: Settings) -> int:
    with open_database(settings) as conn:
        targets = list_targets(conn)
    if args.json:
        print(json.dumps({"targets": [t.as_json() for t in targets]}, indent=2))
        return EXIT_OK
    if not targets:
        print("no notify targets; `kick-monitor notify add URL` adds one")
        return EXIT_OK
    rows = [[str(t.id), t.kind, t.shown_url, clean_cell(",".join(t.streamers) if t.streamers else "all", 30), t.on,
             _state(t), *(str(dict(t.counts).get(s, 0)) for s in ("sent", "pending", "failed", "uncertain", "skipped"))]
            for t in targets]
    print("\n".join(render_table(
        ["ID", "KIND", "URL", "STREAMERS", "ON", "STATE", "SENT", "PENDING", "FAILED", "UNCERTAIN", "SKIPPED"], rows)))
    for t in targets:
        if not t.enabled:
            print(f"target {t.id} disabled: {clean_cell(t.disabled_reason or 'by the operator', 200)}")
    if any(dict(t.counts).get("uncertain") for t in targets):
        print("uncertain: the notifier stopped between sending and recording; maybe delivered, never sent twice")
    return EXIT_OK


def _state(target: Target) -> str:
    return "enabled" if target.enabled else "DISABLED"


def remove_command(args: argparse.Namespace, settings: Settings) -> int:
    with open_database(settings) as conn:
        try:
            remove_target(conn, args.id)
        except TargetError as exc:
            raise CliError(str(exc), EXIT_FAILURE) from None
    print(f"removed notify target {args.id}")
    return EXIT_OK


def enable_command(args: argparse.Namespace, settings: Settings) -> int:
    with open_database(settings) as conn:
        try:
            set_enabled(conn, args.id, True)
        except TargetError as exc:
            raise CliError(str(exc), EXIT_FAILURE) from None
    print(f"enabled notify target {args.id}")
    return EXIT_OK


def test_command(args: argparse.Namespace, settings: Settings) -> int:
    """Post a sample announcement (not recorded as a delivery) and print the answer."""
    with open_database(settings) as conn:
        try:
            target = find_target(conn, args.id)
        except TargetError as exc:
            raise CliError(str(exc), EXIT_FAILURE) from None
    try:
        url = target.resolve_url()
    except (ConfigError, TargetError) as exc:
        raise CliError(str(exc), EXIT_FAILURE) from None
    for secret in url_secrets(url):
        register_secret(secret)
    template = target.template if args.event == "live" else target.offline_template
    body = render_body(target.kind, sample_announcement(args.event), template)
    with new_session() as session:
        outcome = post(session, url, body, settings.notify_timeout, attempts=1)
    print(f"target {target.id} ({target.kind} {target.shown_url}): {outcome.detail or outcome.verdict}"
          f" in {outcome.seconds * 1000:.0f} ms")
    return EXIT_OK if outcome.verdict == "sent" else EXIT_FAILURE


def notifier_running(conn: psycopg2.extensions.connection) -> bool:
    """Is a notifier dispatching now (its advisory lock is held)? pg_locks is readable by everyone."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted"
            " AND ((classid::bigint << 32) | objid::bigint) = %s)",
            (NOTIFIER_LOCK_KEY,),
        )
        row = cur.fetchone()
    conn.rollback()
    return bool(row and row[0])
