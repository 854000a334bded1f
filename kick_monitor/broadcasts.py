"""Reading `kick_monitor.broadcasts`: one row per broadcast (what `kick-monitor streams` lists).

The writer fills the table (kick_monitor.status_store) in the commit of each transition;
migration 4 backfilled it from older history. This module only reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg2.extensions

from .streamers import iso_utc

SELECT_BROADCASTS = """
SELECT b.id, COALESCE(s.username, '(removed #' || b.streamer_id || ')'), b.started_at, b.ended_at,
       EXTRACT(EPOCH FROM COALESCE(b.ended_at, now()) - b.started_at)::float8,
       b.start_title, b.last_title, b.category, b.livestream_id, b.stream_uuid,
       b.start_source, b.end_source, b.start_inferred, b.end_inferred
FROM kick_monitor.broadcasts b
LEFT JOIN kick_monitor.streamers s ON s.id = b.streamer_id
WHERE (%(slug)s::text IS NULL OR s.username = %(slug)s::text)
  AND (%(since)s::timestamptz IS NULL OR COALESCE(b.ended_at, 'infinity') >= %(since)s::timestamptz)
ORDER BY b.started_at DESC, b.id DESC
LIMIT %(limit)s
"""


@dataclass(frozen=True, slots=True)
class Broadcast:
    """One broadcast; `seconds` runs to now while it is live (`ended_at` None)."""

    id: int
    username: str
    started_at: datetime
    ended_at: datetime | None
    seconds: float
    start_title: str | None
    last_title: str | None
    category: str | None
    livestream_id: int | None
    stream_uuid: str | None
    start_source: str
    end_source: str | None
    start_inferred: bool
    end_inferred: bool

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "slug": self.username,
            "started_at": iso_utc(self.started_at),
            "ended_at": iso_utc(self.ended_at),
            "live": self.ended_at is None,
            "duration_seconds": round(self.seconds, 3),
            "title": self.last_title or self.start_title,
            "start_title": self.start_title,
            "category": self.category,
            "livestream_id": self.livestream_id,
            "stream_uuid": self.stream_uuid,
            "start_source": self.start_source,
            "end_source": self.end_source,
            "end_inferred": self.end_inferred,
        }


def list_broadcasts(
    conn: psycopg2.extensions.connection,
    *,
    slug: str | None = None,
    since: datetime | None = None,
    limit: int | None = None,
) -> list[Broadcast]:
    """Broadcasts newest first; `since` keeps those still going at or after it."""
    with conn, conn.cursor() as cur:
        cur.execute(SELECT_BROADCASTS, {"slug": slug, "since": since, "limit": limit})
        return [Broadcast(*row) for row in cur.fetchall()]
