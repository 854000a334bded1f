"""Make forked roles share memory with the supervisor instead of each paying for its own copy.

Measured (docs/performance.md, "where each MB goes"): a Python process with our imports is
~40 MB, almost all of it module code and data. A module imported *before* `fork()` is one
copy shared by every child; one imported *after* it (e.g. `requests` for the Kick API, which
workers and the planner used to import lazily) is a private copy in each of them. So the
supervisor imports what every role needs once, before its first fork, and then:

- `gc.freeze()` right before each fork moves every object the supervisor holds into the
  permanent generation: no garbage collection, the child's or the supervisor's own, walks
  (and thereby writes to) those objects' headers again, so their pages stay shared instead
  of being copied one by one. Collection stays on in both (a loop that runs for months must
  not keep reference cycles forever); it only looks at objects made after the freeze.

This is the preload half of a fork server: the supervisor holds no streamer list (the
planner reads it after fork), so its heap is only modules.
"""

from __future__ import annotations

import gc
import importlib
import os

# What the roles import after fork (lazily, inside functions); preloaded so it is shared.
PRELOAD = (
    "kick_monitor.kick_api",  # requests, urllib3, idna, charset_normalizer: workers + planner
    "kick_monitor.reconcile",
    "kick_monitor.sharding",
    "kick_monitor.api_budget",  # the shared API budget: workers + planner (found after fork by -X importtime)
    "ctypes",  # release_free_memory: workers, planner, writer
)


def preload_role_modules(modules: tuple[str, ...] = PRELOAD) -> None:
    """Import the modules the roles would otherwise import after fork (once, in the supervisor),
    then give back the heap the imports freed.

    Building pydantic's validators for the settings and the API answers frees most of what it
    allocates, and glibc kept those pages resident: measured, malloc_trim here takes 1.6 MB off
    the image every child shares (docs/performance.md, round 13).
    """
    for name in modules:
        importlib.import_module(name)
    gc.collect()
    release_free_memory()


def freeze_before_fork() -> None:
    """Call right before `os.fork()`: what exists now stays shared with the child (see above)."""
    gc.freeze()


_LIBC: object | None = None
M_ARENA_MAX = -8  # glibc's mallopt() parameter number (<malloc.h>)


def _libc() -> object:
    global _LIBC
    if _LIBC is None:
        import ctypes

        # The symbols already loaded into this process (libc's among them): no `ctypes.util.find_library`,
        # which runs `ldconfig -p` in a subprocess and imports tempfile & co. after fork (0.3 MB private).
        _LIBC = ctypes.CDLL(None)
    return _LIBC


def limit_malloc_arenas(arenas: int = 1) -> bool:
    """Let this process's threads share `arenas` malloc arenas; call before it starts threads.

    glibc gives each thread that allocates an arena of its own (up to 8 a core). Measured in the
    planner (its helper threads, eight of them asking Kick's API; docs/performance.md, round 18):
    30 minutes at ~75 API requests/s, its private memory was 20.4–21.4 MB with one arena against
    23.0–24.9 MB with twelve, and steady where the twelve swung by up to 1 MB. Its threads wait on
    the network, not on malloc's lock. An operator's `MALLOC_ARENA_MAX` wins (glibc read it at start-up).
    Returns whether the limit was set (False: the operator's, or no glibc)."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    mallopt = getattr(_libc(), "mallopt", None)
    return mallopt is not None and bool(mallopt(M_ARENA_MAX, arenas))


def release_free_memory() -> None:
    """Give freed heap back to the kernel after a burst (a full Assign, a reconciliation, a reload).

    Measured: such a burst allocates tens of MB of short-lived objects (unpickled lists, API
    JSON, subscription frames), and glibc keeps the freed pages resident in the process, so a
    worker's private memory stayed at its start-up peak. `malloc_trim(0)` returns free pages
    from every arena (the reconciliation thread's too). A few ms; a no-op where glibc is absent.
    """
    trim = getattr(_libc(), "malloc_trim", None)
    if trim is not None:
        trim(0)
