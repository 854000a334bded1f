"""`kick-monitor webhooks sync` and `kick-monitor webhooks status [--json]` (issue 16).

`sync` runs one subscription sync now, under the same advisory lock as the service's
planner duty (it waits for a sync in progress), prints what it did and exits 1 when Kick
refused some (the subscription limit: one line saying how many streamers are left
without webhooks). `status` reads the database only (`kick_monitor.webhook_status`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg2.extensions

from ..config import Settings
from ..database import STATEMENT_TIMEOUT_MS, connect, database_url
from ..kick_api import KickApiError, KickAuthError, client_from_settings
from ..migrations import require_current
from ..webhook_plan import METADATA_EVENT, STATUS_EVENT, as_json, describe_states
from ..webhook_status import NOT_RECORDED, read_status
from ..webhook_subscriptions import sync_subscriptions
from ..webhook_sync import SYNC_LOCK_KEY, sync_wanted
from .database_commands import APPLICATION_NAME, open_database
from .errors import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, CliError
from .render import clean_cell, format_age

LOCK_WAIT = 120.0  # seconds `sync` waits for a sync another process is running

Handler = Callable[[argparse.Namespace, Settings], int]


def add_webhook_commands(commands: Any, leaf: Callable[[argparse.ArgumentParser, Handler], None]) -> None:
    """`webhooks sync|status` under the top-level `commands` (`leaf` adds the common flags)."""
    webhooks = commands.add_parser("webhooks", help="Kick webhook subscriptions: sync them now, or show their state")
    sub = webhooks.add_subparsers(dest="webhooks_command", metavar="COMMAND", required=True)
    sync = sub.add_parser(
        "sync", help="make Kick's webhook subscriptions match the streamer list now (needs API credentials)",
        description="List the app's event subscriptions, create livestream.status.updated and"
        " livestream.metadata.updated (version 1, webhook) for every streamer with a user id, delete those of"
        " removed streamers, re-create what Kick dropped. Exit 0 when all are subscribed, 1 when Kick refused"
        " some (e.g. the app's subscription limit), 2 without API credentials.",
    )
    sync.add_argument("--json", action="store_true", help="print the outcome as JSON")
    leaf(sync, sync_command)
    status = sub.add_parser("status", help="subscriptions by state, last sync, last delivery, the receiver's URL")
    status.add_argument("--json", action="store_true", help="print JSON")
    leaf(status, status_command)


@contextlib.contextmanager
def _sync_session(settings: Settings) -> Iterator[tuple[psycopg2.extensions.connection, Any]]:
    with database_url(settings) as url:
        conn = connect(url, application_name=APPLICATION_NAME, statement_timeout_ms=STATEMENT_TIMEOUT_MS)
        client = None
        try:
            require_current(conn)
            _take_lock(conn)
            client = client_from_settings(settings, url)
            yield conn, client
        finally:
            if client is not None:
                client.close()
            conn.close()  # ends the session: the advisory lock goes with it


def _take_lock(conn: psycopg2.extensions.connection) -> None:
    """The deployment's sync lock (the planner duty's); wait for a sync in progress, bounded."""
    deadline = time.monotonic() + LOCK_WAIT
    said = False
    while True:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_try_advisory_lock(%s)", (SYNC_LOCK_KEY,))
            row = cur.fetchone()
        conn.commit()
        if row and row[0]:
            return
        if time.monotonic() >= deadline:
            raise CliError(f"another process has been syncing webhook subscriptions for over {LOCK_WAIT:g} s;"
                           " try again later (`kick-monitor webhooks status` shows its progress)")
        if not said:
            print("another process is syncing webhook subscriptions; waiting for it", file=sys.stderr, flush=True)
            said = True
        time.sleep(0.5)


def sync_command(args: argparse.Namespace, settings: Settings) -> int:
    if not settings.has_api_credentials:
        raise CliError("webhook subscriptions need Kick API credentials: set KICK_MONITOR_CLIENT_ID and"
                       " KICK_MONITOR_CLIENT_SECRET (without them the receiver still accepts signed deliveries)",
                       EXIT_USAGE)
    with _sync_session(settings) as (conn, client):
        try:
            result = sync_subscriptions(conn, client)
        except KickAuthError as exc:
            raise CliError(str(exc), EXIT_USAGE) from None
        except KickApiError as exc:
            raise CliError(f"webhook subscription sync failed, nothing changed: {exc}") from None
    if args.json:
        print(json.dumps(as_json(result), indent=2))
    else:
        print(f"webhook subscriptions: {result.summary()} ({result.streamers} streamers with a user id)")
        others = [e for e in result.errors if not (result.limit_reached and "limit" in e.lower())]
        for problem in others[:3]:
            print(f"  problem: {clean_cell(problem, 200)}")
        wanted, why = sync_wanted(settings)
        if not wanted:
            print(f"note: the service does not keep them in sync by itself ({why})")
    if result.limit_reached:
        print(f"kick-monitor: error: {result.limit_message()}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK if result.outcome == "ok" else EXIT_FAILURE


def status_command(args: argparse.Namespace, settings: Settings) -> int:
    with open_database(settings) as conn:
        status = read_status(conn, settings)
    if args.json:
        print(json.dumps(status.as_json(), indent=2))
        return EXIT_OK
    print(f"subscriptions: {describe_states(status.counts)}"
          f" (streamer × event; {status.streamers_with_user_id} streamers with a user id)")
    if status.left_without:
        print(f"streamers without webhooks: {status.left_without} (they stay on Pusher and reconciliation)")
    if status.streamers_without_user_id:
        print(f"streamers without a user id yet (cannot subscribe): {status.streamers_without_user_id}")
    for error, count in status.failure_reasons:
        print(f"  failed ×{count}: {clean_cell(error, 160)}")
    print(f"sync: {'automatic' if status.sync_wanted else 'not automatic'} ({status.sync_why})"
          + (f", every {status.interval:g} s" if status.sync_wanted else "")
          + ("" if status.has_credentials else "; no API credentials: skipped"))
    last = status.last_sync
    if last is None:
        print("last sync: never")
    else:
        print(f"last sync: {last['finished_at']} — {last['outcome']}: {last['created']} created"
              f" ({last['recreated']} re-created), {last['deleted']} deleted"
              + (f"; {clean_cell(last['error'], 160)}" if last["error"] else ""))
    delivered = status.last_delivery.get(STATUS_EVENT)
    age = None if delivered is None else max(0.0, time.time() - delivered.timestamp())
    print(f"last delivery {STATUS_EVENT}: " + ("none recorded" if delivered is None
                                                   else f"{delivered.isoformat()} ({format_age(age)})"))
    print(f"last delivery {METADATA_EVENT}: not known — {NOT_RECORDED}")
    receiver = status.receiver
    if receiver["enabled"]:
        print(f"receiver: {receiver['url']} (as configured; Kick's developer settings name the public HTTPS URL"
              " the reverse proxy forwards here)")
    else:
        print("receiver: off on this host (KICK_MONITOR_WEBHOOK_PORT=0)")
    return EXIT_OK
