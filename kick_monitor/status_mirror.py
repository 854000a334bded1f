"""The status mirror's SQL side: what one streamer's status looks like to the user's statement.

`KICK_MONITOR_STATUS_MIRROR` is the application's own statement with named parameters
(`%(slug)s`, `%(user_id)s`, `%(channel_id)s`, `%(status)s`, `%(is_live)s`, `%(title)s`,
`%(started_at)s`, `%(changed_at)s`), e.g.
`UPDATE app.creators SET is_live = %(is_live)s WHERE kick_username = %(slug)s`.

It is applied with the *current* row of `kick_monitor.streamers` (never an event), each time in
its own short transaction under `lock_timeout`/`statement_timeout`, on a connection of its own:
an application's lock or constraint can fail or delay the mirror, never our writer. Streamers
whose status is still `unknown` are not mirrored (nothing is known to tell the application).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg2
import psycopg2.errors
import psycopg2.extensions

MIRROR_KEY = "KICK_MONITOR_STATUS_MIRROR"
PARAMETERS = ("slug", "user_id", "channel_id", "status", "is_live", "title", "started_at", "changed_at")
LOCK_TIMEOUT_MS = 200  # an application holding the row: give up quickly, retry with back-off
STATEMENT_TIMEOUT_MS = 1000

CURRENT_SQL = """
SELECT id, username, kick_user_id, channel_id, status, stream_title, last_status_change, updated_at
FROM kick_monitor.streamers WHERE status <> 'unknown'
"""


class MirrorError(RuntimeError):
    """The statement cannot be used; one line naming why (exit 2 at start)."""


@dataclass(frozen=True, slots=True)
class MirrorRow:
    """One streamer's current state, as the statement gets it."""

    streamer_id: int
    slug: str
    user_id: int | None
    channel_id: int | None
    status: str
    title: str | None
    changed_at: datetime | None
    updated_at: datetime  # when our writer committed it (transaction start): the lag's origin

    @property
    def state(self) -> tuple[str, str | None, datetime | None]:
        """What the application sees; applying the same state twice is skipped."""
        return (self.status, self.title, self.changed_at)

    def parameters(self) -> dict[str, Any]:
        live = self.status == "online"
        return {
            "slug": self.slug, "user_id": self.user_id, "channel_id": self.channel_id, "status": self.status,
            "is_live": live, "title": self.title if live else None,
            "started_at": self.changed_at if live else None, "changed_at": self.changed_at,
        }


def sample_parameters() -> dict[str, Any]:
    """Values of the right types for a dry execution that matches no real streamer."""
    now = datetime.now(UTC)
    return MirrorRow(0, "kick-monitor-dry-run", 0, 0, "online", "dry run", now, now).parameters()


def set_timeouts(conn: psycopg2.extensions.connection) -> None:
    with conn.cursor() as cur:
        cur.execute("SET lock_timeout = %s", (LOCK_TIMEOUT_MS,))
        cur.execute("SET statement_timeout = %s", (STATEMENT_TIMEOUT_MS,))
    conn.commit()


def check_statement(conn: psycopg2.extensions.connection, statement: str) -> None:
    """Execute the statement once with sample values and roll it back; MirrorError if it fails."""
    try:
        with conn.cursor() as cur:
            cur.execute("SET LOCAL lock_timeout = %s", (LOCK_TIMEOUT_MS,))
            cur.execute("SET LOCAL statement_timeout = %s", (STATEMENT_TIMEOUT_MS,))
            cur.execute(statement, sample_parameters())
    except KeyError as exc:
        raise MirrorError(
            f"{MIRROR_KEY} uses an unknown parameter %({exc.args[0]})s; known: {', '.join(PARAMETERS)}"
        ) from None
    except (ValueError, IndexError, TypeError) as exc:
        raise MirrorError(f"{MIRROR_KEY} is malformed ({exc}); write a literal % as %%") from None
    except psycopg2.Error as exc:
        raise MirrorError(f"{MIRROR_KEY} failed its dry run (rolled back): {first_line(exc)}") from None
    finally:
        conn.rollback()


def fetch_rows(conn: psycopg2.extensions.connection, ids: list[int]) -> list[MirrorRow]:
    """The current state of these streamers (those removed or still unknown are left out)."""
    with conn.cursor() as cur:
        cur.execute(CURRENT_SQL + " AND id = ANY(%s)", (ids,))
        rows = [MirrorRow(*row) for row in cur.fetchall()]
    conn.rollback()
    return rows


def changed_since(conn: psycopg2.extensions.connection, since: datetime | None) -> tuple[list[MirrorRow], datetime]:
    """Rows updated at or after `since` (all of them if None), and the database's now() to pass next time."""
    with conn.cursor() as cur:
        cur.execute("SELECT now()")
        now_row = cur.fetchone()
        if since is None:
            cur.execute(CURRENT_SQL)
        else:
            cur.execute(CURRENT_SQL + " AND updated_at >= %s", (since,))
        rows = [MirrorRow(*row) for row in cur.fetchall()]
    conn.rollback()
    assert now_row is not None
    return rows, now_row[0]


def apply_row(conn: psycopg2.extensions.connection, statement: str, row: MirrorRow) -> None:
    """One application in its own transaction; the error is raised after the rollback."""
    try:
        with conn.cursor() as cur:
            cur.execute(statement, row.parameters())
        conn.commit()
    except BaseException:
        if not conn.closed:
            conn.rollback()
        raise


def failure_kind(exc: BaseException, conn: psycopg2.extensions.connection | None) -> str:
    """The metric label of a failed application."""
    if isinstance(exc, psycopg2.errors.LockNotAvailable):
        return "lock"
    if isinstance(exc, psycopg2.errors.QueryCanceled):
        return "timeout"
    if isinstance(exc, psycopg2.IntegrityError):
        return "constraint"
    if isinstance(exc, psycopg2.errors.InsufficientPrivilege):
        return "privilege"
    if isinstance(exc, (psycopg2.OperationalError, psycopg2.InterfaceError)) or (conn is not None and conn.closed):
        return "connection"
    return "error"


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
