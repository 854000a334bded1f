"""The writer's backlog: order, the highest seq per connection id, and holding failed commits in front."""

from __future__ import annotations

import socket
from pathlib import Path

from kick_monitor.config import load_settings
from kick_monitor.framing import FramedSocket, bind_listener
from kick_monitor.messages import Ack, ChangeBatch, StatusChange
from kick_monitor.role import standalone_context
from workers.writer import Backlog, BatchWriter


def change(n: int) -> StatusChange:
    return StatusChange(f"c{n}", n, "online", "pusher", "e", None, None, None, 1000.0 + n, 1.0 + n, 0)


def changes(*ns: int) -> tuple[StatusChange, ...]:
    return tuple(change(n) for n in ns)


def test_add_keeps_arrival_order_and_the_highest_seq_per_connection() -> None:
    backlog = Backlog()
    backlog.add(1, 5, changes(1, 2), now=10.0)
    backlog.add(2, 3, changes(3), now=11.0)
    backlog.add(1, 4, changes(4), now=12.0)  # a lower seq never lowers the ack
    backlog.add(1, 6, changes(5), now=13.0)
    assert backlog.changes == list(changes(1, 2, 3, 4, 5))
    assert backlog.acks == {1: 6, 2: 3}
    assert backlog.since == 10.0
    assert len(backlog) == 5


def test_take_hands_everything_over_and_leaves_it_empty() -> None:
    backlog = Backlog()
    backlog.add(1, 1, changes(1), now=0.0)
    taken, acks = backlog.take()
    assert (taken, acks) == ([change(1)], {1: 1})
    assert not backlog and backlog.acks == {} and backlog.since is None


def test_merge_appends_and_keeps_the_highest_seq_and_the_earliest_since() -> None:
    held, pending = Backlog(), Backlog()
    held.add(1, 7, changes(1), now=5.0)
    pending.add(1, 3, changes(2), now=0.0)  # since 0.0 is a time like any other
    pending.add(2, 9, changes(3), now=6.0)
    held.merge(pending)
    assert held.changes == list(changes(1, 2, 3))
    assert held.acks == {1: 7, 2: 9}
    assert held.since == 0.0


def test_merge_in_front_keeps_older_before_newer() -> None:
    held = Backlog()
    held.add(1, 9, changes(8, 9), now=20.0)  # newer, arrived while the old ones were being committed
    failed = Backlog()
    failed.add(1, 4, changes(1, 2), now=3.0)  # older: the commit that failed
    held.merge(failed, front=True)
    assert held.changes == list(changes(1, 2, 8, 9))
    assert held.acks == {1: 9}
    assert held.since == 3.0


class DownThenUpWriter(BatchWriter):
    """A writer whose database is down until `up` is set; records what it commits, in order."""

    up = False

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.commits: list[list[StatusChange]] = []

    def connect_database(self) -> bool:
        return self.up

    def _commit_slice(self, changes: list[StatusChange]) -> bool:  # what commit and a replay both call
        if not self.up:
            return False
        self.commits.append(list(changes))
        return True


def test_held_changes_commit_before_newer_ones_and_are_acknowledged_only_then(tmp_path: Path) -> None:
    listener = bind_listener(str(tmp_path / "w.sock"))
    worker = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    worker.connect(str(tmp_path / "w.sock"))
    framed = FramedSocket(worker)
    ctx, _supervisor_end = standalone_context(
        "writer", load_settings(environ={}), "postgresql://unused/db", listener=listener, data_dir=tmp_path
    )
    writer = DownThenUpWriter(ctx)
    try:
        writer.receiver.accept()

        def receive(batch: ChangeBatch, now: float) -> None:
            framed.queue(batch)
            framed.flush()
            for conn_id, received in writer.receiver.read(writer.receiver.filenos()):
                writer.pending.add(conn_id, received.seq, received.changes, now)
            writer.flush(now)

        receive(ChangeBatch("w", 1, changes(1, 2)), 0.0)  # database down: held
        receive(ChangeBatch("w", 2, changes(3)), 1.0)  # held is not empty: the newer ones queue behind it
        writer.recover(1.5)  # still down: nothing committed, nothing reordered
        assert writer.held.changes == list(changes(1, 2, 3))
        assert framed.read() == []  # nothing acknowledged while nothing is durable
        writer.up = True
        writer.recover(2.0)
        assert writer.commits == [list(changes(1, 2, 3))]
        assert not writer.held
        assert framed.read() == [Ack(2)]
    finally:
        framed.close()
        writer.receiver.close()
        listener.close()
