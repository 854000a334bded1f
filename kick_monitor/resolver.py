"""Id resolution: streamers added by slug only get their channel, user and chatroom ids.

The coordinator calls `resolve_pending` from its main loop with a time budget, so a slow
Kick API can delay a reload by at most that budget, never block signals. A streamer that
cannot be resolved keeps its reason in `unresolved_reason` (shown by `kick-monitor
status`) and the rest run; a retryable failure is tried again at the next reload.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import psycopg2
import psycopg2.errors
import psycopg2.extensions

from .streamers import WAITING_FOR_RESOLUTION

if TYPE_CHECKING:
    from .kick_api import KickApiClient

log = logging.getLogger(__name__)


def pending_slugs(conn: psycopg2.extensions.connection, limit: int) -> list[str]:
    """Unresolved streamers worth trying: never tried, or failed for a retryable reason."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT username FROM kick_monitor.streamers WHERE channel_id IS NULL"
            " AND (unresolved_reason IS NULL OR unresolved_reason = %s OR unresolved_reason LIKE 'retrying: %%')"
            " ORDER BY updated_at LIMIT %s",
            (WAITING_FOR_RESOLUTION, limit),
        )
        rows = [row[0] for row in cur.fetchall()]
    conn.rollback()
    return rows


def resolve_pending(
    conn: psycopg2.extensions.connection, client: KickApiClient, *, limit: int = 50, budget: float = 2.0
) -> int:
    """Resolve up to `limit` streamers within about `budget` seconds; return how many got ids."""
    from .kick_api import KickAuthError, ResolvedIds

    deadline = time.monotonic() + budget
    resolved = 0
    for slug in pending_slugs(conn, limit):
        if time.monotonic() >= deadline:
            break
        try:
            outcome = client.resolve_streamer(slug)
        except KickAuthError as exc:
            log.error("cannot resolve streamer ids: Kick refused our credentials (%s)", exc)
            return resolved
        if isinstance(outcome, ResolvedIds):
            if store_ids(conn, slug, outcome.channel_id, outcome.user_id, outcome.chatroom_id):
                resolved += 1
        else:
            reason = f"retrying: {outcome.reason}" if outcome.retryable else outcome.reason
            store_reason(conn, slug, reason)
    return resolved


def store_ids(
    conn: psycopg2.extensions.connection, slug: str, channel_id: int, user_id: int, chatroom_id: int | None
) -> bool:
    """Save resolved ids; the streamers trigger then tells the coordinator to subscribe it."""
    try:
        with conn, conn.cursor() as cur:
            cur.execute(
                "UPDATE kick_monitor.streamers SET channel_id = %s, kick_user_id = %s,"
                " chatroom_id = COALESCE(%s, chatroom_id), unresolved_reason = NULL, updated_at = now()"
                " WHERE username = %s AND channel_id IS NULL",
                (channel_id, user_id, chatroom_id, slug),
            )
    except psycopg2.errors.UniqueViolation:
        store_reason(conn, slug, f"channel id {channel_id} belongs to another streamer already")
        return False
    log.info("resolved streamer ids", extra={"streamer": slug, "channel_id": channel_id})
    return True


def store_reason(conn: psycopg2.extensions.connection, slug: str, reason: str) -> None:
    with conn, conn.cursor() as cur:
        cur.execute(
            "UPDATE kick_monitor.streamers SET unresolved_reason = %s, updated_at = now()"
            " WHERE username = %s AND channel_id IS NULL",
            (reason[:500], slug),
        )
    log.warning("streamer unresolved: %s", reason, extra={"streamer": slug})
