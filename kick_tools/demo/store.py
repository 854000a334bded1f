"""What the demo reads from and writes to its own database: a fresh schema, the streamers, the history.

>>> db = DemoDatabase(url)
>>> db.reset()                            # the demo's database only: drop and re-migrate
>>> db.insert_streamers(sim.streamers())
>>> new = db.events_since(last_id=0)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from psycopg2.extras import execute_values

from kick_monitor.database import connect
from kick_monitor.migrations import migrate

STATUSES = ("online", "offline", "unknown")

EVENTS_SQL = """
SELECT e.id, COALESCE(s.username, '?'), e.channel_id, e.status, e.previous_status, e.source,
       extract(epoch FROM e.received_at)::float8, extract(epoch FROM e.recorded_at)::float8
FROM kick_monitor.status_events e
LEFT JOIN kick_monitor.streamers s ON s.id = e.streamer_id
WHERE e.id > %s
ORDER BY e.id
"""


@dataclass(frozen=True, slots=True)
class Event:
    """One committed history row (`received_at`, `recorded_at` in epoch seconds)."""

    id: int
    slug: str
    channel_id: int
    status: str
    previous_status: str
    source: str
    received_at: float
    recorded_at: float


class DemoDatabase:
    """One autocommit connection to the demo's embedded database."""

    def __init__(self, url: str) -> None:
        self.conn = connect(url, application_name="kick-monitor demo")

    def reset(self) -> None:
        """Start from an empty, current schema (this database belongs to the demo alone)."""
        with self.conn, self.conn.cursor() as cur:
            cur.execute("DROP SCHEMA IF EXISTS kick_monitor CASCADE")
        migrate(self.conn)
        self.conn.autocommit = True

    def insert_streamers(self, streamers: Iterable[dict[str, Any]]) -> int:
        rows = [(s["slug"], s["channel_id"], s["user_id"], s["chatroom_id"]) for s in streamers]
        with self.conn.cursor() as cur:
            execute_values(
                cur,
                "INSERT INTO kick_monitor.streamers (username, channel_id, kick_user_id, chatroom_id) VALUES %s",
                rows,
                page_size=1000,
            )
        return len(rows)

    def counts(self) -> dict[str, int]:
        """Streamers per status (all three keys present)."""
        with self.conn.cursor() as cur:
            cur.execute("SELECT status, count(*) FROM kick_monitor.streamers GROUP BY status")
            found = dict(cur.fetchall())
        return {status: int(found.get(status, 0)) for status in STATUSES}

    def statuses(self) -> dict[int, str]:
        """channel_id -> current status."""
        with self.conn.cursor() as cur:
            cur.execute("SELECT channel_id, status FROM kick_monitor.streamers WHERE channel_id IS NOT NULL")
            return {int(channel_id): str(status) for channel_id, status in cur.fetchall()}

    def events_since(self, last_id: int) -> list[Event]:
        """History rows committed after row `last_id`, oldest first (one writer: ids follow commits)."""
        with self.conn.cursor() as cur:
            cur.execute(EVENTS_SQL, (last_id,))
            return [Event(*row) for row in cur.fetchall()]

    def close(self) -> None:
        self.conn.close()


def mismatches(truth: Iterable[dict[str, Any]], statuses: dict[int, str]) -> list[str]:
    """Streamers whose status in the database differs from the simulator's (`slug: db≠sim`)."""
    wrong = []
    for streamer in truth:
        expected = "online" if streamer["live"] else "offline"
        found = statuses.get(streamer["channel_id"], "missing")
        if found != expected:
            wrong.append(f"{streamer['slug']}: database {found}, simulator {expected}")
    return wrong
