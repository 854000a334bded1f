"""`limit_malloc_arenas`: a threaded role's threads share one malloc arena (issue 18, round 18).

The planner's helper threads each got a glibc arena of their own: 2.5–3.5 MB more private memory,
swinging with the API requests (docs/performance.md, round 18). Run in a fresh interpreter: arenas are per process and
glibc reads MALLOC_ARENA_MAX at start-up, so the environment is the test's to choose.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(60)

PROGRAM = r"""
import sys, threading
from kick_monitor.preload import limit_malloc_arenas
from kick_tools.bench.footprint import malloc_thread_arenas

limited = limit_malloc_arenas() if sys.argv[1] == "limit" else None
ready = threading.Barrier(8)
kept = []

def allocate():
    buffers = [bytearray(4096) for _ in range(200)]  # malloc, not Python's small-object allocator
    ready.wait()  # all eight alive and allocating at once: glibc would give each its own arena
    kept.append(buffers)

threads = [threading.Thread(target=allocate) for _ in range(8)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(limited, malloc_thread_arenas())
"""


def run(mode: str, **env: str) -> tuple[str, int]:
    environment = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"} | env
    out = subprocess.run([sys.executable, "-c", PROGRAM, mode], capture_output=True, text=True, check=True,
                         timeout=50, env=environment, cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    limited, arenas = out.stdout.split()
    return limited, int(arenas)


@pytest.fixture(autouse=True)
def _linux_only() -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("glibc's malloc arenas and /proc: Linux only")


def test_threads_share_one_arena_once_limited() -> None:
    limited, arenas = run("default")
    assert limited == "None" and arenas >= 2, "without the limit, eight threads allocating at once get arenas"
    assert run("limit") == ("True", 0)


def test_an_operators_malloc_arena_max_stands() -> None:
    limited, arenas = run("limit", MALLOC_ARENA_MAX="4")
    assert limited == "False"
    assert 1 <= arenas <= 3, "glibc's own limit of 4 arenas (the main one and three for threads)"
