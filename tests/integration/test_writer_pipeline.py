"""The writer's pipelined slices (issue 18, W): a backlog bigger than `batch_size` is committed
slice by slice on two connections, the next slice staged while the previous one commits.

The real BatchWriter on a real PostgreSQL: order within a streamer across slices, a webhook end
whose broadcast the previous slice wrote, a rejected change dropped alone, and a connection
killed by PostgreSQL in the middle (nothing lost, nothing twice after the retry).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg2
import psycopg2.extensions
import pytest

from kick_monitor.config import load_settings
from kick_monitor.framing import bind_listener
from kick_monitor.messages import StatusChange
from kick_monitor.role import standalone_context
from kick_monitor.status_store import apply_changes, finish_changes, prepare, stage_changes
from workers.writer import BatchWriter, streamers_shared

T0 = 1_790_000_000.0
LIVE = "App\\Events\\StreamerIsLive"
STOP = "App\\Events\\StopStreamBroadcast"
STREAMERS = 12
_ids = itertools.count(1)
_seq = itertools.count(1000, 10)


def change(streamer: int, status: str, *, at: float, livestream: int | None = None, source: str = "pusher",
           started: float | None = None, title: str | None = None, asked: float | None = None) -> StatusChange:
    """`at`: when it was received; a webhook's `started`, Kick's start; an API verdict's `asked`."""
    online = status == "online"
    webhook = source == "webhook"
    event = "livestream.status.updated" if webhook else "reconcile" if source == "api" else LIVE if online else STOP
    return StatusChange(
        f"{source}:{next(_ids)}", 100 + streamer, status, source,  # type: ignore[arg-type]
        event, livestream, title,
        (started if online else at) if webhook else (at if online else None), at, time.monotonic(), 0,
        0 if webhook else 1, 0 if webhook else next(_seq), streamer, None, started, asked,
    )


@pytest.fixture
def writer(database_url: str, conn: psycopg2.extensions.connection, tmp_path: Path) -> Iterator[BatchWriter]:
    with conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO kick_monitor.streamers (id, username, channel_id)"
            " SELECT n, 'streamer' || n, 100 + n FROM generate_series(1, %s) n", (STREAMERS,))
    listener = bind_listener(str(tmp_path / "w.sock"))
    settings = load_settings(environ={"KICK_MONITOR_BATCH_SIZE": "4", "KICK_MONITOR_DATA_DIR": str(tmp_path)})
    ctx, supervisor_end = standalone_context("writer", settings, database_url, listener=listener, data_dir=tmp_path)
    batch_writer = BatchWriter(ctx)
    assert batch_writer.connect_database()
    try:
        yield batch_writer
    finally:
        batch_writer.drain()
        listener.close()
        supervisor_end.close()


def history(conn: psycopg2.extensions.connection) -> list[tuple[int, str, str, str, bool]]:
    with conn.cursor() as cur:
        cur.execute("SELECT streamer_id, status, previous_status, source, inferred FROM kick_monitor.status_events"
                    " ORDER BY streamer_id, order_generation, order_seq, received_at, id")
        rows = cur.fetchall()
    conn.commit()
    return rows


def writer_backends(conn: psycopg2.extensions.connection) -> list[int]:
    with conn.cursor() as cur:
        cur.execute("SELECT pid FROM pg_stat_activity WHERE application_name = 'kick-monitor writer'"
                    " AND datname = current_database() ORDER BY pid")
        pids = [row[0] for row in cur.fetchall()]
    conn.commit()
    return pids


def flips(streamers: range, rounds: int, base: int = 0) -> list[StatusChange]:
    """Every streamer online then offline, `rounds` times (even), interleaved with streamer 1,
    which flips between each of them: every slice of 4 shares streamer 1 with the next."""
    out: list[StatusChange] = []
    at = T0 + base
    one = None  # streamer 1's open livestream
    for n in range(rounds):
        for streamer in streamers:
            at += 1
            if one is None:
                one = base + len(out)
                out.append(change(1, "online", at=at, livestream=one))
            else:
                out.append(change(1, "offline", at=at, livestream=one))
                one = None
            out.append(change(streamer, "online" if n % 2 == 0 else "offline", at=at + 0.5,
                              livestream=base + 10_000 * streamer + n - n % 2))
    assert one is None, "streamer 1 ends offline: pass an even count of changes"
    return out


def test_a_backlog_of_slices_commits_every_change_once_in_order_on_two_connections(
    writer: BatchWriter, conn: psycopg2.extensions.connection
) -> None:
    backlog = flips(range(2, STREAMERS + 1), rounds=4)  # 88 changes: 22 slices of 4
    assert writer.commit(backlog)
    assert writer.second is not None and len(writer_backends(conn)) == 2  # it did pipeline
    rows = history(conn)
    assert len(rows) == len(backlog)
    for streamer in range(2, STREAMERS + 1):
        statuses = [status for sid, status, _, _, _ in rows if sid == streamer]
        assert statuses == ["online", "offline", "online", "offline"]
    with conn.cursor() as cur:
        cur.execute("SELECT count(*), count(ended_at) FROM kick_monitor.broadcasts WHERE streamer_id > 1")
        assert cur.fetchone() == (2 * (STREAMERS - 1), 2 * (STREAMERS - 1))  # one row a broadcast, all ended
        cur.execute("SELECT count(DISTINCT status) FROM kick_monitor.streamers WHERE id > 1")
        assert cur.fetchone() == (1,)
    conn.commit()
    assert writer.commit(backlog)  # re-sent after a lost ack: nothing twice
    assert len(history(conn)) == len(backlog)


def test_a_webhook_end_in_the_slice_after_its_start_ends_that_broadcast(
    writer: BatchWriter, conn: psycopg2.extensions.connection
) -> None:
    backlog = [change(STREAMERS, "offline", at=T0 - 100)]  # shifts the rest: a start ends slice 1, its end opens 2
    for streamer in range(1, STREAMERS + 1):
        started = T0 + streamer
        backlog.append(change(streamer, "online", at=started + 2, livestream=700 + streamer))
        backlog.append(change(streamer, "offline", at=started + 60, source="webhook", started=started + 1))
    assert writer.commit(backlog)
    with conn.cursor() as cur:
        cur.execute("SELECT streamer_id, count(*), count(ended_at), bool_or(start_inferred)"
                    " FROM kick_monitor.broadcasts GROUP BY streamer_id ORDER BY streamer_id")
        assert cur.fetchall() == [(s, 1, 1, False) for s in range(1, STREAMERS + 1)]
        cur.execute("SELECT status FROM kick_monitor.streamers ORDER BY id")
        assert {row[0] for row in cur.fetchall()} == {"offline"}
    conn.commit()


def test_a_slice_sharing_a_streamer_is_planned_after_the_one_before_commits(
    writer: BatchWriter, conn: psycopg2.extensions.connection
) -> None:
    """An API verdict asked before a webhook started the broadcast is dropped; the rule reads the
    streamer's latest broadcast. Read while the webhook's slice was still committing, it would see
    broadcasts as they were before (a statement's snapshot), and the verdict would end the broadcast
    the webhook just started. Two things prevent it: the writer stages such a slice only after the
    other committed, and a batch that read a latest broadcast reads its rows again after the locks
    (the next test). Before the second, removing the first failed this test 3 runs out of 3."""
    streamers = range(1, 7)
    assert writer.commit([change(s, "offline", at=T0 - 100) for s in streamers])
    backlog = []
    for s in streamers:  # slices of 4: [verdict on s-1, filler, filler, webhook start of s]
        if s > 1:
            backlog.append(change(s - 1, "offline", source="api", at=T0 + 0.4, asked=T0 - 0.1))
        else:
            backlog.append(change(STREAMERS, "offline", at=T0))
        backlog += [change(STREAMERS - 1, "offline", at=T0), change(STREAMERS - 2, "offline", at=T0)]
        backlog.append(change(s, "online", source="webhook", at=T0 + 0.2, started=T0))
    backlog.append(change(6, "offline", source="api", at=T0 + 0.4, asked=T0 - 0.1))
    assert writer.commit(backlog)
    with conn.cursor() as cur:
        cur.execute("SELECT id, status FROM kick_monitor.streamers WHERE id <= 6 ORDER BY id")
        assert cur.fetchall() == [(s, "online") for s in streamers]
    conn.commit()
    assert [(sid, status) for sid, status, *_ in history(conn) if sid <= 6] == [
        (s, status) for s in streamers for status in ("offline", "online")]


def test_a_change_the_database_rejects_is_dropped_alone(
    writer: BatchWriter, conn: psycopg2.extensions.connection
) -> None:
    backlog = [change(s, "online", at=T0 + s, livestream=900 + s) for s in range(1, STREAMERS + 1)]
    backlog[6] = change(7, "online", at=T0 + 7, livestream=907, title="bad \x00 title")  # text cannot hold NUL
    assert writer.commit(backlog)
    assert sorted(sid for sid, *_ in history(conn)) == [s for s in range(1, STREAMERS + 1) if s != 7]


def test_a_connection_killed_mid_backlog_loses_nothing_and_repeats_nothing(
    writer: BatchWriter, conn: psycopg2.extensions.connection
) -> None:
    first = flips(range(2, STREAMERS + 1), rounds=2)
    assert writer.commit(first)
    with conn.cursor() as cur:  # PostgreSQL ends the second connection (an admin, a failover)
        cur.execute("SELECT pg_terminate_backend(%s)", (writer_backends(conn)[-1],))
    conn.commit()
    second = flips(range(2, STREAMERS + 1), rounds=2, base=1_000_000)
    assert not writer.commit(second)  # the database is marked down, the backlog held
    assert writer.conn is None and writer.second is None
    assert writer.connect_database()
    assert writer.commit(second)
    assert len(history(conn)) == len(first) + len(second)


def test_slices_share_a_streamer_when_a_change_is_keyed_by_channel_alone() -> None:
    keyed = change(3, "online", at=T0)
    by_channel = StatusChange("c", 103, "online", "pusher", LIVE, None, None, None, T0, 0.0, 0)
    assert streamers_shared([keyed], [change(3, "offline", at=T0)])
    assert not streamers_shared([keyed], [change(4, "offline", at=T0)])
    assert streamers_shared([keyed], [by_channel]) and streamers_shared([by_channel], [keyed])


def test_a_writer_that_waited_for_a_row_reads_the_broadcast_the_other_writer_committed(
    database_url: str, writer: BatchWriter, conn: psycopg2.extensions.connection
) -> None:
    """Two writers (two nodes of a cluster, or the pipeline's two connections) on one streamer:
    the second's locking read waits for the first's commit. What it decides on must be what the
    first committed — the row and the streamer's latest broadcast (here: a webhook started it,
    so an API verdict asked before that webhook is dropped, not applied as an end). Only rows whose
    latest broadcast was read are read again after the locks: streamer 2's frame in the same batch
    is decided on its row as the first writer left it (its start recorded, then ended once)."""
    assert writer.commit([change(s, "offline", at=T0 - 100) for s in (1, 2)])
    first, second = psycopg2.connect(database_url), psycopg2.connect(database_url)
    try:
        prepare(first)
        prepare(second)
        staged = stage_changes(first, [change(1, "online", source="webhook", at=T0 + 0.2, started=T0),
                                       change(2, "online", at=T0 + 0.1)])
        verdict = change(1, "offline", source="api", at=T0 + 0.4, asked=T0 - 0.1)
        with ThreadPoolExecutor(max_workers=1) as pool:
            waiting = pool.submit(apply_changes, second, [verdict, change(2, "offline", at=T0 + 0.5)])
            wait_until_blocked(conn, second)
            finish_changes(first, staged)
            assert waiting.result(timeout=10).transitions == 1  # streamer 2's end, not the verdict
    finally:
        first.close()
        second.close()
    with conn.cursor() as cur:
        cur.execute("SELECT id, status FROM kick_monitor.streamers WHERE id IN (1, 2) ORDER BY id")
        assert cur.fetchall() == [(1, "online"), (2, "offline")]
        cur.execute("SELECT count(*), count(ended_at) FROM kick_monitor.broadcasts WHERE streamer_id = 2")
        assert cur.fetchone() == (1, 1), "one broadcast for streamer 2, started by the first writer, ended once"
    conn.commit()


def wait_until_blocked(observer: psycopg2.extensions.connection, blocked: psycopg2.extensions.connection) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with observer.cursor() as cur:
            cur.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (blocked.get_backend_pid(),))
            found = cur.fetchone()
        observer.commit()
        if found and found[0] == "Lock":
            return
        time.sleep(0.01)
    raise AssertionError("the second writer never waited for the row lock")


def test_the_commit_threads_end_with_the_backlog_and_the_second_connection_after_a_quiet_while(
    writer: BatchWriter, conn: psycopg2.extensions.connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The soak's rule: threads and fds back at their level after each burst."""
    threads = threading.active_count()
    assert writer.commit(flips(range(2, STREAMERS + 1), rounds=2))
    assert threading.active_count() == threads  # the two commit threads lived for the backlog only
    assert len(writer_backends(conn)) == 2
    writer.step()  # a turn with nothing to do: the second connection was just used, it stays
    assert writer.second is not None
    monkeypatch.setattr("workers.writer.SECOND_CONNECTION_IDLE", 0.0)
    writer.step()
    assert writer.second is None
    deadline = time.monotonic() + 10  # a closed connection's backend exits a moment later
    while len(writer_backends(conn)) != 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(writer_backends(conn)) == 1
    assert writer.commit(flips(range(2, STREAMERS + 1), rounds=2, base=1_000_000))  # opened again when needed
    assert len(writer_backends(conn)) == 2


def test_after_a_burst_the_main_connection_is_swapped_for_a_fresh_one_and_still_commits(
    writer: BatchWriter, conn: psycopg2.extensions.connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """libpq keeps the buffers a burst's slices grew until the connection closes (the M bench's 1.6 MB):
    a quiet while after a burst, the writer renews its main connection; small batches never do."""
    monkeypatch.setattr("workers.writer.BURST_BATCH", 12)
    first = writer.conn
    assert first is not None
    small = flips(range(2, 5), rounds=2)
    assert writer.commit(small)  # 12 changes: not a burst
    monkeypatch.setattr("workers.writer.BURST_OVER", 0.0)
    writer.step()
    assert writer.conn is first  # nothing to renew after a batch of BURST_BATCH or fewer
    monkeypatch.setattr("workers.writer.BURST_OVER", 3600.0)
    burst = flips(range(5, STREAMERS + 1), rounds=2, base=500_000)
    assert writer.commit(burst)  # 32 changes: a burst, pipelined
    writer.step()
    assert writer.conn is first and writer.second is not None  # the burst is not over yet
    monkeypatch.setattr("workers.writer.BURST_OVER", 0.0)
    writer.step()
    assert writer.conn is not None and writer.conn is not first and first.closed
    assert writer.second is None  # closed with it
    deadline = time.monotonic() + 10  # closed connections' backends exit a moment later
    while len(writer_backends(conn)) != 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert writer_backends(conn) == [writer.conn.get_backend_pid()]
    writer.step()
    assert writer.conn is not None and not writer.conn.closed  # renewed once, not at every turn
    later = flips(range(2, 5), rounds=2, base=1_000_000)
    assert writer.commit(later)  # the fresh connection has the batch statements prepared
    submitted = [change.change_id for change in small + burst + later]
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM kick_monitor.status_events WHERE change_id = ANY(%s)", (submitted,))
        assert cur.fetchone() == (len(submitted),)  # every change of every batch recorded once
    conn.commit()
    rows = history(conn)
    for streamer in range(2, STREAMERS + 1):
        statuses = [status for sid, status, _, _, _ in rows if sid == streamer]
        assert statuses == ["online", "offline"] * (2 if streamer < 5 else 1)  # in order, none twice


def test_an_outage_is_replayed_slice_by_slice_on_one_connection_in_order_once(
    writer: BatchWriter, conn: psycopg2.extensions.connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An outage's spool and held backlog (round 12): committed a slice at a time on the one
    connection in the writer's own thread, the spool read a slice at a time — no second
    connection, no commit threads (their memory stayed resident after the replay)."""
    spooled = flips(range(2, STREAMERS + 1), rounds=2)  # 44 changes: 11 slices of 4, streamer 1 in each
    held = flips(range(2, STREAMERS + 1), rounds=2, base=1_000_000)
    writer.spool.append(spooled[:20])
    writer.spool.append(spooled[20:])
    writer.held.add(1, 1, tuple(held), time.monotonic())
    threads = threading.active_count()
    with monkeypatch.context() as patched:
        patched.setattr(
            threading.Thread, "start", lambda self: pytest.fail(f"a thread started during the replay: {self.name}")
        )
        writer.recover(time.monotonic())
    assert threading.active_count() == threads
    assert writer.second is None and len(writer_backends(conn)) == 1
    assert not writer.spool and not writer.held
    rows = history(conn)
    assert len(rows) == len(spooled) + len(held)
    for streamer in range(2, STREAMERS + 1):
        assert [status for sid, status, _, _, _ in rows if sid == streamer] == ["online", "offline"] * 2
    assert [status for sid, status, _, _, _ in rows if sid == 1] == ["online", "offline"] * (len(rows) // 4)


def test_a_replay_cut_by_a_lost_connection_keeps_the_segment_and_finishes_it_once(
    writer: BatchWriter, conn: psycopg2.extensions.connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    spooled = flips(range(2, STREAMERS + 1), rounds=2)
    writer.spool.append(spooled)
    slices = 0
    commit_slice = writer._commit_slice

    def lose_the_connection_at_the_third(part: list[StatusChange]) -> bool:
        nonlocal slices
        slices += 1
        if slices == 3:
            with conn.cursor() as cur:
                cur.execute("SELECT pg_terminate_backend(%s)", (writer_backends(conn)[0],))
            conn.commit()
        return commit_slice(part)

    monkeypatch.setattr(writer, "_commit_slice", lose_the_connection_at_the_third)
    writer.recover(time.monotonic())
    assert writer.conn is None and writer.spool  # two slices committed, the segment kept
    assert len(history(conn)) == 8
    writer.recover(time.monotonic())
    assert not writer.spool
    assert len(history(conn)) == len(spooled)
