"""The streamer list in PostgreSQL: add, remove, list, import, and the status summary.

Every function takes an open psycopg2 connection and commits its own work in one
transaction: a failed call leaves nothing half-written. Slugs and ids are validated here
(the database's CHECK and UNIQUE constraints stay the last line of defence), and every
error is a `StreamerError` whose message is fit to show a user as it is.

A streamer added without a channel id is stored *unresolved* (`channel_id` NULL,
`unresolved_reason` set): the running service resolves ids through Kick's API.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg2.errors
import psycopg2.extensions
import psycopg2.extras

from .messages import StreamerRef

SLUG_PATTERN = re.compile(r"[a-z0-9_-]{1,64}")
MAX_ID = 2**63 - 1  # bigint
WAITING_FOR_RESOLUTION = "waiting for id resolution"
ID_FIELDS = ("channel_id", "kick_user_id", "chatroom_id")
ID_LABELS = {"channel_id": "channel id", "kick_user_id": "user id", "chatroom_id": "chatroom id"}


class StreamerError(ValueError):
    """A rejected slug, id or change; the message names what and why."""


@dataclass(frozen=True, slots=True)
class Streamer:
    """One row of `kick_monitor.streamers`, as the CLI shows it."""

    id: int
    username: str
    channel_id: int | None
    kick_user_id: int | None
    chatroom_id: int | None
    status: str
    livestream_id: int | None
    stream_title: str | None
    last_status_change: datetime | None
    last_seen_online: datetime | None
    unresolved_reason: str | None
    created_at: datetime
    # seconds since last_status_change by the database's clock (None if it never changed)
    since_seconds: float | None = None
    # the open broadcast's start (online only), and seconds since it by the database's clock
    stream_started_at: datetime | None = None
    live_seconds: float | None = None

    @property
    def is_resolved(self) -> bool:
        return self.channel_id is not None

    @property
    def streamer_id(self) -> int:
        """The row id under the name sharding and messages use."""
        return self.id

    @property
    def is_monitored(self) -> bool:
        """A user id (API) or a channel id (Pusher) is known: a worker watches it."""
        return self.channel_id is not None or self.kick_user_id is not None

    def as_json(self) -> dict[str, Any]:
        """A JSON-ready dict: timestamps as ISO 8601 in UTC."""
        return {key: iso_utc(value) if isinstance(value, datetime) else value for key, value in asdict(self).items()}


def iso_utc(moment: datetime | None) -> str | None:
    """ISO 8601 in UTC, whatever the database session's time zone."""
    return None if moment is None else moment.astimezone(UTC).isoformat()


SELECT_COLUMNS = """
SELECT id, username, channel_id, kick_user_id, chatroom_id, status, livestream_id, stream_title,
       last_status_change, last_seen_online, unresolved_reason, created_at,
       EXTRACT(EPOCH FROM now() - last_status_change)::float8 AS since_seconds,
       stream_started_at, EXTRACT(EPOCH FROM now() - stream_started_at)::float8 AS live_seconds
FROM kick_monitor.streamers
"""


def validate_slug(slug: object) -> str:
    """The slug lower-cased, or StreamerError: letters, digits, `_` and `-` only, 1–64 characters."""
    if not isinstance(slug, str):
        raise StreamerError(f"slug must be text, got {type(slug).__name__}")
    cleaned = slug.strip().lower()
    if not cleaned:
        raise StreamerError("slug is empty")
    if len(cleaned) > 64:
        raise StreamerError(f"slug {_quote(slug)} is longer than 64 characters")
    if not SLUG_PATTERN.fullmatch(cleaned):
        raise StreamerError(f"slug {_quote(slug)} may only contain letters, digits, '_' and '-'")
    return cleaned


def validate_id(value: object, column: str = "channel_id") -> int | None:
    """A positive bigint from an int or a string of digits; None stays None (not known yet)."""
    label = ID_LABELS.get(column, column)
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        if not text.isascii() or not text.isdigit():
            raise StreamerError(f"{label} must be a positive integer, got {_quote(value)}")
        value = int(text)
    elif isinstance(value, bool) or not isinstance(value, int):
        raise StreamerError(f"{label} must be a positive integer, got {type(value).__name__}")
    if not 0 < value <= MAX_ID:
        raise StreamerError(f"{label} must be a positive integer below 2^63, got {value}")
    return value


def _quote(text: str, limit: int = 40) -> str:
    """`text` quoted for a message, shortened and with control characters escaped."""
    shown = text if len(text) <= limit else text[: limit - 1] + "…"
    return repr(shown)


@dataclass(frozen=True, slots=True)
class NewStreamer:
    """A validated streamer to insert."""

    username: str
    channel_id: int | None = None
    kick_user_id: int | None = None
    chatroom_id: int | None = None

    @classmethod
    def build(
        cls, slug: object, channel_id: object = None, user_id: object = None, chatroom_id: object = None
    ) -> NewStreamer:
        return cls(
            validate_slug(slug),
            validate_id(channel_id, "channel_id"),
            validate_id(user_id, "kick_user_id"),
            validate_id(chatroom_id, "chatroom_id"),
        )

    def row(self) -> tuple[Any, ...]:
        reason = None if self.channel_id is not None else WAITING_FOR_RESOLUTION
        return (self.username, self.channel_id, self.kick_user_id, self.chatroom_id, reason)


INSERT_INTO = "INSERT INTO kick_monitor.streamers (username, channel_id, kick_user_id, chatroom_id, unresolved_reason)"


def add_streamer(
    conn: psycopg2.extensions.connection,
    slug: object,
    *,
    channel_id: object = None,
    user_id: object = None,
    chatroom_id: object = None,
) -> Streamer:
    """Insert one streamer; StreamerError if the slug, channel id or user id is taken."""
    new = NewStreamer.build(slug, channel_id, user_id, chatroom_id)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(
                INSERT_INTO + " VALUES (%s, %s, %s, %s, %s)",
                new.row(),
            )
    except psycopg2.errors.UniqueViolation:
        raise StreamerError(_describe_conflict(conn, new) or f"streamer {new.username!r} conflicts") from None
    found = find_streamer(conn, new.username)
    assert found is not None
    return found


def _describe_conflict(conn: psycopg2.extensions.connection, new: NewStreamer) -> str | None:
    """Why `new` cannot be inserted next to the rows already there; None if it can."""
    with conn, conn.cursor() as cur:
        cur.execute(
            """SELECT username, channel_id, kick_user_id FROM kick_monitor.streamers
               WHERE username = %s OR channel_id = %s OR kick_user_id = %s""",
            (new.username, new.channel_id, new.kick_user_id),
        )
        rows = cur.fetchall()
    for username, _, _ in rows:
        if username == new.username:
            return f"streamer {new.username!r} already exists"
    for username, channel_id, _ in rows:
        if new.channel_id is not None and channel_id == new.channel_id:
            return f"channel id {new.channel_id} already belongs to streamer {username!r}"
    for username, _, kick_user_id in rows:
        if new.kick_user_id is not None and kick_user_id == new.kick_user_id:
            return f"user id {new.kick_user_id} already belongs to streamer {username!r}"
    return None


def remove_streamer(conn: psycopg2.extensions.connection, slug: object) -> bool:
    """Delete a streamer (its history stays); False if there was none by that slug."""
    username = validate_slug(slug)
    with conn, conn.cursor() as cur:
        cur.execute("DELETE FROM kick_monitor.streamers WHERE username = %s", (username,))
        return cur.rowcount > 0


def list_streamers(conn: psycopg2.extensions.connection) -> list[Streamer]:
    """Every streamer, by slug."""
    with conn, conn.cursor() as cur:
        cur.execute(SELECT_COLUMNS + "ORDER BY username")
        return [Streamer(*row) for row in cur.fetchall()]


LOAD_CHUNK = 2000  # rows of the streamer list turned into Python objects at a time (load_monitorable)


def load_monitorable(
    conn: psycopg2.extensions.connection, known: Callable[[int], StreamerRef | None] | None = None,
) -> list[StreamerRef]:
    """Every streamer a worker can watch (user id or channel id known), with its last committed status.

    Those without a channel id are watched through the API only (no Pusher) until it is known.

    `known` (streamer id -> the ref the caller holds now): a row equal to the held ref in every
    field but its assignment generation is returned as that very object. Rows arrive `LOAD_CHUNK`
    at a time (a server-side cursor outside autocommit). Why both, measured at 100,000 streamers
    (`python -m kick_tools.bench.planner_memory`, docs/performance.md): one `fetchall` and a fresh
    ref per row made ~600,000 short-lived objects a reload, and the few that lived on (changed
    rows) pinned pymalloc's pools among them; the planner kept ~20 MB of free but unreturnable heap.
    """
    # one shared str per status instead of one per row: 55 bytes a streamer in the planner (100k: 5 MB)
    status = {name: name for name in ("online", "offline", "unknown")}
    refs: list[StreamerRef] = []
    cur = conn.cursor() if conn.autocommit else conn.cursor(name="kick_monitor_load_monitorable")
    try:
        cur.itersize = LOAD_CHUNK
        cur.execute(
            "SELECT id, username, channel_id, kick_user_id, status, COALESCE(livestream_id, last_livestream_id),"
            " extract(epoch FROM stream_started_at)::float8"
            " FROM kick_monitor.streamers WHERE channel_id IS NOT NULL OR kick_user_id IS NOT NULL ORDER BY id"
        )
        while rows := cur.fetchmany(LOAD_CHUNK):
            for r in rows:
                held = known(r[0]) if known is not None else None
                if held is not None and (held.username, held.channel_id, held.kick_user_id, held.status,
                                         held.livestream_id, held.started_at) == r[1:]:
                    refs.append(held)
                else:
                    refs.append(StreamerRef(r[0], r[1], r[2], r[3], status.get(r[4], r[4]), r[5], started_at=r[6]))
    finally:
        cur.close()
    conn.rollback()
    return refs


def count_subscribable(conn: psycopg2.extensions.connection) -> int:
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM kick_monitor.streamers WHERE channel_id IS NOT NULL")
        row = cur.fetchone()
    conn.rollback()
    return int(row[0]) if row else 0


def count_by_status(conn: psycopg2.extensions.connection) -> dict[str, int]:
    """Streamers per status, with those still waiting for their ids as `unresolved`."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT CASE WHEN channel_id IS NULL AND kick_user_id IS NULL THEN 'unresolved' ELSE status END, count(*)"
            " FROM kick_monitor.streamers GROUP BY 1"
        )
        counts = {str(status): int(n) for status, n in cur.fetchall()}
    conn.rollback()
    return {status: counts.get(status, 0) for status in ("online", "offline", "unknown", "unresolved")}


def find_streamer(conn: psycopg2.extensions.connection, slug: object) -> Streamer | None:
    username = validate_slug(slug)
    with conn, conn.cursor() as cur:
        cur.execute(SELECT_COLUMNS + "WHERE username = %s", (username,))
        row = cur.fetchone()
    return Streamer(*row) if row else None


# ---------------------------------------------------------------- import


@dataclass(frozen=True, slots=True)
class BadLine:
    """A line of an import file that was not imported, and why."""

    number: int
    text: str
    reason: str


@dataclass(slots=True)
class ImportReport:
    """What an import did: counts, and every bad line with its number."""

    added: int = 0
    already_present: int = 0
    lines: int = 0
    bad_lines: list[BadLine] = field(default_factory=list)


HEADER = ("slug", "channel_id", "user_id", "chatroom_id")
HEADER_ALIASES = {"username": "slug", "kick_user_id": "user_id"}
IMPORT_CHUNK = 1000


def split_row(text: str) -> list[str] | None:
    """The cells of one line, read as CSV (quoted fields, `""` escapes); None if there are none.

    `#` starts a comment (no slug or id can contain one, so it never hides data); trailing
    empty cells are dropped, so a spreadsheet's padding (`xqc,668,,,`) and its blank rows
    (`,,,`) read like a short line and a blank one.
    """
    content = text.split("#", 1)[0].strip()
    if not content:
        return None
    cells = [cell.strip() for cell in next(csv.reader([content], skipinitialspace=True))]
    while cells and not cells[-1]:
        cells.pop()
    return cells or None


def parse_import_line(text: str) -> NewStreamer | None:
    """One line of an import file: `slug` or `slug,channel_id,user_id,chatroom_id` (ids optional).

    Returns None for blank lines and `#` comments; raises StreamerError for bad ones.
    """
    if "\ufffd" in text.split("#", 1)[0]:  # what the reader puts where bytes were not UTF-8
        raise StreamerError("line is not UTF-8 text")
    try:
        fields = split_row(text)
    except csv.Error as exc:
        raise StreamerError(f"not a CSV line: {exc}") from None
    if fields is None:
        return None
    if len(fields) > len(HEADER):
        raise StreamerError(f"expected at most {len(HEADER)} fields (slug,channel_id,user_id,chatroom_id)")
    fields += [""] * (len(HEADER) - len(fields))
    return NewStreamer.build(*fields)


def _header_names(text: str) -> list[str]:
    """A row's cells as header names: lower case, `Channel ID` = `channel-id` = `channel_id`."""
    try:
        cells = split_row(text) or []
    except csv.Error:
        return []
    names = [re.sub(r"[\s-]+", "_", cell.lower()) for cell in cells]
    return [HEADER_ALIASES.get(name, name) for name in names]


def is_header(text: str) -> bool:
    """A first row naming its columns (`slug,...` or `username,...`, any case, quoted or not)."""
    names = _header_names(text)
    return bool(names) and names[0] == "slug"


def check_header(text: str) -> None:
    names = tuple(_header_names(text))
    if names != HEADER[: len(names)]:
        raise StreamerError("header must be slug,channel_id,user_id,chatroom_id (trailing ones optional)")


def import_streamers(
    conn: psycopg2.extensions.connection,
    lines: Iterable[str],
    *,
    chunk_size: int = IMPORT_CHUNK,
    progress: Callable[[ImportReport], None] | None = None,
) -> ImportReport:
    """Import streamers from lines of CSV text (a spreadsheet export); bad lines are reported, good ones kept.

    Each chunk of good lines is inserted in one transaction. A slug that already exists
    with the same ids (or without ids on the line) counts as already present, so
    re-running an import is harmless. `progress(report)` is called after each chunk.
    """
    report = ImportReport()
    seen_slugs: dict[str, int] = {}
    seen_ids: dict[tuple[str, int], int] = {}
    for chunk in _chunks(_parse_lines(lines, report, seen_slugs, seen_ids), chunk_size):
        _insert_chunk(conn, chunk, report)
        if progress is not None:
            progress(report)
    report.bad_lines.sort(key=lambda bad: bad.number)
    return report


def _parse_lines(
    lines: Iterable[str],
    report: ImportReport,
    seen_slugs: dict[str, int],
    seen_ids: dict[tuple[str, int], int],
) -> Iterator[tuple[int, str, NewStreamer]]:
    """Valid, in-file-unique streamers with their line numbers; bad lines go to the report."""
    first_content = True
    for number, raw in enumerate(lines, start=1):
        text = raw.rstrip("\r\n")
        if number == 1:  # a byte-order mark the reader did not remove (stdin, or lines from code)
            text = text.removeprefix("\ufeff")
        report.lines = number
        try:
            if first_content and _header_names(text):
                first_content = False
                if is_header(text):
                    check_header(text)
                    continue
            new = parse_import_line(text)
            if new is None:
                continue
            if new.username in seen_slugs:
                raise StreamerError(f"streamer {new.username!r} repeats line {seen_slugs[new.username]}")
            for column in ("channel_id", "kick_user_id"):
                value = getattr(new, column)
                if value is not None and (column, value) in seen_ids:
                    raise StreamerError(f"{ID_LABELS[column]} {value} repeats line {seen_ids[(column, value)]}")
        except StreamerError as exc:
            report.bad_lines.append(BadLine(number, text, str(exc)))
            continue
        seen_slugs[new.username] = number
        for column in ("channel_id", "kick_user_id"):
            value = getattr(new, column)
            if value is not None:
                seen_ids[(column, value)] = number
        yield number, text, new


def _chunks(items: Iterable[tuple[int, str, NewStreamer]], size: int) -> Iterator[list[tuple[int, str, NewStreamer]]]:
    chunk: list[tuple[int, str, NewStreamer]] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def insert_new(cur: psycopg2.extensions.cursor, rows: Sequence[NewStreamer], *, page_size: int = 1000) -> list[str]:
    """Insert streamers that are not there yet (one round trip per page); the slugs inserted."""
    inserted = psycopg2.extras.execute_values(
        cur,
        INSERT_INTO + " VALUES %s ON CONFLICT DO NOTHING RETURNING username",
        [new.row() for new in rows],
        page_size=max(1, page_size),
        fetch=True,
    )
    return [row[0] for row in inserted]


def _insert_chunk(
    conn: psycopg2.extensions.connection, chunk: Sequence[tuple[int, str, NewStreamer]], report: ImportReport
) -> None:
    """Insert one chunk in one transaction; rows that hit an existing one are explained, not forced."""
    with conn, conn.cursor() as cur:
        added = set(insert_new(cur, [new for _, _, new in chunk], page_size=len(chunk)))
        rest = [item for item in chunk if item[2].username not in added]
        existing = _existing_rows(cur, [new for _, _, new in rest]) if rest else []
    report.added += len(added)
    for number, text, new in rest:
        reason = _conflict_reason(new, existing)
        if reason is None:
            report.already_present += 1
        else:
            report.bad_lines.append(BadLine(number, text, reason))


def _existing_rows(
    cur: psycopg2.extensions.cursor, rest: Sequence[NewStreamer]
) -> list[tuple[str, int | None, int | None, int | None]]:
    cur.execute(
        """SELECT username, channel_id, kick_user_id, chatroom_id FROM kick_monitor.streamers
           WHERE username = ANY(%s) OR channel_id = ANY(%s) OR kick_user_id = ANY(%s)""",
        (
            [new.username for new in rest],
            [new.channel_id for new in rest if new.channel_id is not None],
            [new.kick_user_id for new in rest if new.kick_user_id is not None],
        ),
    )
    return list(cur.fetchall())


def _conflict_reason(
    new: NewStreamer, existing: Sequence[tuple[str, int | None, int | None, int | None]]
) -> str | None:
    """None if the row already there is this same streamer; else why the line was refused."""
    for username, channel_id, kick_user_id, chatroom_id in existing:
        if username != new.username:
            continue
        stored = {"channel_id": channel_id, "kick_user_id": kick_user_id, "chatroom_id": chatroom_id}
        for column, value in stored.items():
            wanted = getattr(new, column)
            if wanted is not None and wanted != value:
                shown = "none" if value is None else value
                return (
                    f"streamer {new.username!r} already exists with {ID_LABELS[column]} {shown}, "
                    f"not {wanted} (remove it first to change its ids)"
                )
        return None
    for username, channel_id, kick_user_id, _ in existing:
        if new.channel_id is not None and channel_id == new.channel_id:
            return f"channel id {new.channel_id} already belongs to streamer {username!r}"
        if new.kick_user_id is not None and kick_user_id == new.kick_user_id:
            return f"user id {new.kick_user_id} already belongs to streamer {username!r}"
    return "not inserted: the streamer list changed during the import; run it again"


# ---------------------------------------------------------------- status


@dataclass(frozen=True, slots=True)
class StatusSummary:
    """Every streamer and the counts the `status` command prints under its table."""

    streamers: list[Streamer]
    online: int
    offline: int
    unknown: int
    unresolved: int
    without_pusher: int = 0  # monitored through the API only (no channel id yet)

    @property
    def total(self) -> int:
        return len(self.streamers)

    def counts(self) -> dict[str, int]:
        return {
            "online": self.online,
            "offline": self.offline,
            "unknown": self.unknown,
            "unresolved": self.unresolved,
            "total": self.total,
            "without_pusher": self.without_pusher,
        }


def status_summary(conn: psycopg2.extensions.connection) -> StatusSummary:
    """Every streamer with its status; unresolved ones (neither user id nor channel id) are
    counted apart, and those monitored without Pusher (user id only) once more on their own."""
    streamers = list_streamers(conn)
    monitored = [s for s in streamers if s.is_monitored]
    return StatusSummary(
        streamers=streamers,
        online=sum(1 for s in monitored if s.status == "online"),
        offline=sum(1 for s in monitored if s.status == "offline"),
        unknown=sum(1 for s in monitored if s.status == "unknown"),
        unresolved=len(streamers) - len(monitored),
        without_pusher=sum(1 for s in monitored if s.channel_id is None),
    )
