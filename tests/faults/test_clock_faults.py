"""Wall-clock steps (issue 14): the real service under libfaketime, PostgreSQL and the simulator unfaked.

The `libfaketime` wheel (test extra) ships the preload library; every process of the
service tree runs with `LD_PRELOAD` of it and `DONT_FAKE_MONOTONIC=1`, so only the wall
clock lies, as after an NTP step or a VM restore. Each test also proves the lie took
effect (recorded `received_at` earlier than the database's `recorded_at`, or going
backwards), so it cannot pass with the faking silently off.
"""

from __future__ import annotations

import importlib.util
import time
import urllib.request
from pathlib import Path

import psycopg2.extensions
import pytest

from kick_sim import Simulator
from tests.conftest import free_port
from tests.faults.conftest import ServiceFactory
from tests.faults.faultkit import FaultService, assert_no_duplicates, converge, record
from tests.service import insert_streamers, query, wait_until

pytestmark = pytest.mark.timeout(240)

RECONCILE = "3"  # seconds: reconciliation is part of what must keep working


def libfaketime_path() -> Path:
    """The preload library inside the installed `libfaketime` wheel (never skipped: CI installs it)."""
    spec = importlib.util.find_spec("libfaketime")
    assert spec is not None and spec.submodule_search_locations, "pip install -e '.[test]' installs libfaketime"
    path = Path(next(iter(spec.submodule_search_locations))) / "vendor" / "libfaketime" / "src" / "libfaketime.so.1"
    assert path.is_file(), f"libfaketime wheel without {path}"
    return path


def fake_clock(service: FaultService, *, offset: str | None = None, offset_file: Path | None = None) -> None:
    """Run `service` with its wall clock shifted by `offset` ("-10s"), or by what `offset_file` says."""
    env = service.env
    env["LD_PRELOAD"] = str(libfaketime_path())
    env["DONT_FAKE_MONOTONIC"] = "1"
    env["FAKETIME_DONT_FAKE_MONOTONIC"] = "1"
    if offset_file is not None:
        env["FAKETIME_TIMESTAMP_FILE"] = str(offset_file)
        env["FAKETIME_NO_CACHE"] = "1"
    else:
        assert offset is not None
        env["FAKETIME"] = offset


def set_offset(path: Path, offset: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(offset + "\n")
    tmp.replace(path)  # atomic: a reader never sees an empty file


def clock_skew(conn: psycopg2.extensions.connection) -> float:
    """Newest transition's recorded_at (database clock) minus its received_at (the service's clock)."""
    return float(query(
        conn,
        "SELECT extract(epoch FROM recorded_at - received_at)::float8 FROM kick_monitor.status_events"
        " ORDER BY id DESC LIMIT 1",
    )[0][0])


def backward_steps(conn: psycopg2.extensions.connection) -> int:
    """Transitions whose received_at is earlier than the one recorded before them (per channel)."""
    return int(query(
        conn,
        "SELECT count(*) FROM (SELECT received_at < lag(received_at) OVER"
        " (PARTITION BY channel_id ORDER BY order_generation, order_seq, id) AS back"
        " FROM kick_monitor.status_events) s WHERE back",
    )[0][0])


def clock_offset_metric(port: int) -> float | None:
    """`kick_monitor_clock_offset_seconds` from the service's /metrics, None until exported."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    for line in text.splitlines():
        if line.startswith("kick_monitor_clock_offset_seconds"):
            return float(line.rsplit(" ", 1)[1])
    return None


def generations(conn: psycopg2.extensions.connection, added: int) -> tuple[int, int, int]:
    """Generations in history: the first run's unknown→online rows, the restart's offline rows, the added streamer."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT max(order_generation) FILTER (WHERE previous_status = 'unknown' AND channel_id <> %s),"
            " min(order_generation) FILTER (WHERE status = 'offline' AND previous_status = 'online'),"
            " max(order_generation) FILTER (WHERE channel_id = %s)"
            " FROM kick_monitor.status_events", (added, added),
        )
        row = cur.fetchone()
    conn.rollback()
    assert row is not None
    return row[0] or 0, row[1] or 0, row[2] or 0


def stuck(conn: psycopg2.extensions.connection, sim: Simulator) -> int:
    with conn.cursor() as cur:
        cur.execute("SELECT channel_id, status FROM kick_monitor.streamers")
        state = dict(cur.fetchall())
    conn.rollback()
    truth = {s.channel_id: "online" if sim.is_live(s.slug) else "offline" for s in sim.streamers()}
    return sum(1 for channel_id, status in truth.items() if state.get(channel_id) != status)


def test_restart_with_the_clock_10s_behind_then_everyone_goes_offline(
    sim: Simulator, conn: psycopg2.extensions.connection, services: ServiceFactory
) -> None:
    """The issue's measured bug: 120 of 120 offline events were dropped as "older"."""
    streamers = sim.create_streamers(120)
    insert_streamers(conn, streamers)
    first = services(reconcile_interval=RECONCILE)
    first.start()
    wait_until(lambda: sim.subscription_count() >= 240, 30, what="240 subscriptions")
    for s in streamers:
        sim.set_live(s.slug, True)
    converge(sim, conn, 30, exact=True)
    assert first.stop() == 0

    port = free_port()
    second = services(reconcile_interval=RECONCILE, metrics_port=str(port))
    fake_clock(second, offset="-10s")
    second.start()
    wait_until(lambda: sim.subscription_count() >= 240, 30, what="240 subscriptions after the restart")
    for s in streamers:
        sim.set_live(s.slug, False)
    started = time.monotonic()
    try:
        converge(sim, conn, 30, exact=True)
    finally:
        left = stuck(conn, sim)
        record("clock 10 s behind after a restart: 120 go offline", time.monotonic() - started, f"{left} stuck")
    assert left == 0
    assert 9.0 < clock_skew(conn) < 12.0, "the service's clock was not 10 s behind: libfaketime not in effect"
    # Reconciliation still repairs a missed event under the shifted clock.
    missed = streamers[0].slug
    sim.set_live(missed, True, send_event=False)
    converge(sim, conn, 20, exact=True)
    assert_no_duplicates(conn)
    assert second.messages("local clock is"), "the clock check at start said nothing"
    offset = clock_offset_metric(port)
    assert offset is not None and 9.0 < offset < 12.0, f"clock offset metric {offset}, expected ~10 s"
    # A streamer added while running is handed over with a generation newer than the first run's.
    [late] = sim.create_streamers(1, prefix="late")
    insert_streamers(conn, [late])
    wait_until(lambda: sim.subscription_count() >= 242, 20, what="the added streamer subscribed")
    sim.set_live(late.slug, True)
    converge(sim, conn, 20, exact=True)
    first_run, restart, added = generations(conn, late.channel_id)
    assert 0 < first_run < restart < added, (first_run, restart, added)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("what", "flips", "steps"),
    [
        ("clock stepped back 30 s during flips", 12.0, [(5.0, "-30s")]),
        ("clock forward 1 h and back during flips", 15.0, [(4.0, "+1h"), (5.0, "+0")]),
    ],
    ids=["back-30s", "forward-1h-and-back"],
)
def test_clock_steps_during_flips_drop_nothing(
    what: str, flips: float, steps: list[tuple[float, str]],
    sim: Simulator, conn: psycopg2.extensions.connection, services: ServiceFactory, tmp_path: Path,
) -> None:
    """Each step: wait, then move the running service's wall clock (libfaketime reads the file anew)."""
    insert_streamers(conn, sim.create_streamers(300))
    offset = tmp_path / "faketime"
    set_offset(offset, "+0")
    service = services(shard_count="2", reconcile_interval=RECONCILE)
    fake_clock(service, offset_file=offset)
    service.start()
    wait_until(lambda: sim.subscription_count() >= 600, 30, what="600 subscriptions")
    sim.start_flipping(rate=100.0, duration=flips)
    for wait, step in steps:
        time.sleep(wait)
        set_offset(offset, step)
    assert sim.wait_flipping_done(timeout=60)
    seconds = converge(sim, conn, 30, exact=True)
    record(what, seconds, f"{stuck(conn, sim)} stuck")
    assert backward_steps(conn) > 0, "no received_at went backwards: the step did not happen"
    assert_no_duplicates(conn)
    # Flips after the steps, on streamers whose rows may hold times from another clock, still land.
    for s in sim.streamers()[:20]:
        sim.set_live(s.slug, not sim.is_live(s.slug))
    converge(sim, conn, 20, exact=True)
