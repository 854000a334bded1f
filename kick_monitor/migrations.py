"""Versioned schema migrations, applied by `kick-monitor db migrate`.

Everything lives in its own PostgreSQL schema, `kick_monitor`, so an existing database
with tables of its own (even one called `streamers`) is never touched. Each migration
runs in one transaction under an advisory lock: safe to re-run, safe to run twice at once,
safe while the monitor runs (only additive DDL).
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg2.extensions

SCHEMA = "kick_monitor"
ADVISORY_LOCK_KEY = 0x4B49434B  # "KICK"
STATUS_CHANNEL = "kick_monitor_status"
STREAMERS_CHANNEL = "kick_monitor_streamers"


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "streamers, status history, notify triggers",
        """
CREATE TABLE kick_monitor.streamers (
    id                 bigserial PRIMARY KEY,
    username           text NOT NULL UNIQUE
                       CONSTRAINT streamers_username_format CHECK (username ~ '^[a-z0-9_-]{1,64}$'),
    kick_user_id       bigint UNIQUE,
    channel_id         bigint UNIQUE,
    chatroom_id        bigint,
    status             text NOT NULL DEFAULT 'unknown'
                       CONSTRAINT streamers_status CHECK (status IN ('online', 'offline', 'unknown')),
    livestream_id      bigint,
    stream_title       text,
    last_status_change timestamptz,
    last_seen_online   timestamptz,
    last_event_at      timestamptz,
    unresolved_reason  text,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
) WITH (fillfactor = 70);  -- room on each page so status updates are HOT (no index writes)

CREATE TABLE kick_monitor.status_events (
    id              bigserial PRIMARY KEY,
    change_id       text NOT NULL UNIQUE,
    streamer_id     bigint NOT NULL,  -- no FK: history is an append-only log that outlives a removed streamer
    channel_id      bigint NOT NULL,
    status          text NOT NULL CONSTRAINT status_events_status CHECK (status IN ('online', 'offline')),
    previous_status text NOT NULL,
    source          text NOT NULL CONSTRAINT status_events_source CHECK (source IN ('pusher', 'api')),
    event           text NOT NULL,
    livestream_id   bigint,
    title           text,
    occurred_at     timestamptz,
    received_at     timestamptz NOT NULL,
    recorded_at     timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX status_events_streamer_received ON kick_monitor.status_events (streamer_id, received_at);

-- The coordinator LISTENs here to pick up streamer list changes without a restart.
-- Status updates by the writer touch none of these columns, so they do not notify.
CREATE FUNCTION kick_monitor.notify_streamers_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('kick_monitor_streamers', json_build_object(
        'op', TG_OP,
        'id', COALESCE(NEW.id, OLD.id),
        'channel_id', CASE WHEN TG_OP = 'DELETE' THEN OLD.channel_id ELSE NEW.channel_id END
    )::text);
    RETURN NULL;
END $$;

CREATE TRIGGER streamers_changed_insert_delete
    AFTER INSERT OR DELETE ON kick_monitor.streamers
    FOR EACH ROW EXECUTE FUNCTION kick_monitor.notify_streamers_changed();
CREATE TRIGGER streamers_changed_ids
    AFTER UPDATE OF channel_id, kick_user_id, username ON kick_monitor.streamers
    FOR EACH ROW
    WHEN (OLD.channel_id IS DISTINCT FROM NEW.channel_id
          OR OLD.kick_user_id IS DISTINCT FROM NEW.kick_user_id
          OR OLD.username IS DISTINCT FROM NEW.username)
    EXECUTE FUNCTION kick_monitor.notify_streamers_changed();
""",
    ),
    # Issue 14 (ordering without the wall clock). Expand-only: a release that knows only
    # migration 1 keeps working on it (new columns have defaults, it never reads them).
    Migration(
        2,
        "assignment generations: order changes without the wall clock",
        """
CREATE SEQUENCE IF NOT EXISTS kick_monitor.assignment_generation AS bigint;

-- The (generation, seq) of the change the row holds: what "newer" means for the writer.
-- 0/0 = written before this migration (or by an older release); any new change outranks it.
ALTER TABLE kick_monitor.streamers
    ADD COLUMN IF NOT EXISTS order_generation bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS order_seq        bigint NOT NULL DEFAULT 0;

-- History in clock-free order: ORDER BY order_generation, order_seq, received_at.
ALTER TABLE kick_monitor.status_events
    ADD COLUMN IF NOT EXISTS order_generation bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS order_seq        bigint NOT NULL DEFAULT 0;
""",
    ),
    # Issue 13 (one Kick API rate budget per app, shared by every process of a deployment:
    # kick_monitor/api_budget.py). Expand-only: a new table nothing older reads.
    Migration(
        3,
        "shared Kick API rate budget",
        """
CREATE TABLE IF NOT EXISTS kick_monitor.api_budget (
    app text PRIMARY KEY,  -- a hash of the client id: never the id itself
    base_rate float8 NOT NULL,
    rate float8 NOT NULL,
    burst float8 NOT NULL,
    tokens float8 NOT NULL,
    refilled_at timestamptz NOT NULL,
    paused_until timestamptz NOT NULL DEFAULT '-infinity',
    rate_limited_total bigint NOT NULL DEFAULT 0
);
""",
    ),
)

LATEST_VERSION = MIGRATIONS[-1].version


class SchemaError(RuntimeError):
    """The database schema is missing, too old, or newer than this program."""


def current_version(conn: psycopg2.extensions.connection) -> int:
    """The highest applied migration, 0 if none; never creates anything."""
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass('kick_monitor.schema_migrations')")
        row = cur.fetchone()
        if row is None or row[0] is None:
            return 0
        cur.execute("SELECT COALESCE(max(version), 0) FROM kick_monitor.schema_migrations")
        found = cur.fetchone()
    return int(found[0]) if found else 0


def migrate(conn: psycopg2.extensions.connection) -> list[Migration]:
    """Apply every pending migration, each in its own transaction; return those applied."""
    applied: list[Migration] = []
    for migration in MIGRATIONS:
        with conn, conn.cursor() as cur:  # one transaction per migration
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (ADVISORY_LOCK_KEY,))
            cur.execute("CREATE SCHEMA IF NOT EXISTS kick_monitor")
            cur.execute(
                """CREATE TABLE IF NOT EXISTS kick_monitor.schema_migrations (
                       version    integer PRIMARY KEY,
                       name       text NOT NULL,
                       applied_at timestamptz NOT NULL DEFAULT now())"""
            )
            cur.execute("SELECT 1 FROM kick_monitor.schema_migrations WHERE version = %s", (migration.version,))
            if cur.fetchone() is not None:
                continue
            cur.execute(migration.sql)
            cur.execute(
                "INSERT INTO kick_monitor.schema_migrations (version, name) VALUES (%s, %s)",
                (migration.version, migration.name),
            )
            applied.append(migration)
    return applied


def require_current(conn: psycopg2.extensions.connection) -> int:
    """Raise SchemaError unless the schema is exactly the version this program knows."""
    version = current_version(conn)
    conn.rollback()
    if version == 0:
        raise SchemaError("database has no kick-monitor schema; run `kick-monitor db migrate`")
    if version < LATEST_VERSION:
        raise SchemaError(f"schema version {version} is older than {LATEST_VERSION}; run `kick-monitor db migrate`")
    if version > LATEST_VERSION:
        raise SchemaError(f"schema version {version} is newer than this program ({LATEST_VERSION}); upgrade it")
    return version
