"""What `kick-monitor webhooks status` reports: subscriptions, the last sync, deliveries, the receiver.

Everything comes from the database and the settings — no Kick API call — so it answers
at once, also without credentials:
- subscriptions by state, as the deployment's last sync left them
  (`kick_monitor.webhook_subscriptions`; streamers with a user id that no sync has seen
  yet count as missing), and the most common reasons of the failed ones;
- the last sync (`kick_monitor.webhook_sync`): when, how it ended, what it changed;
- the last delivery per event type, from what the writer records: for
  `livestream.status.updated`, the newest `webhook_start_seen_at`/`webhook_end_seen_at`
  of the broadcasts (the first webhook report of each start and end; a repeated delivery
  of a change already recorded leaves no trace) and the newest history row with source
  `webhook`. `livestream.metadata.updated` changes no status and carries no per-source
  time in the database: not known here (the receiver's metrics count it);
- the receiver's address as configured (what the reverse proxy forwards to).

Reading the newest delivery scans the broadcasts and the webhook rows of the history:
fine for an operator's command, not meant for a scrape loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg2.extensions

from .config import Settings
from .streamers import iso_utc
from .webhook_plan import FAILED, MANAGED_EVENTS, METADATA_EVENT, STATUS_EVENT
from .webhook_store import count_states
from .webhook_sync import receiver_address, sync_wanted

NOT_RECORDED = "not recorded in the database (it changes no status); the receiver's metrics count it"


@dataclass
class WebhookStatus:
    counts: dict[str, int]
    streamers_with_user_id: int
    streamers_without_user_id: int
    left_without: int  # streamers with a user id and at least one event not subscribed
    failure_reasons: list[tuple[str, int]]  # (last_error, pairs), most common first
    last_sync: dict[str, Any] | None
    last_delivery: dict[str, datetime | None]
    sync_wanted: bool
    sync_why: str
    has_credentials: bool
    interval: float
    receiver: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "subscriptions": self.counts,
            "streamers": {"with_user_id": self.streamers_with_user_id,
                          "without_user_id": self.streamers_without_user_id,
                          "left_without_webhooks": self.left_without},
            "failure_reasons": [{"error": error, "count": n} for error, n in self.failure_reasons],
            "sync": {"automatic": self.sync_wanted, "why": self.sync_why, "credentials": self.has_credentials,
                     "interval_seconds": self.interval, "last": self.last_sync},
            "last_delivery": {
                STATUS_EVENT: {"at": iso_utc(self.last_delivery.get(STATUS_EVENT)), "known": True},
                METADATA_EVENT: {"at": None, "known": False, "why": NOT_RECORDED},
            },
            "receiver": self.receiver,
        }


def receiver_info(settings: Settings) -> dict[str, Any]:
    host, port, path = receiver_address(settings)
    if not port:
        return {"enabled": False, "url": None, "host": host, "port": 0, "path": path}
    shown = f"[{host}]" if ":" in host else host
    return {"enabled": True, "url": f"http://{shown}:{port}{path}", "host": host, "port": port, "path": path}


def read_status(conn: psycopg2.extensions.connection, settings: Settings) -> WebhookStatus:
    counts = count_states(conn)
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FILTER (WHERE kick_user_id IS NOT NULL), count(*) FILTER"
                    " (WHERE kick_user_id IS NULL) FROM kick_monitor.streamers")
        with_id, without_id = cur.fetchone() or (0, 0)
        cur.execute(
            "SELECT count(*) FROM kick_monitor.streamers s WHERE s.kick_user_id IS NOT NULL AND"
            " (SELECT count(*) FROM kick_monitor.webhook_subscriptions w"
            "  WHERE w.streamer_id = s.id AND w.state = 'subscribed') < %s", (len(MANAGED_EVENTS),)
        )
        row = cur.fetchone()
        left = int(row[0]) if row else 0
        cur.execute(
            "SELECT COALESCE(last_error, '(no reason recorded)'), count(*) FROM kick_monitor.webhook_subscriptions"
            " WHERE state = %s GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 5", (FAILED,)
        )
        reasons = [(str(error), int(n)) for error, n in cur.fetchall()]
        cur.execute("SELECT started_at, finished_at, outcome, error, created, deleted, recreated"
                    " FROM kick_monitor.webhook_sync WHERE id = 1")
        sync_row = cur.fetchone()
        cur.execute(
            "SELECT GREATEST((SELECT max(GREATEST(webhook_start_seen_at, webhook_end_seen_at))"
            "                 FROM kick_monitor.broadcasts),"
            "                (SELECT max(received_at) FROM kick_monitor.status_events WHERE source = 'webhook'))"
        )
        delivered = cur.fetchone()
    conn.rollback()
    last_sync = None
    if sync_row is not None:
        last_sync = {"started_at": iso_utc(sync_row[0]), "finished_at": iso_utc(sync_row[1]),
                     "outcome": sync_row[2], "error": sync_row[3], "created": sync_row[4],
                     "deleted": sync_row[5], "recreated": sync_row[6]}
    wanted, why = sync_wanted(settings)
    return WebhookStatus(
        counts=counts, streamers_with_user_id=int(with_id), streamers_without_user_id=int(without_id),
        left_without=left, failure_reasons=reasons, last_sync=last_sync,
        last_delivery={STATUS_EVENT: delivered[0] if delivered else None, METADATA_EVENT: None},
        sync_wanted=wanted, sync_why=why, has_credentials=settings.has_api_credentials,
        interval=settings.webhook_sync_interval, receiver=receiver_info(settings),
    )
