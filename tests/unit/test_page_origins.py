"""footprint.page_origins tells a forked child's shared, copied and new pages apart (the M bench's anatomy).

A small parent process of its own (as the coordinator is to the service's roles) forks a child that
writes part of a buffer both hold and allocates memory of its own; this test, a third process, looks
at both from outside, as the M bench does (the measuring process's own allocations would otherwise
write to the pages it compares).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from kick_tools.bench import footprint

PARENT = """
import os, signal, sys
inherited = bytearray(os.urandom(8 << 20))
write_mb, allocate_mb = int(sys.argv[1]), int(sys.argv[2])
ready_read, ready_write = os.pipe()
pid = os.fork()
if pid == 0:
    for offset in range(0, write_mb << 20, 4096):
        inherited[offset] ^= 1
    kept = [bytearray(os.urandom(allocate_mb << 20))] if allocate_mb else []
    os.write(ready_write, b"x")
    signal.pause()
    os._exit(0)
os.read(ready_read, 1)
print(pid, flush=True)
signal.pause()
"""


@contextmanager
def parent_and_child(write_mb: int, allocate_mb: int) -> Iterator[tuple[int, int]]:
    """(parent pid, child pid) once the child has written and allocated; both killed afterwards (their group)."""
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(write_mb), str(allocate_mb)],
                              stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert parent.stdout is not None
        yield parent.pid, int(parent.stdout.readline())
    finally:
        os.killpg(parent.pid, signal.SIGKILL)
        parent.wait()


def origins_of(write_mb: int, allocate_mb: int) -> dict[str, float]:
    with parent_and_child(write_mb, allocate_mb) as (parent, child):
        table = footprint.page_origins(parent, child)
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
    assert total["copied"] < 1.0
    assert total["new"] < 1.0
    assert total["shared"] >= 8.0  # the whole buffer


def test_mapping_classes() -> None:
    assert footprint.mapping_class("") == footprint.mapping_class("[anon]")
    assert footprint.mapping_class("[heap]") == "malloc heap"
    assert footprint.mapping_class("/usr/lib/libpython3.11.so.1.0") == "libpython"
    assert footprint.mapping_class("/x/_psycopg.cpython-311-x86_64-linux-gnu.so") == "extension modules and libraries"
