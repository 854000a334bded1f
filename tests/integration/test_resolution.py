"""End to end, today's Kick: streamers added by slug alone get their ids from a real `kick-monitor run`.

The web API is behind Cloudflare and /public/v1/livestreams is deprecated (then gone):
every streamer still gets its broadcaster user id in one resolution round, live ones their
channel id (and Pusher), and a 410 mid-run is said once while everything goes on.
"""

from __future__ import annotations

from pathlib import Path

import psycopg2.extensions
import psycopg2.extras
import pytest

from kick_sim import SimStreamer, Simulator
from tests.service import Service, running, service_env, wait_until

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]


def add_by_slug(conn: psycopg2.extensions.connection, streamers: list[SimStreamer]) -> None:
    with conn, conn.cursor() as cur:
        psycopg2.extras.execute_values(
            cur, "INSERT INTO kick_monitor.streamers (username, unresolved_reason) VALUES %s",
            [(s.slug, "waiting for id resolution") for s in streamers],
        )


def ids(conn: psycopg2.extensions.connection) -> dict[str, tuple[int | None, int | None, str | None]]:
    with conn.cursor() as cur:
        cur.execute("SELECT username, kick_user_id, channel_id, unresolved_reason FROM kick_monitor.streamers")
        rows = {row[0]: (row[1], row[2], row[3]) for row in cur.fetchall()}
    conn.rollback()
    return rows


def test_a_thousand_slugs_resolved_and_v1_livestreams_gone_mid_run(
    sim: Simulator, conn: psycopg2.extensions.connection, database_url: str, tmp_path: Path
) -> None:
    assert sim.stats()["profile"] == "today"
    first = sim.create_streamers(1000, prefix="byslug", live_fraction=0.1)
    add_by_slug(conn, first)
    service = Service(
        # Reconciliation only when streamers are assigned (and on connect), so the channels requests
        # are countable: the resolution pass, and each newly monitored streamer's first check.
        service_env(sim, database_url, tmp_path / "data", shard_count="2", api_rate="20", api_burst="5",
                    reconcile_interval="0", reconcile_interval_without_pusher="0"),
        tmp_path / "service.log",
    )
    with running(service):
        service.wait_children(2)
        wait_until(lambda: all(uid is not None for uid, _, _ in ids(conn).values()), 60,
                   what="every streamer's user id")
        paths = sim.stats()["api_paths"]
        # one resolution pass at 25 slugs a request, one first reconciliation at 25 user ids a request
        assert paths["/public/v1/channels"] <= 40 + 40 + 10, paths
        rows = ids(conn)
        for streamer in first:
            user_id, channel_id, reason = rows[streamer.slug]
            assert user_id == streamer.user_id
            if sim.is_live(streamer.slug):
                assert channel_id == streamer.channel_id and reason is None
            else:
                assert channel_id is None and reason is not None and "Cloudflare" in reason
        live = [s for s in first if sim.is_live(s.slug)]
        wait_until(lambda: sim.subscription_count() >= 2 * len(live), 30, what="live streamers on Pusher")

        sim.set_livestreams_v1("410")
        more = sim.create_streamers(100, prefix="after410", live_fraction=0.5)
        add_by_slug(conn, more)
        wait_until(lambda: all(ids(conn)[s.slug][0] == s.user_id for s in more), 60,
                   what="user ids after v1 livestreams went away")
        assert all(ids(conn)[s.slug][1] is None for s in more)
        assert "/public/v1/livestreams is off: it answered HTTP 410" in (ids(conn)[more[0].slug][2] or "")
        reconciles = sim.stats()["api_paths"]["/public/v1/channels"]
        wait_until(lambda: sim.stats()["api_paths"]["/public/v1/channels"] > reconciles + 2, 30,
                   what="reconciliation going on")
        log = service.log_text()
        assert log.count("switched off for this run") == 1, "said once"
        assert log.count("blocked by Cloudflare (normal for servers") == 1
        assert log.count("deprecated (Deprecation:") == 1
        assert sim.stats()["api_requests"].get("web 403", 0) == 1  # never hammered
        assert service.stop() == 0
