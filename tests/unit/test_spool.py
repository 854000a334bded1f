"""Spool on a real directory: order, a torn last line, the size cap, permissions."""

from __future__ import annotations

import logging
import stat
from pathlib import Path

import pytest

from kick_monitor.messages import StatusChange
from kick_monitor.spool import Spool, SpoolFullError


def change(n: int) -> StatusChange:
    return StatusChange(
        f"c{n}", 100 + n, "online" if n % 2 else "offline", "pusher", "App\\Events\\StreamerIsLive",
        n, f"title {n}", 1_700_000_000.0 + n, 1_700_000_001.0 + n, 5.0 + n, 0,
    )


def replay_all(spool: Spool) -> list[StatusChange]:
    """What the writer's recovery does: oldest segment, commit, remove; until empty."""
    out: list[StatusChange] = []
    while (path := spool.oldest_path()) is not None:
        for part in spool.read_slices(path, 3):
            assert 0 < len(part) <= 3
            out += part
        spool.remove(path)
    return out


def test_append_oldest_remove_keep_order_across_segments(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s", max_bytes=1 << 20, segment_bytes=600)  # a few changes per segment
    changes = [change(n) for n in range(20)]
    for n in range(0, 20, 2):
        spool.append(changes[n : n + 2])
    assert len(spool.segments) > 2
    assert replay_all(spool) == changes
    assert not spool
    assert spool.size_bytes == 0
    assert list((tmp_path / "s").iterdir()) == []


def test_a_reopened_spool_replays_what_an_earlier_process_wrote(tmp_path: Path) -> None:
    Spool(tmp_path, max_bytes=1 << 20).append([change(1), change(2)])
    again = Spool(tmp_path, max_bytes=1 << 20)
    assert again.size_bytes > 0
    assert replay_all(again) == [change(1), change(2)]


def test_segment_bytes_zero_gives_every_append_its_own_segment(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=0)
    first = spool.append([change(1), change(2)])
    second = spool.append([change(3)])
    assert first is not None and second is not None and first != second
    assert spool.segments == (first, second)
    assert [c for part in spool.read_slices(second, 500) for c in part] == [change(3)]
    assert spool.append([]) is None


def test_a_torn_last_line_is_reported_and_skipped_and_nothing_else_is_lost(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    path = spool.append([change(1), change(2)])
    assert path is not None
    whole = path.read_bytes()
    line = whole.splitlines(keepends=True)[0]
    with path.open("ab") as f:  # a process killed mid-append left half a line
        f.write(line[: len(line) // 2])
    reopened = Spool(tmp_path, max_bytes=1 << 20)
    reopened.append([change(3)])  # must not be glued onto the torn half
    with caplog.at_level(logging.WARNING, logger="kick_monitor.spool"):
        replayed = replay_all(reopened)
    assert replayed == [change(1), change(2), change(3)]
    torn = [r for r in caplog.records if "unreadable spool line" in r.getMessage()]
    assert len(torn) == 1 and f"{path.name}:3" in torn[0].getMessage()


def test_the_size_cap_refuses_with_oserror_and_keeps_what_is_there(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1000)
    spool.append([change(1), change(2)])
    size = spool.size_bytes
    with pytest.raises(SpoolFullError) as refused:
        spool.append([change(n) for n in range(3, 30)])
    assert isinstance(refused.value, OSError)
    assert "full" in str(refused.value)
    assert spool.size_bytes == size
    assert sum(p.stat().st_size for p in spool.segments) == size
    assert replay_all(spool) == [change(1), change(2)]


def test_files_are_0600_in_a_0700_directory(tmp_path: Path) -> None:
    directory = tmp_path / "spool" / "all"
    spool = Spool(directory, max_bytes=1 << 20)
    path = spool.append([change(1)])
    assert path is not None
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_no_append_goes_into_the_segment_being_replayed(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    spool.append([change(1)])
    path = spool.oldest_path()
    assert path is not None
    spool.read_slices(path, 500)  # not read yet, but being replayed from now on
    spool.append([change(2)])  # arrives while the oldest is being committed
    spool.remove(path)  # ... which then removes it: change 2 must survive
    assert replay_all(spool) == [change(2)]


def test_lines_of_a_release_before_migration_3_load_with_streamer_id_0(tmp_path: Path) -> None:
    """Written before changes carried `streamer_id`/`category`: the writer then looks the channel up."""
    old = '["c1",668,"online","pusher","App\\\\Events\\\\StreamerIsLive",5,"t",1.0,2.0,3.0,0,7,9]\n'
    (tmp_path / "000000001.jsonl").write_text(old)
    spool = Spool(tmp_path, 1 << 20)
    spool.append([StatusChange("c2", None, "offline", "api", "reconcile", None, None, None, 4.0, 5.0, 0, 1, 2, 42)])
    loaded = replay_all(Spool(tmp_path, 1 << 20))
    assert [(c.channel_id, c.generation, c.seq, c.streamer_id, c.category) for c in loaded] == [
        (668, 7, 9, 0, None), (None, 1, 2, 42, None),
    ]


def test_asked_at_survives_the_spool_and_lines_written_without_it_still_load(tmp_path: Path) -> None:
    """`asked_at` (when an API verdict's question was sent) came last, with a default."""
    before = '["c1",668,"offline","api","reconcile",null,null,null,4.0,5.0,0,1,2,42,null,null]\n'
    (tmp_path / "000000001.jsonl").write_text(before)
    spool = Spool(tmp_path, 1 << 20)
    spool.append([StatusChange("c2", 668, "online", "api", "reconcile", 5, None, 3.0, 4.0, 5.0, 0, 1, 3, 42,
                               None, 3.0, 3.5)])
    loaded = replay_all(Spool(tmp_path, 1 << 20))
    assert [(c.change_id, c.asked_at) for c in loaded] == [("c1", None), ("c2", 3.5)]
