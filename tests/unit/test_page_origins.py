"""footprint.page_origins tells a forked child's shared, copied and new pages apart (the M bench's anatomy)."""

from __future__ import annotations

import os
import time

import pytest

from kick_tools.bench import footprint

MB = 1 << 20


def forked(write_mb: int, allocate_mb: int) -> tuple[int, bytearray]:
    """A child of this process that, after the fork, writes `write_mb` of a buffer both hold and allocates
    `allocate_mb` of its own, then says so on a pipe and waits to be killed. Returns the pid and the
    buffer, which the parent must keep until it has looked (freed, its pages would make the child's look new)."""
    inherited = bytearray(os.urandom(8 * MB))
    ready_read, ready_write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: touch, allocate, report, sleep
        try:
            for offset in range(0, write_mb * MB, 4096):
                inherited[offset] ^= 1
            kept = [bytearray(os.urandom(allocate_mb * MB))] if allocate_mb else []
            os.write(ready_write, b"x")
            time.sleep(30)
            kept.clear()
        finally:
            os._exit(0)
    os.close(ready_write)
    os.read(ready_read, 1)
    os.close(ready_read)
    return pid, inherited


def origins_of(write_mb: int, allocate_mb: int) -> dict[str, float]:
    pid, inherited = forked(write_mb, allocate_mb)
    try:
        table = footprint.page_origins(os.getpid(), pid)
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    assert len(inherited) == 8 * MB  # kept alive (and so resident in the parent) until after the look
    if table is None:
        pytest.skip("page frame numbers are hidden from this user (needs root)")
    return table["total"]


def test_written_pages_count_as_copied_and_fresh_ones_as_new() -> None:
    total = origins_of(write_mb=4, allocate_mb=3)
    assert total["copied"] >= 4.0 * 0.95
    assert total["new"] >= 3.0 * 0.95
    assert total["shared"] >= 4.0  # the buffer's untouched half at least


def test_a_child_that_writes_nothing_copies_little() -> None:
    total = origins_of(write_mb=0, allocate_mb=0)
    assert total["copied"] < 2.0
    assert total["new"] < 2.0


def test_mapping_classes() -> None:
    assert footprint.mapping_class("") == footprint.mapping_class("[anon]")
    assert footprint.mapping_class("[heap]") == "malloc heap"
    assert footprint.mapping_class("/usr/lib/libpython3.11.so.1.0") == "libpython"
    assert footprint.mapping_class("/x/_psycopg.cpython-311-x86_64-linux-gnu.so") == "extension modules and libraries"
