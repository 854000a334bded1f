"""Issue 20 end to end: an application's own `app.creators` is the streamer list and gets our status.

A real `kick-monitor run` against the simulator, configured with a source query and a mirror
statement over the application schema of docs/integration.md (its recipes, read from the doc):
- `app.creators.is_live` equals the simulator's truth under flips; the mirror's lag (our commit
  → its commit) and cost per round are measured and printed;
- rows inserted/deleted there appear/disappear within seconds with the application's NOTIFY,
  within one reload interval without;
- a source that breaks (column renamed), a mirror that fails (constraint) or blocks (the
  application holds the row lock longer than the mirror's timeouts) are reported, and our own
  state, history and latency are unaffected;
- the whole service runs as a role with exactly the doc's grants, which cannot write anything else.
All slow (`make test-slow`).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.errors
import psycopg2.extensions
import pytest
from psycopg2 import sql

from kick_monitor.database import connect
from kick_monitor.embedded_pg import EmbeddedPostgres
from kick_sim import SimStreamer, Simulator
from kick_tools.harness import admin_connection
from tests.conftest import CliRunner, DatabaseFactory, free_port
from tests.integration.test_integration_recipes import recipe
from tests.integration.test_metrics import scrape
from tests.service import (
    Service,
    commit_lags,
    history_errors,
    latencies_ms,
    make_service,
    mismatches,
    percentile,
    query,
    running,
    settle,
    status_transitions,
    wait_until,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

SOURCE = (
    "SELECT kick_username AS slug, kick_channel AS channel_id, kick_user AS user_id FROM app.creators WHERE active"
)
MIRROR = "UPDATE app.creators SET is_live = %(is_live)s, live_title = %(title)s WHERE kick_username = %(slug)s"
CHANNEL = "app_creators_changed"  # the one the doc's source-notify recipe fires

# Every change of app.creators.is_live with the time it was written: the mirror's lag, per transition.
LIVE_LOG = """
CREATE TABLE app.live_log (kick_username text, is_live boolean, at timestamptz);
CREATE FUNCTION app.log_live() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO app.live_log VALUES (NEW.kick_username, NEW.is_live, clock_timestamp());
    RETURN NULL;
END $$;
CREATE TRIGGER log_live AFTER UPDATE OF is_live ON app.creators
    FOR EACH ROW WHEN (OLD.is_live IS DISTINCT FROM NEW.is_live) EXECUTE FUNCTION app.log_live();
"""

# Mirror lag per mirrored transition: its write minus our commit of the status it wrote.
MIRROR_LAGS_MS = """
SELECT extract(epoch FROM l.at - e.recorded_at) * 1000
FROM app.live_log l JOIN app.creators c USING (kick_username)
CROSS JOIN LATERAL (
    SELECT recorded_at FROM kick_monitor.status_events e
    WHERE e.channel_id = c.kick_channel AND e.status = CASE WHEN l.is_live THEN 'online' ELSE 'offline' END
      AND e.recorded_at <= l.at
    ORDER BY e.recorded_at DESC LIMIT 1
) e
ORDER BY 1
"""


def execute(conn: psycopg2.extensions.connection, statement: str, params: tuple[Any, ...] | None = None) -> None:
    with conn, conn.cursor() as cur:
        cur.execute(statement, params)


def add_creators(conn: psycopg2.extensions.connection, streamers: list[SimStreamer]) -> None:
    with conn, conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO app.creators (kick_username, kick_channel, kick_user) VALUES (%s, %s, %s)",
            [(s.slug, s.channel_id, s.user_id) for s in streamers],
        )


def mirror_idle(metrics: Any, applied: int) -> bool:
    return bool(metrics.value("kick_monitor_mirror_applied_total") >= applied
                and metrics.value("kick_monitor_mirror_pending") == 0)


def make_app(conn: psycopg2.extensions.connection, streamers: list[SimStreamer], *, notify: bool = True) -> None:
    execute(conn, recipe("app-schema"))
    if notify:
        execute(conn, recipe("source-notify"))
    add_creators(conn, streamers)


def app_mismatches(sim: Simulator, conn: psycopg2.extensions.connection) -> list[tuple[str, bool, bool]]:
    live = dict(query(conn, "SELECT kick_username, is_live FROM app.creators"))
    return [(s.slug, sim.is_live(s.slug), live[s.slug]) for s in sim.streamers()
            if s.slug in live and live[s.slug] != sim.is_live(s.slug)]


def listed(conn: psycopg2.extensions.connection) -> set[str]:
    return {u for (u,) in query(conn, "SELECT username FROM kick_monitor.streamers")}


def slowest(sim: Simulator, conn: psycopg2.extensions.connection, since: float) -> list[str]:
    """The five slowest frame → commit transitions after `since`: seconds into the test, channel, ms."""
    lags = sorted(commit_lags(sim, conn, since), reverse=True)[:5]
    return [f"+{sent - since:.1f}s ch{channel} {lag * 1000:.0f}ms" for lag, sent, channel in lags]


def settle_app(sim: Simulator, conn: psycopg2.extensions.connection, timeout: float = 30.0) -> None:
    settle(sim, conn, timeout)
    wait_until(lambda: not app_mismatches(sim, conn), timeout, interval=0.2,
               what="app.creators.is_live to match the simulator")


def logged(service: Service, text: str) -> bool:
    """`text` is in the service's log (JSON lines escape its quotes)."""
    return text.replace('"', '\\"') in service.log_text()


def app_service(sim: Simulator, url: str, tmp_path: Path, **settings: str) -> Service:
    return make_service(sim, url, tmp_path, **{"streamers_source": SOURCE, "status_mirror": MIRROR, **settings})


def test_app_creators_follow_the_simulator_and_its_rows_come_and_go(
    sim: Simulator, conn: psycopg2.extensions.connection, database_url: str, tmp_path: Path
) -> None:
    creators = sim.create_streamers(1000)
    make_app(conn, creators)
    execute(conn, LIVE_LOG)
    port = free_port()
    service = app_service(sim, database_url, tmp_path, shard_count="2", reload_interval="600",
                           streamers_source_channel=CHANNEL, metrics_port=str(port))
    with running(service):
        service.wait_children(2)
        wait_until(lambda: sim.subscription_count() >= 2000, 30, what="2,000 subscriptions")
        assert len(listed(conn)) == 1000, "the source is the list"
        # steady state first: every streamer's first status (reconciliation at connect) mirrored
        wait_until(lambda: mirror_idle(scrape(f"http://127.0.0.1:{port}/metrics"), 1000), 30, interval=0.2,
                   what="the first statuses mirrored")
        sim.start_flipping(rate=200.0, duration=5.0)
        assert sim.wait_flipping_done(timeout=30)
        settle_app(sim, conn)
        own = latencies_ms(sim, conn)
        lags = [float(v) for (v,) in query(conn, MIRROR_LAGS_MS)]
        metrics = scrape(f"http://127.0.0.1:{port}/metrics")

        # rows inserted / deleted in the application's table, with its NOTIFY (the reload interval is 10 min)
        later = sim.create_streamers(5, prefix="later")
        started = time.monotonic()
        add_creators(conn, later)
        wait_until(lambda: sim.subscription_count() >= 2010, 10, what="new creators subscribed")
        appeared = time.monotonic() - started
        sim.set_live(later[0].slug, True)
        settle_app(sim, conn)
        started = time.monotonic()
        execute(conn, "DELETE FROM app.creators WHERE kick_username = ANY(%s)", ([s.slug for s in creators[:10]],))
        wait_until(lambda: sim.subscription_count() <= 1990, 10, what="deleted creators unsubscribed")
        gone = time.monotonic() - started
        assert not listed(conn) & {s.slug for s in creators[:10]}
        assert service.stop() == 0
    transitions = status_transitions(sim.truth())
    assert len(transitions) >= 800
    removed = [s.channel_id for s in creators[:10]]
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM kick_monitor.status_events WHERE channel_id = ANY(%s)", (removed,))
        kept = cur.fetchone()
    conn.rollback()
    assert kept is not None and kept[0] > 0, "removed streamers keep their history"
    rounds = metrics.value("kick_monitor_mirror_batch_duration_seconds_count")
    cost = metrics.value("kick_monitor_mirror_batch_duration_seconds_sum") / max(1.0, rounds)
    applied = metrics.value("kick_monitor_mirror_applied_total")
    print(
        f"\nown frame→commit over {len(own)} transitions: p50 {percentile(own, 0.5):.2f} ms,"
        f" p99 {percentile(own, 0.99):.2f} ms"
        f"\nmirror commit→mirrored over {len(lags)} writes: p50 {percentile(lags, 0.5):.2f} ms,"
        f" p99 {percentile(lags, 0.99):.2f} ms, max {lags[-1]:.2f} ms"
        f"\nmirror rounds: {rounds:.0f}, {applied:.0f} applications, {cost * 1000:.2f} ms per round,"
        f" {metrics.value('kick_monitor_mirror_batch_duration_seconds_sum') * 1000 / max(1.0, applied):.3f} ms"
        f" per application; failures {metrics.value('kick_monitor_mirror_failures_total'):.0f}"
        f"\nsource: insert seen in {appeared:.2f} s, delete in {gone:.2f} s (with NOTIFY)"
    )
    assert len(lags) >= len(transitions) * 0.5, "most transitions reach app.creators (latest wins may merge some)"
    assert percentile(own, 0.99) < 1000.0
    # the goal: p99 ≤ 50 ms at steady load; a machine too loaded for our own pipeline to make it gets 2× ours
    assert percentile(lags, 0.99) <= max(50.0, 2 * percentile(own, 0.99))
    assert metrics.value("kick_monitor_mirror_failures_total") == 0


def test_without_notify_the_source_is_synced_every_reload_interval(
    sim: Simulator, conn: psycopg2.extensions.connection, database_url: str, tmp_path: Path
) -> None:
    make_app(conn, sim.create_streamers(20), notify=False)
    service = app_service(sim, database_url, tmp_path, shard_count="1", reload_interval="3")
    with running(service):
        service.wait_children(1)
        wait_until(lambda: sim.subscription_count() >= 40, 20, what="subscriptions")
        started = time.monotonic()
        add_creators(conn, sim.create_streamers(3, prefix="later"))
        wait_until(lambda: sim.subscription_count() >= 46, 8, what="new creators after one reload interval")
        print(f"\nsource without NOTIFY: insert seen in {time.monotonic() - started:.2f} s (interval 3 s)")
        assert service.stop() == 0


def test_broken_source_failing_and_blocked_mirror_leave_our_own_state_alone(
    sim: Simulator, conn: psycopg2.extensions.connection, database_url: str, tmp_path: Path
) -> None:
    creators = sim.create_streamers(200)
    victim, blocked = creators[0].slug, creators[1].slug
    make_app(conn, creators)
    service = app_service(sim, database_url, tmp_path, shard_count="1", reload_interval="600",
                           streamers_source_channel=CHANNEL)
    with running(service):
        service.wait_children(1)
        wait_until(lambda: sim.subscription_count() >= 400, 30, what="subscriptions")
        sim.start_flipping(rate=50.0, duration=25.0)
        begun = time.time()

        # the source breaks mid-run: reported, the list stays
        execute(conn, "ALTER TABLE app.creators RENAME COLUMN active TO enabled")
        execute(conn, "SELECT pg_notify(%s, '')", (CHANNEL,))
        wait_until(lambda: logged(service, 'column "active" does not exist'), 10, what="source failure reported")
        assert "streamer source not applied, the previous list stays" in service.log_text()
        assert len(listed(conn)) == 200

        # the mirror fails: the application refuses the value for one streamer
        execute(conn, f"ALTER TABLE app.creators ADD CONSTRAINT victim_never_live"
                      f" CHECK (NOT is_live OR kick_username <> '{victim}') NOT VALID")
        sim.set_live(victim, True)
        wait_until(lambda: f"status mirror failed (constraint) for {victim}" in service.log_text(), 10,
                   what="constraint failure reported")

        # the mirror blocks: the application holds the row for longer than the mirror's timeouts
        holder = connect(database_url)
        try:
            with holder.cursor() as cur:
                cur.execute("SELECT 1 FROM app.creators WHERE kick_username = %s FOR UPDATE", (blocked,))
            sim.set_live(blocked, not sim.is_live(blocked))
            wait_until(lambda: f"status mirror failed (lock) for {blocked}" in service.log_text(), 10,
                       what="lock failure reported")
            state = dict(query(conn, "SELECT username, status FROM kick_monitor.streamers"))
            assert state[blocked] == ("online" if sim.is_live(blocked) else "offline"), "our own status is committed"
            time.sleep(4.0)  # longer than lock_timeout (0.2 s) and statement_timeout (1 s), several times over
        finally:
            holder.rollback()
            holder.close()
        assert sim.wait_flipping_done(timeout=40)
        wait_until(lambda: not mismatches(sim, conn) and not history_errors(sim, conn), 30, interval=0.2,
                   what="our own state and history to match the simulator")
        wait_until(lambda: [m for m in app_mismatches(sim, conn) if m[0] != victim] == [], 40, interval=0.2,
                   what="the blocked row to be mirrored once released (and every other row)")
        assert app_mismatches(sim, conn) in ([], [(victim, True, False)])
        own = latencies_ms(sim, conn, since=begun)
        slow = slowest(sim, conn, begun)
        assert service.stop() == 0
    print(f"\nown frame→commit during source/mirror failures over {len(own)} transitions:"
          f" p50 {percentile(own, 0.5):.2f} ms, p99 {percentile(own, 0.99):.2f} ms; slowest {slow}")
    assert len(own) > 100
    assert percentile(own, 0.99) < 1000.0


@pytest.fixture
def least_privileged(embedded_postgres: EmbeddedPostgres, make_database: DatabaseFactory) -> Iterator[tuple[str, str]]:
    """(admin URL, service URL) of an empty database where a role has exactly the doc's grants."""
    admin_url = make_database(migrated=False)
    database = admin_url.split("?")[0].rsplit("/", 1)[-1]
    role = f"km_{uuid.uuid4().hex[:10]}"
    grants = recipe("grants").replace("current_database_name", f'"{database}"').replace("kick_monitor", role)
    conn = psycopg2.connect(admin_url)
    try:
        execute(conn, recipe("app-schema"))
        execute(conn, grants)
        yield admin_url, admin_url.replace("postgres@", f"{role}@", 1)
    finally:
        conn.close()
        with psycopg2.connect(admin_url) as cleanup, cleanup.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (role,))
            cur.execute(sql.SQL("DROP OWNED BY {} CASCADE").format(sql.Identifier(role)))
        cleanup.close()
        admin = admin_connection(embedded_postgres)
        with admin.cursor() as cur:
            cur.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
        admin.close()


def test_the_service_runs_with_only_the_documented_grants(
    sim: Simulator, least_privileged: tuple[str, str], cli: CliRunner, tmp_path: Path
) -> None:
    admin_url, url = least_privileged
    assert cli("db", "migrate", env={"KICK_MONITOR_DATABASE_URL": url}).code == 0
    creators = sim.create_streamers(20)
    admin = connect(admin_url)
    try:
        add_creators(admin, creators)
        service = app_service(sim, url, tmp_path, shard_count="1")
        with running(service):
            service.wait_children(1)
            wait_until(lambda: sim.subscription_count() >= 40, 20, what="subscriptions")
            for streamer in creators[:5]:
                sim.set_live(streamer.slug, True)
            wait_until(lambda: not app_mismatches(sim, admin), 15, what="app.creators mirrored by the service role")
            assert service.stop() == 0
        assert "permission denied" not in service.log_text()
        owner = query(admin, "SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = 'kick_monitor'")
        assert owner == [(url.split("//")[1].split("@")[0],)], "the monitor owns its schema"
        as_service = connect(url)
        try:
            for statement in (
                "UPDATE app.creators SET kick_username = 'x'",
                "UPDATE app.creators SET active = false",
                "INSERT INTO app.creators (kick_username) VALUES ('intruder')",
                "DELETE FROM app.creators",
                "TRUNCATE app.creators",
                "CREATE TABLE app.intruder (id int)",
                "ALTER TABLE app.creators ADD COLUMN intruder int",
            ):
                with pytest.raises(psycopg2.errors.InsufficientPrivilege):
                    execute(as_service, statement)
        finally:
            as_service.close()
    finally:
        admin.close()
