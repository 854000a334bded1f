"""Id resolution: streamers added by slug alone get their user id, and a channel id when Kick tells it.

The planner's resolver thread calls `resolve_pending` each round (time-boxed, under an
advisory lock). One round resolves the slugs of a whole list in batches
(`KickApiClient.resolve_slugs`): the broadcaster **user id** from `/public/v1/channels` is
stored as soon as it is known — that is enough to monitor a streamer by reconciliation —
and the **channel id** (needed only for Pusher) when a source still gives it: the
deprecated `/public/v1/livestreams` while the streamer is live, the web API when
Cloudflare lets us through, or the operator (`--channel-id`). Until then
`unresolved_reason` says why the channel id is missing (shown by `kick-monitor status`).

Streamers that have a user id but no channel id are asked again at most every
`channel_id_retry` seconds (their `updated_at` is the last try), so a large list of
offline streamers costs a few requests per minute, not per round.
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
    from .kick_api import KickApiClient, Resolution

log = logging.getLogger(__name__)

ROUND_LIMIT = 5000  # streamers one round looks at
CHANNEL_ID_RETRY = 120.0  # seconds between channel-id lookups of a streamer whose user id is known
WEB_PER_ROUND = 10  # web API lookups per round, when it is reachable at all


def pending_streamers(
    conn: psycopg2.extensions.connection, limit: int, channel_id_retry: float = CHANNEL_ID_RETRY
) -> list[tuple[str, int | None]]:
    """(slug, known user id) of streamers worth trying, longest-waiting first.

    Never tried or failed retryably (no user id yet); or user id known, channel id still
    missing, and not tried for `channel_id_retry` seconds. "not found on Kick" and other
    final reasons are left alone until the operator changes the streamer.
    """
    with conn.cursor() as cur:
        cur.execute(
            "SELECT username, kick_user_id FROM kick_monitor.streamers WHERE channel_id IS NULL AND ("
            " (kick_user_id IS NULL AND (unresolved_reason IS NULL OR unresolved_reason = %s"
            "  OR unresolved_reason LIKE 'retrying: %%'))"
            " OR (kick_user_id IS NOT NULL AND updated_at < now() - make_interval(secs => %s)))"
            " ORDER BY updated_at LIMIT %s",
            (WAITING_FOR_RESOLUTION, channel_id_retry, limit),
        )
        rows = [(row[0], row[1]) for row in cur.fetchall()]
    conn.rollback()
    return rows


def pending_slugs(conn: psycopg2.extensions.connection, limit: int) -> list[str]:
    """Slugs of `pending_streamers` (kept for callers of the one-slug-at-a-time API)."""
    return [slug for slug, _ in pending_streamers(conn, limit)]


def resolve_pending(
    conn: psycopg2.extensions.connection, client: KickApiClient, *, limit: int = ROUND_LIMIT,
    budget: float = 20.0, channel_id_retry: float = CHANNEL_ID_RETRY,
) -> int:
    """One round: resolve pending streamers within about `budget` seconds.

    Returns how many streamers learnt an id they did not have (a user id or a channel id).
    """
    from .kick_api import KickAuthError

    deadline = time.monotonic() + budget
    pending = pending_streamers(conn, limit, channel_id_retry)
    if not pending:
        return 0
    known = {slug: user_id for slug, user_id in pending if user_id is not None}
    try:
        found = client.resolve_slugs(
            [slug for slug, _ in pending], known, web_limit=WEB_PER_ROUND, deadline=deadline
        )
    except KickAuthError as exc:
        log.error("cannot resolve streamer ids: Kick refused our credentials (%s)", exc)
        return 0
    learnt = 0
    for slug, user_id in pending:
        resolution = found.get(slug)
        if resolution is not None and store_resolution(conn, resolution, had_user_id=user_id is not None):
            learnt += 1
    return learnt


def store_resolution(conn: psycopg2.extensions.connection, found: Resolution, *, had_user_id: bool) -> bool:
    """Store what one round learnt about a slug; True if it gained an id."""
    if found.user_id is not None and found.channel_id is not None:
        return store_ids(conn, found.slug, found.channel_id, found.user_id, found.chatroom_id)
    if found.user_id is not None:
        return store_user_id(conn, found.slug, found.user_id, found.reason or "no channel id yet") and not had_user_id
    reason = found.reason or "unresolved"
    if found.retryable and found.found and not reason.startswith("retrying: "):
        reason = f"retrying: {reason}"
    store_reason(conn, found.slug, reason)
    return False


def store_ids(
    conn: psycopg2.extensions.connection, slug: str, channel_id: int, user_id: int, chatroom_id: int | None
) -> bool:
    """Save resolved ids; the streamers trigger then tells the planner to plan it for Pusher."""
    try:
        with conn, conn.cursor() as cur:
            cur.execute(
                "UPDATE kick_monitor.streamers SET channel_id = %s, kick_user_id = %s,"
                " chatroom_id = COALESCE(%s, chatroom_id), unresolved_reason = NULL, updated_at = now()"
                " WHERE username = %s AND channel_id IS NULL",
                (channel_id, user_id, chatroom_id, slug),
            )
    except psycopg2.errors.UniqueViolation:
        store_reason(conn, slug, f"channel id {channel_id} or user id {user_id} belongs to another streamer already")
        return False
    log.info("resolved streamer ids", extra={"streamer": slug, "channel_id": channel_id})
    return True


def store_user_id(conn: psycopg2.extensions.connection, slug: str, user_id: int, reason: str) -> bool:
    """Save the user id (enough for reconciliation) and why the channel id is still missing."""
    try:
        with conn, conn.cursor() as cur:
            cur.execute(
                "UPDATE kick_monitor.streamers SET kick_user_id = %s, unresolved_reason = %s, updated_at = now()"
                " WHERE username = %s AND channel_id IS NULL AND (kick_user_id IS NULL OR kick_user_id = %s)",
                (user_id, reason[:500], slug, user_id),
            )
            changed = cur.rowcount > 0
    except psycopg2.errors.UniqueViolation:
        store_reason(conn, slug, f"user id {user_id} belongs to another streamer already")
        return False
    return changed


def store_reason(conn: psycopg2.extensions.connection, slug: str, reason: str) -> None:
    with conn, conn.cursor() as cur:
        cur.execute(
            "UPDATE kick_monitor.streamers SET unresolved_reason = %s, updated_at = now()"
            " WHERE username = %s AND channel_id IS NULL",
            (reason[:500], slug),
        )
    log.warning("streamer unresolved: %s", reason, extra={"streamer": slug})
