"""The streamer list from the application's own table (`KICK_MONITOR_STREAMERS_SOURCE`).

The user's read-only query returns `slug` and optionally `channel_id`, `user_id`; while it is
configured it *is* the list: `sync_source` makes `kick_monitor.streamers` equal to it (adds,
removes — history stays, status_events has no foreign key — and fills in ids the source
knows). The planner runs it at start, on the user's NOTIFY channel and every reload interval.

All or nothing: a query that fails, lacks a `slug` column, or returns one bad row changes
nothing (the previous list stays in force) and raises `SourceError`, one line naming the row.
The query runs in a READ ONLY transaction with a statement timeout, so a source can neither
write nor hang the planner. With several process trees, a session advisory lock lets one of
them sync at a time; the others skip that round (they get the result through the
`kick_monitor_streamers` trigger like any other list change).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg2
import psycopg2.errors
import psycopg2.extensions
import psycopg2.extras

from .streamers import NewStreamer, StreamerError, insert_new

SOURCE_KEY = "KICK_MONITOR_STREAMERS_SOURCE"
SOURCE_LOCK_KEY = 0x4B4D5353  # advisory lock "KMSS": one source sync per deployment at a time
SOURCE_TIMEOUT_MS = 10000
COLUMNS = ("slug", "channel_id", "user_id")
SHOWN_BAD = 3


class SourceError(RuntimeError):
    """The source cannot be used as it is; the message is one line, fit for a log or the CLI."""


@dataclass(frozen=True, slots=True)
class Current:
    """What `kick_monitor.streamers` holds for one streamer, as far as a sync cares."""

    username: str
    channel_id: int | None
    kick_user_id: int | None


@dataclass(slots=True)
class SyncPlan:
    """What to change so that the list equals the source."""

    add: list[NewStreamer] = field(default_factory=list)
    remove: list[str] = field(default_factory=list)
    set_ids: list[NewStreamer] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.add or self.remove or self.set_ids)

    def summary(self) -> str:
        return f"+{len(self.add)} -{len(self.remove)} ids {len(self.set_ids)}"


@dataclass(frozen=True, slots=True)
class SyncResult:
    rows: int
    plan: SyncPlan


def validate_rows(columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[NewStreamer]:
    """The source's rows as streamers; SourceError naming the first bad rows (1-based), if any."""
    names = [name.lower() for name in columns]
    if "slug" not in names:
        shown = ", ".join(names) or "none"
        raise SourceError(f"{SOURCE_KEY} must return a column named slug (it returned: {shown})")
    where = {name: names.index(name) for name in COLUMNS if name in names}
    wanted: list[NewStreamer] = []
    seen: dict[tuple[str, object], int] = {}
    bad: list[str] = []
    count = 0
    for number, row in enumerate(rows, start=1):
        count = number
        values = {name: row[index] for name, index in where.items()}
        try:
            if values["slug"] is None:
                raise StreamerError("slug is NULL")
            new = NewStreamer.build(values["slug"], values.get("channel_id"), values.get("user_id"))
            for key in (("slug", new.username), ("channel id", new.channel_id), ("user id", new.kick_user_id)):
                if key[1] is not None and key in seen:
                    raise StreamerError(f"{key[0]} {key[1]!r} repeats row {seen[key]}")
            for key in (("slug", new.username), ("channel id", new.channel_id), ("user id", new.kick_user_id)):
                if key[1] is not None:
                    seen[key] = number
        except StreamerError as exc:
            bad.append(f"row {number} ({_show_row(values)}): {exc}")
            continue
        wanted.append(new)
    if bad:
        more = f" (and {len(bad) - SHOWN_BAD} more bad rows)" if len(bad) > SHOWN_BAD else ""
        raise SourceError(
            f"{SOURCE_KEY}: {len(bad)} of {count} rows are bad, the list is left as it was: "
            + "; ".join(bad[:SHOWN_BAD]) + more
        )
    return wanted


def plan_sync(wanted: Sequence[NewStreamer], current: Sequence[Current]) -> SyncPlan:
    """The changes that make `current` equal to `wanted` (the source wins on ids it gives)."""
    have = {row.username: row for row in current}
    want = {new.username: new for new in wanted}
    plan = SyncPlan()
    for new in wanted:
        row = have.get(new.username)
        if row is None:
            plan.add.append(new)
        elif (new.channel_id is not None and new.channel_id != row.channel_id) or (
            new.kick_user_id is not None and new.kick_user_id != row.kick_user_id
        ):
            plan.set_ids.append(new)
    plan.remove = sorted(name for name in have if name not in want)
    return plan


def read_source(conn: psycopg2.extensions.connection, query: str) -> list[NewStreamer]:
    """Run the source query read-only, bounded in time; its rows validated (SourceError if not)."""
    columns, rows = fetch_source(conn, query)
    return validate_rows(columns, rows)


def fetch_source(
    conn: psycopg2.extensions.connection, query: str, limit: int | None = None
) -> tuple[list[str], list[tuple[Any, ...]]]:
    """The source query's column names and rows (at most `limit`), in a READ ONLY transaction."""
    try:
        with conn.cursor() as cur:
            cur.execute("SET TRANSACTION READ ONLY")
            cur.execute("SET LOCAL statement_timeout = %s", (SOURCE_TIMEOUT_MS,))
            cur.execute(query)
            if cur.description is None:
                raise SourceError(f"{SOURCE_KEY} returned no rows at all: it must be a query (SELECT …)")
            columns = [column.name for column in cur.description]
            rows = cur.fetchall() if limit is None else cur.fetchmany(limit)
    except psycopg2.OperationalError:
        conn.rollback()
        raise
    except psycopg2.Error as exc:
        conn.rollback()
        raise SourceError(f"{SOURCE_KEY} failed: {first_line(exc)}") from None
    except SourceError:
        conn.rollback()
        raise
    conn.rollback()
    return columns, rows


def load_current(conn: psycopg2.extensions.connection) -> list[Current]:
    with conn.cursor() as cur:
        cur.execute("SELECT username, channel_id, kick_user_id FROM kick_monitor.streamers")
        return [Current(*row) for row in cur.fetchall()]


def apply_plan(conn: psycopg2.extensions.connection, plan: SyncPlan) -> None:
    """One transaction: removals first (their ids may pass to others), then ids, then additions."""
    try:
        with conn, conn.cursor() as cur:
            if plan.remove:
                cur.execute("DELETE FROM kick_monitor.streamers WHERE username = ANY(%s)", (plan.remove,))
            for new in plan.set_ids:
                cur.execute(
                    "UPDATE kick_monitor.streamers SET channel_id = COALESCE(%s, channel_id),"
                    " kick_user_id = COALESCE(%s, kick_user_id),"
                    " unresolved_reason = CASE WHEN COALESCE(%s, channel_id) IS NULL THEN unresolved_reason END,"
                    " updated_at = now() WHERE username = %s",
                    (new.channel_id, new.kick_user_id, new.channel_id, new.username),
                )
            if plan.add:
                insert_new(cur, plan.add)
    except psycopg2.errors.UniqueViolation as exc:
        raise SourceError(
            f"{SOURCE_KEY}: an id it gives belongs to another streamer, the list is left as it was:"
            f" {first_line(exc)} {_detail(exc)}".rstrip()
        ) from None


def sync_source(conn: psycopg2.extensions.connection, query: str) -> SyncResult | None:
    """Make the list equal to the source; None if another process holds the sync lock.

    Raises SourceError (nothing changed) or psycopg2.OperationalError (connection trouble).
    """
    if not _try_lock(conn):
        return None
    try:
        wanted = read_source(conn, query)
        with conn:
            plan = plan_sync(wanted, load_current(conn))
        if plan:
            apply_plan(conn, plan)
        return SyncResult(len(wanted), plan)
    finally:
        _unlock(conn)


def _try_lock(conn: psycopg2.extensions.connection) -> bool:
    with conn.cursor() as cur:
        cur.execute("SELECT pg_try_advisory_lock(%s)", (SOURCE_LOCK_KEY,))
        row = cur.fetchone()
    conn.commit()
    return bool(row and row[0])


def _unlock(conn: psycopg2.extensions.connection) -> None:
    if conn.closed:
        return
    try:
        conn.rollback()
        with conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_unlock(%s)", (SOURCE_LOCK_KEY,))
        conn.commit()
    except psycopg2.Error:
        pass  # the session is gone, and its lock with it


def _show_row(values: dict[str, Any]) -> str:
    return ", ".join(f"{name}={_short(value)}" for name, value in values.items())


def _short(value: object, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _detail(exc: psycopg2.Error) -> str:
    diag = getattr(exc, "diag", None)
    detail = getattr(diag, "message_detail", None) if diag is not None else None
    return f"({detail})" if detail else ""


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
