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
NOTIFY_TARGETS_CHANNEL = "kick_monitor_notify_targets"  # notifier: targets changed


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str
    # The oldest code that can run on this schema, named by the newest migration that code
    # knows (its LATEST_VERSION). None: only code that knows this migration. An expand-only
    # migration names the migration before it, so nodes of the previous release keep running
    # during a rolling upgrade (issue 17; `require_compatible`).
    oldest_code: int | None = None


# One broadcast per online transition of the history, ended by the next transition (an
# offline; or another online, whose start then implies the end: marked inferred). Safe to
# run again: an online row that already names its broadcast is skipped, so it also picks up
# history a previous release wrote after the migration (expand-only: it may still run).
BACKFILL_SQL = """
WITH ordered AS (
    SELECT e.id, e.streamer_id, e.status, e.source, e.livestream_id, e.title, e.broadcast_id, e.received_at,
           COALESCE(e.occurred_at, e.received_at) AS at,
           lead(e.id) OVER w AS next_id,
           lead(e.status) OVER w AS next_status,
           lead(e.source) OVER w AS next_source,
           lead(e.received_at) OVER w AS next_received,
           lead(COALESCE(e.occurred_at, e.received_at)) OVER w AS next_at
    FROM kick_monitor.status_events e
    WINDOW w AS (PARTITION BY e.streamer_id ORDER BY e.order_generation, e.order_seq, e.received_at, e.id)
),
pairs AS MATERIALIZED (
    SELECT nextval('kick_monitor.broadcasts_id_seq') AS bid, o.*
    FROM ordered o WHERE o.status = 'online' AND o.broadcast_id IS NULL
),
made AS (
    INSERT INTO kick_monitor.broadcasts
        (id, streamer_id, started_at, ended_at, start_title, last_title, livestream_id,
         start_source, end_source, end_inferred,
         pusher_start_seen_at, api_start_seen_at, pusher_end_seen_at, api_end_seen_at)
    SELECT p.bid, p.streamer_id, p.at, p.next_at, p.title, p.title, p.livestream_id,
           p.source,
           CASE p.next_status WHEN 'offline' THEN p.next_source WHEN 'online' THEN 'history' END,
           COALESCE(p.next_status = 'online', false),
           CASE WHEN p.source = 'pusher' THEN p.received_at END,
           CASE WHEN p.source = 'api' THEN p.received_at END,
           CASE WHEN p.next_status = 'offline' AND p.next_source = 'pusher' THEN p.next_received END,
           CASE WHEN p.next_status = 'offline' AND p.next_source = 'api' THEN p.next_received END
    FROM pairs p
    RETURNING id
)
UPDATE kick_monitor.status_events e SET broadcast_id = p.bid
FROM (SELECT id, bid FROM pairs
      UNION ALL
      SELECT next_id, bid FROM pairs WHERE next_status = 'offline') p
WHERE e.id = p.id;

UPDATE kick_monitor.streamers s SET broadcast_id = b.id, stream_started_at = b.started_at
FROM (SELECT DISTINCT ON (streamer_id) id, streamer_id, started_at, ended_at
      FROM kick_monitor.broadcasts ORDER BY streamer_id, started_at DESC, id DESC) b
WHERE b.streamer_id = s.id AND b.ended_at IS NULL AND s.status = 'online' AND s.broadcast_id IS NULL;

UPDATE kick_monitor.streamers s SET last_livestream_id = COALESCE(s.livestream_id, b.livestream_id)
FROM (SELECT DISTINCT ON (streamer_id) streamer_id, livestream_id FROM kick_monitor.broadcasts
      WHERE livestream_id IS NOT NULL ORDER BY streamer_id, started_at DESC, id DESC) b
WHERE b.streamer_id = s.id AND s.last_livestream_id IS NULL;
"""


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
    # Issue 13 (every streamer from its user id; one row per broadcast). Expand-only: a
    # release that knows only migration 2 keeps writing (channel_id is still filled by it,
    # the new columns have defaults, the widened CHECK admits what it writes).
    Migration(
        4,
        "streamer id as the key, broadcasts, inferred transitions",
        """
-- The streamer's own row id is the key; a channel id is one attribute that enables Pusher.
ALTER TABLE kick_monitor.status_events ALTER COLUMN channel_id DROP NOT NULL;
ALTER TABLE kick_monitor.status_events DROP CONSTRAINT IF EXISTS status_events_source;
ALTER TABLE kick_monitor.status_events ADD CONSTRAINT status_events_source
    CHECK (source IN ('pusher', 'api', 'webhook'));
-- inferred: a transition no source reported but another one implies (an end followed by
-- a different broadcast's start while the row said online: the S4 history gap).
ALTER TABLE kick_monitor.status_events
    ADD COLUMN IF NOT EXISTS inferred     boolean NOT NULL DEFAULT false,
    ADD COLUMN IF NOT EXISTS broadcast_id bigint;
-- The open broadcast of an online streamer (NULL when offline) and its start.
-- last_livestream_id: Pusher's id of the last broadcast known, kept when offline (an end
-- carrying another id shows a broadcast whose start nobody saw).
ALTER TABLE kick_monitor.streamers
    ADD COLUMN IF NOT EXISTS broadcast_id       bigint,
    ADD COLUMN IF NOT EXISTS stream_started_at  timestamptz,
    ADD COLUMN IF NOT EXISTS last_livestream_id bigint;

-- One row per broadcast, matched across sources by streamer + start time (within a
-- tolerance) or Pusher's livestream id. No FK: like history, it outlives a removed streamer.
CREATE TABLE IF NOT EXISTS kick_monitor.broadcasts (
    id                    bigserial PRIMARY KEY,
    streamer_id           bigint NOT NULL,
    started_at            timestamptz NOT NULL,
    ended_at              timestamptz,
    start_title           text,
    last_title            text,
    category              text,
    livestream_id         bigint,  -- Pusher's livestream.id
    stream_uuid           text,    -- /public/v2/livestreams id, when seen
    start_source          text NOT NULL CONSTRAINT broadcasts_start_source
                          CHECK (start_source IN ('pusher', 'api', 'webhook', 'history')),
    end_source            text CONSTRAINT broadcasts_end_source
                          CHECK (end_source IN ('pusher', 'api', 'webhook', 'history')),
    start_inferred        boolean NOT NULL DEFAULT false,
    end_inferred          boolean NOT NULL DEFAULT false,
    pusher_start_seen_at  timestamptz,  -- when each source first reported the start / the end
    api_start_seen_at     timestamptz,
    webhook_start_seen_at timestamptz,
    pusher_end_seen_at    timestamptz,
    api_end_seen_at       timestamptz,
    webhook_end_seen_at   timestamptz,
    updated_at            timestamptz NOT NULL DEFAULT now()
) WITH (fillfactor = 70);  -- the end is an update of the row: room for it on the page (HOT, no index writes)
CREATE INDEX IF NOT EXISTS broadcasts_streamer_started ON kick_monitor.broadcasts (streamer_id, started_at);
"""
        + BACKFILL_SQL,
    ),
    # Issue 16 (webhook subscriptions, kick_monitor/webhook_subscriptions.py). Expand-only: two
    # new tables nothing older reads.
    Migration(
        5,
        "webhook subscriptions: state per streamer and event, last sync",
        """
-- What the last sync left for each (streamer, event): status and metrics read it. No FK: the
-- sync removes the rows of a removed streamer once its subscriptions are gone from Kick.
CREATE TABLE IF NOT EXISTS kick_monitor.webhook_subscriptions (
    streamer_id     bigint NOT NULL,
    event           text NOT NULL,
    kick_user_id    bigint NOT NULL,
    subscription_id text,
    state           text NOT NULL CONSTRAINT webhook_subscriptions_state
                    CHECK (state IN ('subscribed', 'missing', 'failed')),
    last_error      text,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (streamer_id, event)
);
-- One row: the last sync of the deployment (whichever process ran it).
CREATE TABLE IF NOT EXISTS kick_monitor.webhook_sync (
    id          smallint PRIMARY KEY CONSTRAINT webhook_sync_one_row CHECK (id = 1),
    started_at  timestamptz NOT NULL,
    finished_at timestamptz NOT NULL,
    outcome     text NOT NULL,
    error       text,
    fingerprint text,  -- digest of the (streamer, user id) list it synced
    created     integer NOT NULL DEFAULT 0,
    deleted     integer NOT NULL DEFAULT 0,
    recreated   integer NOT NULL DEFAULT 0
);
""",
        oldest_code=4,  # expand-only: code of schema 4 runs on it (rolling upgrade, issue 17)
    ),
    # -- notifier (issue 19): go-live notifications ------------------------------------------
    # Expand-only: new tables only the notifier and `kick-monitor notify` read. The writer's
    # statement is untouched: the notifier follows the broadcasts table (a cursor of its own).
    Migration(
        6,
        "go-live notifications: targets, deliveries, the notifier's cursor",
        """
CREATE TABLE IF NOT EXISTS kick_monitor.notify_targets (
    id               serial PRIMARY KEY,
    kind             text NOT NULL CONSTRAINT notify_targets_kind CHECK (kind IN ('discord', 'slack', 'json')),
    url              text,     -- the webhook URL: a credential, masked in every output; NULL with url_file
    url_file         text,     -- or the path of a secret file holding it (read when used)
    streamers        text[],   -- slugs; NULL = every streamer
    on_live          boolean NOT NULL DEFAULT true,
    on_offline       boolean NOT NULL DEFAULT false,
    template         text,     -- the go-live text, with {username} {title} {category} {url} {started_at} {duration}
    offline_template text,
    enabled          boolean NOT NULL DEFAULT true,
    disabled_reason  text,     -- why the notifier disabled it (the webhook answered 404: deleted)
    created_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT notify_targets_one_url CHECK ((url IS NULL) <> (url_file IS NULL))
);

-- The notifier's durable view of the broadcasts it has handled: a start once, an end once.
-- Open rows (ended_at NULL) are what the sweep checks for ends: at most the live streamers.
CREATE TABLE IF NOT EXISTS kick_monitor.notify_broadcasts (
    broadcast_id       bigint PRIMARY KEY,
    streamer_id        bigint NOT NULL,
    session_started_at timestamptz NOT NULL,  -- the start of the first broadcast of a flap chain
    continues          bigint,                -- the broadcast this one continues (ended and restarted in the grace)
    ended_at           timestamptz,           -- set once the end is handled
    handled_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS notify_broadcasts_open ON kick_monitor.notify_broadcasts (broadcast_id)
    WHERE ended_at IS NULL;

-- One row per (broadcast, target, event): the outbox. pending -> sending (committed before the
-- HTTP call) -> sent | failed | uncertain (found sending after a crash: never sent again);
-- skipped = deliberately not sent (late discovery, flap guard), with the reason in last_error.
CREATE TABLE IF NOT EXISTS kick_monitor.notify_deliveries (
    id           bigserial PRIMARY KEY,
    broadcast_id bigint NOT NULL,
    target_id    integer NOT NULL REFERENCES kick_monitor.notify_targets (id) ON DELETE CASCADE,
    event        text NOT NULL CONSTRAINT notify_deliveries_event CHECK (event IN ('live', 'offline')),
    state        text NOT NULL DEFAULT 'pending' CONSTRAINT notify_deliveries_state
                 CHECK (state IN ('pending', 'sending', 'sent', 'failed', 'uncertain', 'skipped')),
    late         boolean NOT NULL DEFAULT false,  -- sent as "was live": found after NOTIFY_MAX_AGE
    attempts     integer NOT NULL DEFAULT 0,
    due_at       timestamptz NOT NULL,            -- the next attempt
    origin_at    timestamptz NOT NULL,            -- when the event was committed (or became due): latency origin
    sent_at      timestamptz,
    last_error   text,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT notify_deliveries_once UNIQUE (broadcast_id, target_id, event)
);
CREATE INDEX IF NOT EXISTS notify_deliveries_due ON kick_monitor.notify_deliveries (due_at)
    WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS notify_deliveries_next ON kick_monitor.notify_deliveries (target_id, due_at, id)
    WHERE state = 'pending';  -- each target's next delivery: one probe, whatever the backlog
CREATE INDEX IF NOT EXISTS notify_deliveries_target ON kick_monitor.notify_deliveries (target_id, state);

-- Where the notifier's scan of new broadcasts starts (ids below it are all handled).
CREATE TABLE IF NOT EXISTS kick_monitor.notify_cursor (
    one          boolean PRIMARY KEY DEFAULT true CONSTRAINT notify_cursor_one CHECK (one),
    broadcast_id bigint NOT NULL
);

-- A target added, changed or removed wakes the notifier (it re-reads the targets).
CREATE OR REPLACE FUNCTION kick_monitor.notify_targets_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('kick_monitor_notify_targets', TG_OP);
    RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS notify_targets_changed ON kick_monitor.notify_targets;
CREATE TRIGGER notify_targets_changed AFTER INSERT OR UPDATE OR DELETE ON kick_monitor.notify_targets
    FOR EACH STATEMENT EXECUTE FUNCTION kick_monitor.notify_targets_changed();
""",
        oldest_code=4,  # expand-only: code of schema 4 runs on it (rolling upgrade, issue 17)
    ),
    # -- end notifier --------------------------------------------------------------------------
    # --- issue 17 (cluster): nodes, shard leases, the agreed shard plan, schema compatibility ---
    # Expand-only: new tables and one nullable column; a node of the previous release never
    # reads them and keeps running beside a node that applied this (oldest_code).
    Migration(
        7,
        "cluster: nodes, shard leases, shard plan, schema compatibility",
        """
-- Each process tree (`kick-monitor run`) of the deployment, renewed every few seconds.
CREATE TABLE IF NOT EXISTS kick_monitor.cluster_nodes (
    name       text PRIMARY KEY,          -- host:coordinator pid
    host       text NOT NULL,
    pid        integer NOT NULL,
    version    text NOT NULL,
    shards     text NOT NULL,             -- 'all' or the one shard it runs ('3')
    started_at timestamptz NOT NULL DEFAULT now(),
    renewed_at timestamptz NOT NULL DEFAULT now()
);
-- One row per shard of the plan; owner NULL = free. epoch grows at every claim.
CREATE TABLE IF NOT EXISTS kick_monitor.shard_leases (
    shard      integer PRIMARY KEY,
    owner      text,
    epoch      bigint NOT NULL DEFAULT 0,
    expires_at timestamptz NOT NULL DEFAULT '-infinity',
    claimed_at timestamptz,
    free_since timestamptz DEFAULT now(),  -- when it last became free (alerts: unowned too long)
    pusher_connected boolean,             -- the owner's worker, as it last told its planner
    watching   integer                    -- streamers that worker watches
);
-- The shard plan the nodes agree on (one row).
CREATE TABLE IF NOT EXISTS kick_monitor.shard_plan (
    id          boolean PRIMARY KEY DEFAULT true CHECK (id),
    shard_count integer NOT NULL CHECK (shard_count > 0),
    version     bigint NOT NULL DEFAULT 1,
    changed_at  timestamptz NOT NULL DEFAULT now()
);
-- Who did each duty's last round (kick_monitor/duty.py): `kick-monitor cluster status`.
CREATE TABLE IF NOT EXISTS kick_monitor.duty_holders (
    name          text PRIMARY KEY,
    node          text NOT NULL,
    lock_key      bigint NOT NULL,
    round_started timestamptz NOT NULL DEFAULT now()
);
-- Which code can run on the schema: see Migration.oldest_code.
ALTER TABLE kick_monitor.schema_migrations ADD COLUMN IF NOT EXISTS oldest_code integer;
""",
        oldest_code=4,
    ),
    # --- end issue 17 ---
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
            record_oldest_code(cur)
            applied.append(migration)
    return applied


def backfill_broadcasts(conn: psycopg2.extensions.connection) -> None:
    """Run the broadcasts backfill of migration 4 again (idempotent; one transaction)."""
    with conn, conn.cursor() as cur:
        cur.execute(BACKFILL_SQL)


def record_oldest_code(cur: psycopg2.extensions.cursor) -> None:
    """Write every known migration's `oldest_code` (once the column exists: migration 7)."""
    cur.execute(
        "SELECT 1 FROM information_schema.columns WHERE table_schema = 'kick_monitor'"
        " AND table_name = 'schema_migrations' AND column_name = 'oldest_code'"
    )
    if cur.fetchone() is None:
        return
    for migration in MIGRATIONS:
        oldest = migration.version if migration.oldest_code is None else migration.oldest_code
        cur.execute(
            "UPDATE kick_monitor.schema_migrations SET oldest_code = %s WHERE version = %s AND oldest_code IS NULL",
            (oldest, migration.version),
        )


def require_compatible(conn: psycopg2.extensions.connection, known: int = LATEST_VERSION) -> int:
    """Raise SchemaError unless code that knows migrations up to `known` can run on this schema.

    Older schema: refused (run `db migrate`). Newer schema: accepted when every migration
    beyond `known` says code of `known` can run on it (`oldest_code`, written by the newer
    release): a node of the previous release keeps running in a rolling upgrade.
    """
    version = current_version(conn)
    if version == 0:
        conn.rollback()
        raise SchemaError("database has no kick-monitor schema; run `kick-monitor db migrate`")
    if version < known:
        conn.rollback()
        raise SchemaError(f"schema version {version} is older than {known}; run `kick-monitor db migrate`")
    if version > known:
        needs = _oldest_code_beyond(conn, known)
        if needs > known:
            raise SchemaError(
                f"schema version {version} is newer than this program ({known}) and needs code of schema {needs}"
                " or newer; upgrade it"
            )
    conn.rollback()
    return version


def require_current(conn: psycopg2.extensions.connection) -> int:
    """The start-up check: this program can run on the schema (`require_compatible`)."""
    return require_compatible(conn)


def _oldest_code_beyond(conn: psycopg2.extensions.connection, known: int) -> int:
    """The highest `oldest_code` among migrations newer than `known` (their own version if unknown)."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT 1 FROM information_schema.columns WHERE table_schema = 'kick_monitor'"
            " AND table_name = 'schema_migrations' AND column_name = 'oldest_code'"
        )
        has_column = cur.fetchone() is not None
        if has_column:
            cur.execute("SELECT COALESCE(max(COALESCE(oldest_code, version)), 0) FROM kick_monitor.schema_migrations"
                        " WHERE version > %s", (known,))
        else:
            cur.execute("SELECT COALESCE(max(version), 0) FROM kick_monitor.schema_migrations WHERE version > %s",
                        (known,))
        row = cur.fetchone()
    conn.rollback()
    return int(row[0]) if row else 0
