"""`release_free_memory` gives back what a helper thread freed (the writer's commit threads, issue 18).

The writer commits a backlog of several slices on two short-lived threads; glibc gives each thread
its own malloc arena, and what a thread frees there stays resident (measured: the writer's private
memory stepped up 4 MB at the soak's PostgreSQL restart and stayed). Run in a fresh interpreter so
the arenas and the measurement are this test's alone.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(60)

PROGRAM = r"""
import threading
from kick_monitor.preload import release_free_memory

def private_kb():
    with open("/proc/self/smaps_rollup") as f:
        return sum(int(line.split()[1]) for line in f if line.startswith(("Private_Clean", "Private_Dirty")))

def burst():
    # 40 MB of 4 kB buffers (malloc, not Python's small-object allocator), one in 50 kept: the
    # freed ones are holes in the thread's arena, which no free() gives back on its own.
    buffers = [bytearray(4096) for _ in range(10_000)]
    kept.extend(buffers[::50])

kept = []
before = private_kb()
thread = threading.Thread(target=burst)
thread.start()
thread.join()
after_burst = private_kb()
release_free_memory()
after_release = private_kb()
print(before, after_burst, after_release)
"""


def test_memory_freed_on_a_thread_is_given_back() -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("smaps_rollup and glibc's malloc_trim: Linux only")
    out = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True, check=True, timeout=50)
    before, after_burst, after_release = map(int, out.stdout.split())
    assert after_burst - before > 20_000, f"the burst should leave its freed pages resident: {out.stdout}"
    assert after_release - before < 5_000, f"release_free_memory gave back too little: {out.stdout}"
