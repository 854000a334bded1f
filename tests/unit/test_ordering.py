"""The order a change carries survives the spool, and `seq` only grows (issue 14)."""

from __future__ import annotations

import itertools
from pathlib import Path

import orjson

from kick_monitor.messages import StatusChange
from kick_monitor.ordering import MonotonicSeq
from kick_monitor.spool import Spool


def test_seq_only_grows_even_when_called_faster_than_the_clock_ticks() -> None:
    seq = MonotonicSeq()
    values = [seq.next() for _ in range(10_000)]
    assert all(b > a for a, b in itertools.pairwise(values))
    # A second sequence on the same host (a respawned worker) starts after the first one.
    assert MonotonicSeq().next() > values[-1]


def test_spool_keeps_generation_and_seq_and_reads_lines_written_before_them(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", 1 << 20)
    change = StatusChange("p:1:online:2:3", 1, "online", "pusher", "e", 2, "t", None, 10.0, 1.0, 0, 41, 7_000)
    spool.append([change])
    # A line spooled by a release before migration 2: eleven fields, no order.
    legacy = [getattr(change, name) for name in StatusChange.__slots__][:11]
    segment = next((tmp_path / "spool").glob("*.jsonl"))
    with segment.open("ab") as f:
        f.write(orjson.dumps(legacy) + b"\n")
    spool = Spool(tmp_path / "spool", 1 << 20)
    path = spool.oldest_path()
    assert path is not None
    first, second = next(spool.read_slices(path, 500))
    assert first == change
    assert (second.generation, second.seq, second.change_id) == (0, 0, change.change_id)
