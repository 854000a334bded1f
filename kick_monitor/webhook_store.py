"""Webhook subscriptions in PostgreSQL: the wanted list, the state per pair, the last run.

`kick_monitor.webhook_subscriptions` (per streamer and event: subscription id, state
subscribed / missing / failed, last error) and `kick_monitor.webhook_sync` (one row: the
deployment's last sync, whichever process ran it). Functions here never commit unless
they say so: the sync writes its outcome in one transaction.
"""

from __future__ import annotations

from collections.abc import Mapping

import psycopg2.extensions
import psycopg2.extras

from .webhook_plan import MANAGED_EVENTS, MISSING, STATES, Key, Recorded, SyncResult


def load_desired(conn: psycopg2.extensions.connection) -> dict[int, int]:
    """Streamer id -> Kick user id for every streamer with a user id (all of them are monitored)."""
    with conn.cursor() as cur:
        cur.execute("SELECT id, kick_user_id FROM kick_monitor.streamers WHERE kick_user_id IS NOT NULL")
        rows = cur.fetchall()
    return {int(streamer_id): int(user_id) for streamer_id, user_id in rows}


def load_recorded(conn: psycopg2.extensions.connection) -> dict[Key, Recorded]:
    with conn.cursor() as cur:
        cur.execute(
            "SELECT streamer_id, event, subscription_id, state, last_error FROM kick_monitor.webhook_subscriptions"
        )
        rows = cur.fetchall()
    return {(int(r[0]), str(r[1])): Recorded(r[2], r[3], r[4]) for r in rows}


def store_states(
    conn: psycopg2.extensions.connection, desired: Mapping[int, int], states: Mapping[Key, Recorded],
    recorded: Mapping[Key, Recorded],
) -> None:
    """Write the pairs whose state changed and forget streamers no longer wanted (no commit)."""
    changed = [
        (sid, event, desired[sid], row.subscription_id, row.state, row.error)
        for (sid, event), row in states.items() if recorded.get((sid, event)) != row
    ]
    gone = sorted({sid for sid, _ in recorded if sid not in desired})
    with conn.cursor() as cur:
        if changed:
            psycopg2.extras.execute_values(
                cur,
                "INSERT INTO kick_monitor.webhook_subscriptions AS w"
                " (streamer_id, event, kick_user_id, subscription_id, state, last_error) VALUES %s"
                " ON CONFLICT (streamer_id, event) DO UPDATE SET kick_user_id = excluded.kick_user_id,"
                " subscription_id = excluded.subscription_id, state = excluded.state,"
                " last_error = excluded.last_error, updated_at = now()",
                changed, page_size=1000,
            )
        if gone:
            cur.execute("DELETE FROM kick_monitor.webhook_subscriptions WHERE streamer_id = ANY(%s)", (gone,))


def record_run(conn: psycopg2.extensions.connection, result: SyncResult, digest: str, started: float) -> None:
    """The one row of `webhook_sync`: when the last sync ran, how it ended, for which list (no commit)."""
    with conn.cursor() as cur:
        cur.execute(
            "INSERT INTO kick_monitor.webhook_sync AS s (id, started_at, finished_at, outcome, error, fingerprint,"
            " created, deleted, recreated)"
            " VALUES (1, to_timestamp(%s), clock_timestamp(), %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (id) DO UPDATE SET started_at = excluded.started_at, finished_at = excluded.finished_at,"
            " outcome = excluded.outcome, error = excluded.error, fingerprint = excluded.fingerprint,"
            " created = excluded.created, deleted = excluded.deleted, recreated = excluded.recreated",
            (started, result.outcome, "; ".join(result.errors)[:1000] or None, digest,
             result.created, result.deleted, result.recreated),
        )


def last_run(conn: psycopg2.extensions.connection) -> tuple[float, str, str | None] | None:
    """(seconds since the last sync finished, its outcome, its fingerprint), or None if none ran."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT extract(epoch FROM clock_timestamp() - finished_at)::float8, outcome, fingerprint"
            " FROM kick_monitor.webhook_sync WHERE id = 1"
        )
        row = cur.fetchone()
    return (float(row[0]), str(row[1]), row[2]) if row else None


def count_states(conn: psycopg2.extensions.connection) -> dict[str, int]:
    """Pairs by state; streamers with a user id not yet in the table count as missing."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT w.state, count(*) FROM kick_monitor.webhook_subscriptions w"
            " JOIN kick_monitor.streamers s ON s.id = w.streamer_id AND s.kick_user_id IS NOT NULL GROUP BY 1"
        )
        counts = {state: 0 for state in STATES}
        counts.update({str(state): int(n) for state, n in cur.fetchall()})
        cur.execute(
            "SELECT count(*) FROM kick_monitor.streamers s WHERE s.kick_user_id IS NOT NULL"
        )
        row = cur.fetchone()
    wanted = int(row[0]) * len(MANAGED_EVENTS) if row else 0
    counts[MISSING] += max(0, wanted - sum(counts.values()))
    return counts
