"""The webhook subscription sync against the simulator's Events API: real HTTP on loopback, real PostgreSQL.

Fast tests drive `sync_subscriptions` and the `WebhookSync` duty directly with tens of
streamers; the slow one runs the real service (its planner's duty) with 1,000.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2.extensions
import pytest
from pydantic import SecretStr

from kick_monitor.config import Settings, load_settings
from kick_monitor.database import connect
from kick_monitor.kick_api import EVENT_SUBSCRIPTIONS, KickApiClient
from kick_monitor.ratelimit import RetryPolicy
from kick_monitor.telemetry import NullTelemetry
from kick_monitor.webhook_plan import FAILED, LIMIT_REASON, METADATA_EVENT, STATUS_EVENT, SUBSCRIBED
from kick_monitor.webhook_store import count_states
from kick_monitor.webhook_subscriptions import sync_subscriptions
from kick_monitor.webhook_sync import WebhookSync
from kick_sim import SimConfig, SimStreamer, Simulator
from tests.conftest import CliRunner
from tests.service import Service, insert_streamers, running, service_env, wait_until

FAST = RetryPolicy(attempts=2, backoff_base=0.05, backoff_cap=0.1, rate_limited_retries=3, retry_after_cap=5.0)


@pytest.fixture
def sim_config() -> SimConfig:
    return SimConfig(port=0, http_port=0, control_port=0, seed=16, event_subscription_limit=10_000)


@pytest.fixture
def client(sim: Simulator) -> Iterator[KickApiClient]:
    api = KickApiClient(sim.api_base_url, sim.oauth_token_url, sim.web_api_base_url, sim.config.client_id,
                        SecretStr(sim.config.client_secret), rate=(500.0, 100), retry=FAST)
    yield api
    api.close()


def sim_pairs(sim: Simulator) -> set[tuple[int, str]]:
    return {(s.broadcaster_user_id, s.event) for s in sim.event_subscriptions()}


def wanted_pairs(streamers: list[SimStreamer]) -> set[tuple[int, str]]:
    return {(s.user_id, event) for s in streamers for event in (STATUS_EVENT, METADATA_EVENT)}


def requests_to_subscriptions(sim: Simulator) -> int:
    return int(sim.stats()["api_paths"].get(EVENT_SUBSCRIPTIONS, 0))


def remove(conn: psycopg2.extensions.connection, streamers: list[SimStreamer]) -> None:
    with conn, conn.cursor() as cur:
        cur.execute("DELETE FROM kick_monitor.streamers WHERE username = ANY(%s)", ([s.slug for s in streamers],))


def table(conn: psycopg2.extensions.connection) -> dict[tuple[int, str], tuple[str, str | None, str | None]]:
    with conn.cursor() as cur:
        cur.execute("SELECT kick_user_id, event, state, subscription_id, last_error"
                    " FROM kick_monitor.webhook_subscriptions")
        rows = {(r[0], r[1]): (r[2], r[3], r[4]) for r in cur.fetchall()}
    conn.rollback()
    return rows


def test_subscribe_unsubscribe_and_recreate_what_kick_dropped(
    sim: Simulator, conn: psycopg2.extensions.connection, client: KickApiClient
) -> None:
    streamers = sim.create_streamers(60, prefix="hook")
    insert_streamers(conn, streamers)
    chat = sim.create_streamers(1, prefix="chat")[0]  # an event we do not manage: never touched
    client.create_event_subscriptions(chat.user_id, [("chat.message.sent", 1)])

    first = sync_subscriptions(conn, client)
    assert (first.outcome, first.created, first.subscribed, first.deleted) == ("ok", 120, 120, 0)
    assert sim_pairs(sim) == wanted_pairs(streamers) | {(chat.user_id, "chat.message.sent")}
    rows = table(conn)
    assert len(rows) == 120 and all(state == SUBSCRIBED and sub_id for state, sub_id, _ in rows.values())
    assert {sub.id for sub in sim.event_subscriptions()} >= {sub_id for _, sub_id, _ in rows.values()}

    before = requests_to_subscriptions(sim)
    again = sync_subscriptions(conn, client)
    assert (again.created, again.deleted, again.subscribed) == (0, 0, 120)
    assert requests_to_subscriptions(sim) == before + 1, "in sync: one listing, nothing else"

    removed = streamers[:5]
    remove(conn, removed)
    after_removal = sync_subscriptions(conn, client)
    assert (after_removal.deleted, after_removal.subscribed) == (10, 110)
    assert sim_pairs(sim) == wanted_pairs(streamers[5:]) | {(chat.user_id, "chat.message.sent")}
    assert not any(user_id in {s.user_id for s in removed} for user_id, _ in table(conn))

    chat_id = {s.id for s in sim.event_subscriptions(chat.user_id)}
    ours_dropped = set(sim.drop_event_subscriptions(12)) - chat_id
    assert len(ours_dropped) >= 11
    healed = sync_subscriptions(conn, client)
    assert healed.created == healed.recreated == len(ours_dropped)
    assert wanted_pairs(streamers[5:]) <= sim_pairs(sim)
    assert count_states(conn) == {SUBSCRIBED: 110, "missing": 0, FAILED: 0}


def test_the_limit_stops_creating_says_how_many_are_left_once_and_never_storms(
    sim: Simulator, conn: psycopg2.extensions.connection, client: KickApiClient, database_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    sim.set_event_subscription_limit(41)  # 20 streamers fit; the 21st asks for 2 with 1 left: refused
    streamers = sim.create_streamers(30, prefix="limit")
    insert_streamers(conn, streamers)
    settings = sim_settings(sim, webhook_subscribe="on")
    duty = WebhookSync(lambda: connect(database_url), lambda: settings, lambda: client, NullTelemetry())

    with caplog.at_level(logging.INFO, logger="kick_monitor.webhooks"):
        result = duty.run_round()
        assert result is not None and result.limit_reached
        assert (result.subscribed, result.left_without, result.streamers) == (40, 10, 30)
        posts = requests_to_subscriptions(sim)
        assert posts == 1 + 21, "one listing, 20 creations, one refusal: then it stops"
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1 and "10 of 30 streamers are left without webhooks" in errors[0]
        rows = table(conn)
        failed = [row for row in rows.values() if row[0] == FAILED]
        assert len(failed) == 20 and all(error == LIMIT_REASON for _, _, error in failed)

        assert duty.run_round() is None, "the same list, synced lately: no request at all"
        assert requests_to_subscriptions(sim) == posts
        insert_streamers(conn, sim.create_streamers(1, prefix="more"))
        more = duty.run_round()
        assert more is not None and more.limit_reached and more.left_without == 11
        assert requests_to_subscriptions(sim) == posts + 2, "a new streamer: one listing, one refused try"
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 2 and "11 of 31" in errors[1]

        sim.set_event_subscription_limit(100)
        duty.wake()
        remove(conn, streamers[:1])  # a changed list makes the next round run at once
        freed = duty.run_round()
        assert freed is not None and not freed.limit_reached and freed.subscribed == 60
        assert any("no longer stops" in r.getMessage() for r in caplog.records)
    assert count_states(conn)[FAILED] == 0


def test_refusals_stop_creating_for_the_round_and_go_last_next_time(
    sim: Simulator, conn: psycopg2.extensions.connection, client: KickApiClient
) -> None:
    with conn, conn.cursor() as cur:  # user ids Kick does not know, first in id order
        cur.executemany("INSERT INTO kick_monitor.streamers (username, kick_user_id) VALUES (%s, %s)",
                        [(f"ghost{n}", 990_000_000 + n) for n in range(7)])
    known = sim.create_streamers(10, prefix="known")
    insert_streamers(conn, known)
    start = requests_to_subscriptions(sim)
    first = sync_subscriptions(conn, client)
    assert requests_to_subscriptions(sim) - start == 1 + 5, "a listing and five refusals, then it stops"
    assert (first.refused, first.subscribed, first.missing, first.failed) == (10, 0, 24, 10)
    assert first.outcome == "refused"
    assert "broadcaster not found" in first.errors[0]
    second = sync_subscriptions(conn, client)
    assert second.subscribed == 20 and wanted_pairs(known) <= sim_pairs(sim)
    assert second.failed == 14 and count_states(conn) == {SUBSCRIBED: 20, "missing": 0, FAILED: 14}
    failed = [row for row in table(conn).values() if row[0] == FAILED]
    assert all("broadcaster not found" in (error or "") for _, _, error in failed)


def test_kick_down_changes_nothing_is_said_once_and_retried_soon(
    sim: Simulator, conn: psycopg2.extensions.connection, client: KickApiClient, database_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    streamers = sim.create_streamers(5, prefix="down")
    insert_streamers(conn, streamers)
    settings = sim_settings(sim, webhook_subscribe="on")
    duty = WebhookSync(lambda: connect(database_url), lambda: settings, lambda: client, NullTelemetry())
    assert duty.run_round().outcome == "ok"
    before = table(conn)
    sim.set_api_mode("error_500", surface="official")
    try:
        with caplog.at_level(logging.INFO, logger="kick_monitor.webhooks"):
            with conn, conn.cursor() as cur:  # a changed list: the round runs
                cur.execute("DELETE FROM kick_monitor.streamers WHERE username = %s", (streamers[0].slug,))
            for _ in range(2):
                failed = duty.run_round()
                assert failed.outcome == "failed" and "HTTP 500" in failed.errors[0]
                assert duty.every == 30.0, "retried soon, not after the interval"
        said = [r.getMessage() for r in caplog.records
                if r.levelno >= logging.WARNING and r.name == "kick_monitor.webhooks"]
        assert len(said) == 1 and "failed, nothing changed" in said[0]
    finally:
        sim.set_api_mode(None)
    assert table(conn) == before
    with conn.cursor() as cur:
        cur.execute("SELECT outcome, error FROM kick_monitor.webhook_sync")
        outcome, error = cur.fetchone() or ("", "")
    conn.rollback()
    assert outcome == "failed" and "HTTP 500" in error
    healed = duty.run_round()
    assert healed.outcome == "ok" and healed.deleted == 2 and duty.every == 900.0


def test_without_credentials_the_duty_says_so_once_and_does_nothing(
    sim: Simulator, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = load_settings(environ={"KICK_MONITOR_WEBHOOK_SUBSCRIBE": "on"})
    made: list[int] = []
    duty = WebhookSync(lambda: connect(database_url), lambda: settings, lambda: made.append(1), NullTelemetry())
    with caplog.at_level(logging.INFO, logger="kick_monitor.webhooks"):
        assert not duty.enabled() and not duty.enabled()
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and "no Kick API credentials" in said[0] and "still accepts signed deliveries" in said[0]
    assert made == [] and requests_to_subscriptions(sim) == 0
    off = load_settings(environ={"KICK_MONITOR_WEBHOOK_SUBSCRIBE": "off"})
    assert not WebhookSync(lambda: connect(database_url), lambda: off, lambda: None, NullTelemetry()).enabled()


def sim_settings(sim: Simulator, **extra: str) -> Settings:
    environ = {f"KICK_MONITOR_{key.upper()}": value for key, value in cli_env(sim).items()}
    environ.update({f"KICK_MONITOR_{key.upper()}": value for key, value in extra.items()})
    return load_settings(environ=environ)


def cli_env(sim: Simulator) -> dict[str, str]:
    return {"api_base_url": sim.api_base_url, "oauth_token_url": sim.oauth_token_url,
            "web_api_base_url": sim.web_api_base_url, "client_id": sim.config.client_id,
            "client_secret": sim.config.client_secret, "api_rate": "100", "api_burst": "50"}


def test_cli_sync_and_status(sim: Simulator, conn: psycopg2.extensions.connection, cli: CliRunner) -> None:
    env: dict[str, str | None] = {f"KICK_MONITOR_{k.upper()}": v for k, v in cli_env(sim).items()}
    streamers = sim.create_streamers(8, prefix="cli")
    insert_streamers(conn, streamers)
    with conn, conn.cursor() as cur:
        cur.execute("INSERT INTO kick_monitor.streamers (username) VALUES ('noid')")
    status = cli("webhooks", "status", "--json", env=env)
    assert status.code == 0, status.stderr
    doc = json.loads(status.stdout)
    assert doc["subscriptions"] == {"subscribed": 0, "missing": 16, "failed": 0}
    assert doc["sync"]["last"] is None and doc["sync"]["automatic"] is False
    assert doc["receiver"]["url"] is None or doc["receiver"]["enabled"]

    done = cli("webhooks", "sync", env=env)
    assert done.code == 0, done.stderr
    assert "16 subscribed (16 created)" in done.stdout and "8 streamers with a user id" in done.stdout
    assert "does not keep them in sync by itself" in done.stdout
    assert len(sim.event_subscriptions()) == 16

    sim.set_event_subscription_limit(17)
    insert_streamers(conn, sim.create_streamers(2, prefix="over"))
    over = cli("webhooks", "sync", env=env)
    assert over.code == 1
    assert over.stderr.strip().splitlines()[-1].startswith("kick-monitor: error: Kick's event subscription limit")
    assert "2 of 10 streamers are left without webhooks" in over.stderr

    text = cli("webhooks", "status", env={**env, "KICK_MONITOR_WEBHOOK_SUBSCRIBE": "on"})
    assert text.code == 0, text.stderr
    assert "subscriptions: 16 subscribed, 0 missing, 4 failed" in text.stdout
    assert "streamers without webhooks: 2" in text.stdout
    assert "streamers without a user id yet (cannot subscribe): 1" in text.stdout
    assert "sync: automatic (KICK_MONITOR_WEBHOOK_SUBSCRIBE=on), every 900 s" in text.stdout
    assert "limit_reached" in text.stdout and "last delivery livestream.status.updated: none recorded" in text.stdout
    assert sim.config.client_secret not in text.stdout + over.stderr + done.stdout

    missing = cli("webhooks", "sync", env={"KICK_MONITOR_CLIENT_ID": None, "KICK_MONITOR_CLIENT_SECRET": None})
    assert missing.code == 2 and "need Kick API credentials" in missing.stderr


@pytest.mark.timeout(60)
def test_the_planner_syncs_at_start_and_when_streamers_are_removed(
    sim: Simulator, conn: psycopg2.extensions.connection, database_url: str, tmp_path: Path
) -> None:
    streamers = sim.create_streamers(20, prefix="svc")
    insert_streamers(conn, streamers)
    env = service_env(sim, database_url, tmp_path / "data", shard_count="1", webhook_subscribe="on",
                      api_rate="100", api_burst="50", reconcile_interval="0", reconcile_interval_without_pusher="0")
    service = Service(env, tmp_path / "service.log")
    with running(service):
        wait_until(lambda: sim_pairs(sim) == wanted_pairs(streamers), 20, what="subscribed at start")
        remove(conn, streamers[:3])
        wait_until(lambda: sim_pairs(sim) == wanted_pairs(streamers[3:]), 20, what="unsubscribed on NOTIFY")
    assert sim.config.client_secret not in service.log_text()


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_service_keeps_a_thousand_streamers_subscribed(
    sim: Simulator, conn: psycopg2.extensions.connection, database_url: str, tmp_path: Path
) -> None:
    """The planner's duty, end to end: 1,000 added → all subscribed; 50 removed → unsubscribed at once
    (NOTIFY); Kick drops 100 → re-created at the next interval; limit reached → one error, no storm."""
    streamers = sim.create_streamers(1000, prefix="e2e", live_fraction=0.1)
    insert_streamers(conn, streamers)
    env = service_env(sim, database_url, tmp_path / "data", shard_count="1", webhook_subscribe="on",
                      webhook_sync_interval="30", api_rate="100", api_burst="50", reconcile_interval="0",
                      reconcile_interval_without_pusher="0")
    service = Service(env, tmp_path / "service.log")
    with running(service):
        wait_until(lambda: sim_pairs(sim) == wanted_pairs(streamers), 90, what="2,000 subscriptions")
        wait_until(lambda: count_states(conn)[SUBSCRIBED] == 2000, 10, what="the table says subscribed")

        remove(conn, streamers[:50])
        wait_until(lambda: sim_pairs(sim) == wanted_pairs(streamers[50:]), 30, what="50 streamers unsubscribed")

        dropped = sim.drop_event_subscriptions(100)
        assert len(dropped) == 100
        wait_until(lambda: sim_pairs(sim) == wanted_pairs(streamers[50:]), 60, what="dropped ones re-created")
        wait_until(lambda: _last_sync(conn).get("recreated") == 100, 10, what="the re-creation recorded")

        sim.set_event_subscription_limit(1900 + 21)
        more = sim.create_streamers(20, prefix="over")
        insert_streamers(conn, more)
        wait_until(lambda: _last_sync(conn).get("outcome") == "limit_reached", 30, what="the limit reached")
        posts = requests_to_subscriptions(sim)
        first = _last_sync(conn)["finished"]
        # the next periodic round (30 s) tries once more: one listing, one refused creation, no new error line
        wait_until(lambda: _last_sync(conn)["finished"] != first, 45, what="the next periodic sync")
        assert requests_to_subscriptions(sim) - posts <= 2
        log = service.log_text()
        assert log.count("limit is reached: 10 of 970 streamers are left without webhooks") == 1, log[-3000:]
    assert "Traceback" not in service.log_text()


def _last_sync(conn: psycopg2.extensions.connection) -> dict[str, Any]:
    with conn.cursor() as cur:
        cur.execute("SELECT outcome, recreated, finished_at FROM kick_monitor.webhook_sync WHERE id = 1")
        row = cur.fetchone()
    conn.rollback()
    return {} if row is None else {"outcome": row[0], "recreated": row[1], "finished": row[2]}

