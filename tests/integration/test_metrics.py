"""The metrics endpoint of a real `kick-monitor run`, scraped while the simulator drives it.

One process tree (coordinator, writer, two workers) serves one endpoint from the
multiprocess directory. The test scrapes it with `requests`, parses it with
prometheus_client's own parser, and checks that every family moves the way the traffic
says it should: frames, status changes, commits, latency, reconnects, parse errors, API
requests, and worker restarts — and that a SIGKILLed worker's live gauges die with it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

import psycopg2.extensions
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from kick_monitor import __version__, metrics
from kick_sim import Simulator
from tests.conftest import free_port
from tests.service import (
    REPO,
    Service,
    insert_streamers,
    listening_addresses,
    mismatches,
    running,
    service_env,
    status_transitions,
    wait_until,
)

pytestmark = pytest.mark.timeout(120)

STREAMERS = 60
SHARDS = 2


@dataclass(frozen=True)
class Scrape:
    """One parsed scrape: family name -> type, and every sample by (name, labels)."""

    types: dict[str, str]
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]

    def value(self, name: str, **labels: str) -> float:
        """Sum of the samples called `name` whose labels include `labels` (0 if none)."""
        wanted = set(labels.items())
        return sum(v for (n, lbls), v in self.samples.items() if n == name and wanted <= set(lbls))

    def label_values(self, name: str, label: str) -> set[str]:
        return {dict(lbls)[label] for (n, lbls) in self.samples if n == name and label in dict(lbls)}


def scrape(url: str) -> Scrape:
    response = requests.get(url, timeout=5)
    response.raise_for_status()
    types: dict[str, str] = {}
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(response.text):
        types[family.name] = family.type
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return Scrape(types, samples)


def eventually(url: str, check: str, predicate: object, timeout: float = 15.0) -> Scrape:
    """Scrape until `predicate(scrape)` holds; return that scrape."""
    last: list[Scrape] = []

    def ok() -> bool:
        last[:] = [scrape(url)]
        return bool(predicate(last[0]))  # type: ignore[operator]

    wait_until(ok, timeout, interval=0.2, what=check)
    return last[0]


@pytest.mark.slow  # long end to end: make test-slow
def test_metrics_move_with_traffic_and_worker_kills(
    sim: Simulator, conn: psycopg2.extensions.connection, database_url: str, tmp_path: Path
) -> None:
    streamers = sim.create_streamers(STREAMERS)
    insert_streamers(conn, streamers)
    with conn, conn.cursor() as cur:  # a slug Kick does not know: stays unresolved
        cur.execute("INSERT INTO kick_monitor.streamers (username) VALUES ('nobody-knows-me')")
    port = free_port()
    data_dir = tmp_path / "data"
    stale = data_dir / "metrics" / "all" / "counter_999999.db"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"left over from an earlier run")
    env = service_env(sim, database_url, data_dir, shard_count=str(SHARDS), metrics_port=str(port))
    url = f"http://127.0.0.1:{port}/metrics"
    service = Service(env, tmp_path / "service.log")
    with running(service):
        service.wait_children(SHARDS)
        wait_until(lambda: sim.subscription_count() >= 2 * STREAMERS, 20, what="subscriptions")

        # -- at rest: build info, connections, subscriptions, streamer counts --------------------------
        first = eventually(url, "both shards connected", lambda s: all(
            s.value("kick_monitor_pusher_connected", shard=str(i)) == 1 for i in range(SHARDS)))
        assert not stale.exists(), "the multiprocess directory is wiped at start"
        assert listening_addresses(port) == {"127.0.0.1"}, "metrics bind to loopback (metrics_host) only"
        assert first.value("kick_monitor_build_info", version=__version__) == 1
        assert sum(first.value("kick_monitor_pusher_subscriptions", shard=str(i)) for i in range(SHARDS)) \
            == 2 * STREAMERS  # lifecycle_channels=both: two channels per streamer
        assert first.label_values("kick_monitor_pusher_subscriptions", "shard") == {"0", "1"}
        resolved = eventually(url, "streamers counted by status", lambda s: s.value(
            "kick_monitor_streamers", status="unresolved") == 1 and sum(s.value(
                "kick_monitor_streamers", status=st) for st in ("online", "offline", "unknown")) == STREAMERS)
        assert resolved.value("kick_monitor_database_up") == 1
        # reconciliation at connect asked the official API (the planner, for every worker) with a fresh token
        eventually(url, "API requests counted", lambda s: s.value(
            "kick_monitor_api_requests_total", endpoint="/public/v1/channels", status="200") >= SHARDS
            and s.value("kick_monitor_api_token_refreshes_total") >= 1)

        # -- traffic: frames, changes, commits, latency, batches ----------------------------------------
        before = scrape(url)
        sim.start_flipping(rate=60.0, duration=2.0)
        assert sim.wait_flipping_done(timeout=20)
        wait_until(lambda: not mismatches(sim, conn), 20, interval=0.2, what="database to match the simulator")
        transitions = len(status_transitions(sim.truth()))
        online = sum(1 for t in status_transitions(sim.truth()) if t.status == "online")
        assert transitions >= 40
        # workers export their frame and change counts once a second (REPORT_EVERY), the writer at each commit
        after = eventually(url, "commits, changes and frames counted", lambda s: s.value(
            "kick_monitor_writer_committed_changes_total", outcome="transition") >= transitions
            and s.value("kick_monitor_status_changes_total", source="pusher") >= transitions
            and s.value("kick_monitor_frames_received_total", event=r"App\Events\StreamerIsLive") >= online)
        frames = after.value("kick_monitor_frames_received_total") - before.value("kick_monitor_frames_received_total")
        assert frames >= transitions
        assert after.value("kick_monitor_frames_received_total", event=r"App\Events\StreamerIsLive") >= online
        assert after.value("kick_monitor_status_changes_total", status="online", source="pusher") >= online
        assert after.value("kick_monitor_status_changes_total", source="pusher") >= transitions
        assert after.label_values("kick_monitor_status_changes_total", "shard") == {"0", "1"}
        assert after.value("kick_monitor_frame_to_commit_seconds_count", source="pusher") >= transitions
        assert after.value("kick_monitor_frame_to_commit_seconds_bucket", source="pusher", le="+Inf") \
            == after.value("kick_monitor_frame_to_commit_seconds_count", source="pusher")
        assert after.value("kick_monitor_frame_to_commit_seconds_bucket", source="pusher", le="1.0") \
            == after.value("kick_monitor_frame_to_commit_seconds_count", source="pusher"), "all under 1 s"
        batches = "kick_monitor_writer_batch_size_count"
        assert after.value(batches) > before.value(batches)
        assert after.value("kick_monitor_writer_batch_size_sum") >= transitions
        assert after.value("kick_monitor_writer_commit_duration_seconds_count") \
            == after.value("kick_monitor_writer_batch_size_count")
        assert after.value("kick_monitor_writer_queue_depth") == 0

        # -- one change, two rows: the end nobody announced is inferred when the next broadcast starts -----
        writer = service.writer_pid()
        target = streamers[0].slug
        if not sim.is_live(target):
            sim.set_live(target, True)
        wait_until(lambda: not mismatches(sim, conn), 20, interval=0.2, what=f"{target} online")
        sim.set_live(target, False, send_event=False)  # its end is never sent
        sim.set_live(target, True)  # a new livestream id: the writer infers the end of the last one
        inferred = eventually(url, "an inferred row counted", lambda s: s.value(
            "kick_monitor_writer_committed_changes_total", outcome="inferred") >= 1)
        assert inferred.value("kick_monitor_writer_committed_changes_total", outcome="transition") \
            == after.value("kick_monitor_writer_committed_changes_total", outcome="transition") + 1
        assert service.writer_pid() == writer, "a batch writing more rows than changes crashed the writer"

        # -- parse errors by kind, reconnects by reason --------------------------------------------------
        assert sim.send_malformed("bad_json") > 0
        eventually(url, "parse errors counted", lambda s: s.value(
            "kick_monitor_parse_errors_total", kind="bad_json") >= SHARDS)
        assert sim.drop_connections() == SHARDS
        reconnected = eventually(url, "reconnects counted and back up", lambda s: s.value(
            "kick_monitor_pusher_reconnects_total") >= SHARDS and all(
                s.value("kick_monitor_pusher_connected", shard=str(i)) == 1 for i in range(SHARDS)))
        assert reconnected.label_values("kick_monitor_pusher_reconnects_total", "reason") <= {
            "connection_lost", "closed_by_server"}

        # -- Kick API trouble: 429s, the retries after them, the client-side wait they cause -------------
        assert reconnected.value("kick_monitor_api_rate_limited_total") == 0
        sim.set_api_mode("rate_limit", surface="official", retry_after=1)
        try:
            assert sim.drop_connections() == SHARDS  # every (re)connect reconciles over the official API
            limited = eventually(url, "429s and retries counted", lambda s: s.value(
                "kick_monitor_api_rate_limited_total") >= 1 and s.value("kick_monitor_api_retries_total") >= 1)
        finally:
            sim.set_api_mode(None)
        assert limited.value("kick_monitor_api_requests_total", status="429") >= 1
        # Retry-After: 1 holds every request of that client back for about a second
        eventually(url, "throttled seconds counted", lambda s: s.value(
            "kick_monitor_api_throttled_seconds_total") >= 0.5)
        eventually(url, "both shards connected again", lambda s: all(
            s.value("kick_monitor_pusher_connected", shard=str(i)) == 1 for i in range(SHARDS)))

        # -- a SIGKILLed worker: restart counted, its live gauges gone with it ---------------------------
        assert reconnected.value("kick_monitor_worker_restarts_total", role="worker") == 0
        victim = service.worker_pids()[1]
        sim.refuse_connections(True)  # the replacement cannot connect: its gauge says 0, the dead one's said 1
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: service.worker_pids().get(1, victim) != victim, 15, what="worker 1 restarted")
        killed = eventually(url, "restart counted, dead worker's gauge gone", lambda s: s.value(
            "kick_monitor_worker_restarts_total", role="worker") == 1
            and s.value("kick_monitor_pusher_connected", shard="1") == 0)
        assert killed.value("kick_monitor_pusher_connected", shard="0") == 1
        assert not list((data_dir / "metrics" / "all").glob(f"gauge_live*_{victim}.db"))
        frames_total = "kick_monitor_frames_received_total"
        assert killed.value(frames_total) >= after.value(frames_total), "the dead worker's counters stay"
        sim.refuse_connections(False)
        eventually(url, "shard 1 connected again", lambda s: s.value("kick_monitor_pusher_connected", shard="1") == 1)

        # -- `make metrics` prints the scrape ------------------------------------------------------------
        printed = subprocess.run(
            ["sh", str(REPO / "scripts" / "ops.sh"), "metrics"], capture_output=True, text=True, timeout=20,
            env={**os.environ, "KICK_MONITOR_METRICS_HOST": "127.0.0.1", "KICK_MONITOR_METRICS_PORT": str(port)},
            check=False,
        )
        assert printed.returncode == 0, printed.stderr
        assert f'kick_monitor_build_info{{version="{__version__}"}} 1.0' in printed.stdout

        final = scrape(url)
        assert service.stop() == 0
    check_conventions(final)


def check_conventions(scraped: Scrape) -> None:
    """Every exposed family is one of ours and named by Prometheus conventions."""
    defined = {m._name: m._type for m in vars(metrics).values() if hasattr(m, "_type") and hasattr(m, "_name")}
    assert set(scraped.types) <= set(defined), set(scraped.types) - set(defined)
    for name, kind in scraped.types.items():
        assert re.fullmatch(r"kick_monitor_[a-z0-9_]+", name), name
        assert kind == defined[name]
        sample_names = {n for (n, _) in scraped.samples if n == name or n.startswith(name + "_")}
        if kind == "counter":
            assert sample_names == {name + "_total"}, (name, sample_names)
        elif kind == "histogram":
            assert {name + "_bucket", name + "_count", name + "_sum"} <= sample_names
        else:
            assert not name.endswith("_total"), name
