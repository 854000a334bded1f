"""Issue 13 end to end: streamers monitored from their user id alone, and every exposed broadcast in history.

Real `kick-monitor run` against the in-process simulator. Streamers are matched by slug
(their row ids differ from every Kick id), and the truth is the simulator's.
"""

from __future__ import annotations

import time
from pathlib import Path

import psycopg2
import psycopg2.extensions
import pytest

from kick_sim import SimStreamer, Simulator
from tests.service import Service, query, running, service_env, wait_until

pytestmark = pytest.mark.timeout(240)

WITHOUT_PUSHER_INTERVAL = 3.0


def by_slug(conn: psycopg2.extensions.connection) -> dict[str, str]:
    return dict(query(conn, "SELECT username, status FROM kick_monitor.streamers"))


def wrong(sim: Simulator, conn: psycopg2.extensions.connection, streamers: list[SimStreamer]) -> list[str]:
    """Slugs whose database status is not the simulator's truth (unknown is not offline here)."""
    state = by_slug(conn)
    return [s.slug for s in streamers if state.get(s.slug) != ("online" if sim.is_live(s.slug) else "offline")]


def insert_without_channel(conn: psycopg2.extensions.connection, streamers: list[SimStreamer]) -> None:
    """As the resolver leaves them today: a user id (from /public/v1/channels?slug=), no channel id."""
    with conn, conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO kick_monitor.streamers (username, kick_user_id) VALUES (%s, %s)",
            [(s.slug, s.user_id) for s in streamers],
        )


def make_service(sim: Simulator, url: str, tmp_path: Path, **settings: str) -> Service:
    return Service(service_env(sim, url, tmp_path / "data", **settings), tmp_path / "service.log")


@pytest.mark.parametrize("count", [pytest.param(60, id="60"), pytest.param(1000, id="1000", marks=pytest.mark.slow)])
def test_streamers_with_only_a_user_id_are_monitored_and_join_pusher_later(
    count: int, sim: Simulator, conn: psycopg2.extensions.connection, database_url: str, tmp_path: Path
) -> None:
    sim.set_api_mode("cloudflare_403", surface="web")  # as on a server today: no channel ids from the web API
    streamers = sim.create_streamers(count, prefix="uid")
    insert_without_channel(conn, streamers)
    live = streamers[::5]
    service = make_service(
        sim, database_url, tmp_path, shard_count="2", reconcile_interval="600",
        reconcile_interval_without_pusher=str(WITHOUT_PUSHER_INTERVAL), api_rate="100", api_burst="100",
    )
    with running(service):
        service.wait_children(2)
        wait_until(lambda: not wrong(sim, conn, streamers), 30, what="every streamer's first status")
        assert sim.subscription_count() == 0  # nothing to subscribe: no channel ids
        for s in live:
            sim.set_live(s.slug, True)
        changed_at = time.monotonic()
        # No Pusher: detected by the API within one interval (plus the reconciliation itself).
        waited = wait_until(lambda: not wrong(sim, conn, streamers), WITHOUT_PUSHER_INTERVAL + 15,
                            interval=0.2, what="API-only streamers to follow the truth")
        print(f"\n{count} streamers without Pusher: {len(live)} went live, all recorded after {waited:.1f} s")
        assert time.monotonic() - changed_at < WITHOUT_PUSHER_INTERVAL + 15
        sources = dict(query(conn, "SELECT source, count(*) FROM kick_monitor.status_events"
                                   " WHERE status = 'online' GROUP BY 1"))
        assert sources == {"api": len(live)}
        assert query(conn, "SELECT count(*) FROM kick_monitor.broadcasts WHERE ended_at IS NULL") == [(len(live),)]

        # The live ones' channel ids become known (stored as the resolver stores them): Pusher, no restart.
        pids = service.worker_pids()
        with conn, conn.cursor() as cur:
            cur.executemany("UPDATE kick_monitor.streamers SET channel_id = %s WHERE username = %s",
                            [(s.channel_id, s.slug) for s in live])
        wanted = {f"channel.{s.channel_id}" for s in live}
        wait_until(lambda: wanted <= sim.subscribed_channels(), 20, what="Pusher subscriptions for new channel ids")
        assert service.worker_pids() == pids, "no worker was restarted"
        for s in live[:5]:
            sim.set_live(s.slug, False)
        wait_until(lambda: not wrong(sim, conn, streamers), 10, interval=0.1, what="offline over Pusher")
        ended = query(conn, "SELECT source, count(*) FROM kick_monitor.status_events WHERE status = 'offline'"
                            " AND previous_status = 'online' GROUP BY 1")
        assert ended == [("pusher", 5)]
        assert service.stop() == 0


def broadcasts_of(conn: psycopg2.extensions.connection) -> dict[str, list[tuple[bool, bool]]]:
    """Per slug: (ended, end inferred) of each broadcast, oldest first."""
    rows = query(conn, "SELECT s.username, b.ended_at IS NOT NULL, b.end_inferred FROM kick_monitor.broadcasts b"
                       " JOIN kick_monitor.streamers s ON s.id = b.streamer_id ORDER BY b.started_at, b.id")
    result: dict[str, list[tuple[bool, bool]]] = {}
    for slug, ended, inferred in rows:
        result.setdefault(slug, []).append((ended, inferred))
    return result


def test_every_exposed_broadcast_is_in_history_after_all_connections_dropped(
    sim: Simulator, conn: psycopg2.extensions.connection, database_url: str, tmp_path: Path
) -> None:
    streamers = sim.create_streamers(30, prefix="s4")
    with conn, conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO kick_monitor.streamers (username, channel_id, kick_user_id) VALUES (%s, %s, %s)",
            [(s.slug, s.channel_id, s.user_id) for s in streamers],
        )
    restarted, hidden, untouched = streamers[:10], streamers[10:20], streamers[20:]
    service = make_service(sim, database_url, tmp_path, shard_count="2", reconcile_interval="600",
                           broadcast_match_tolerance="2", api_rate="100", api_burst="100")
    with running(service):
        service.wait_children(2)
        wait_until(lambda: sim.subscription_count() >= 60, 20, what="subscriptions")
        for s in streamers:
            sim.set_live(s.slug, True)
        wait_until(lambda: not wrong(sim, conn, streamers), 20, interval=0.2, what="everyone live")
        sim.refuse_connections(True)
        sim.drop_connections()
        time.sleep(3.0)  # the new broadcasts start later than the old ones by more than the tolerance
        for s in restarted:  # offline → online during the outage: a new broadcast, exposed afterwards
            sim.set_live(s.slug, False)
            sim.set_live(s.slug, True)
        for s in hidden:  # a whole broadcast inside the outage: no source can ever see it
            sim.set_live(s.slug, False)
            sim.set_live(s.slug, True)
            sim.set_live(s.slug, False)
        sim.refuse_connections(False)
        wait_until(lambda: not wrong(sim, conn, streamers), 40, interval=0.2, what="state after the outage")
        wait_until(lambda: all(len(broadcasts_of(conn).get(s.slug, [])) == 2 for s in restarted), 10,
                   what="the restarted broadcasts")
        seen = broadcasts_of(conn)
        assert service.stop() == 0
    for s in restarted:
        assert seen[s.slug] == [(True, True), (False, False)], s.slug  # the end inferred, the new one open
    for s in hidden:
        assert seen[s.slug] == [(True, False)], s.slug  # counted by the bench, not invented
    for s in untouched:
        assert seen[s.slug] == [(False, False)], s.slug
    chains = query(conn, "SELECT s.username, string_agg(e.status || CASE WHEN e.inferred THEN '*' ELSE '' END, ','"
                         " ORDER BY e.order_generation, e.order_seq, e.received_at, e.id)"
                         " FROM kick_monitor.status_events e JOIN kick_monitor.streamers s ON s.id = e.streamer_id"
                         " WHERE e.previous_status <> 'unknown' OR e.status = 'online' GROUP BY 1")
    chain = dict(chains)
    assert {chain[s.slug] for s in restarted} == {"online,offline*,online"}
    assert {chain[s.slug] for s in hidden} == {"online,offline"}
