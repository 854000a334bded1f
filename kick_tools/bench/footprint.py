"""Where each MB goes: memory, fds and threads of every process of the service tree, by role slot.

A *slot* is what a supervised child is ("worker 3", "writer"), independent of its PID:
workers are killed on purpose in the soak, and a slot's figures continue across its pids.
Memory comes from /proc/PID/smaps_rollup:
- RSS counts every resident page, shared ones in full in every process (forked children
  share the coordinator's pages, so RSS sums overcount);
- PSS splits each shared page among its sharers: PSS sums are the tree's real footprint;
- Private (clean + dirty) is what would be freed if the process exited: the figure whose
  growth means a leak (shared pages going private by copy-on-write count here too).
- PSS divides a shared page among *every* process on the machine that maps it, the interpreter's
  and libraries' text included: the more Python processes run beside the service, the smaller
  its PSS. `tree_pss` divides each page among the tree's own processes only (from
  /proc/PID/pagemap; needs root to see page frame numbers, else None): the machine-independent
  footprint of the service, which the targets are judged on.

    slots = service_slots(service_pid)          # {"coordinator": pid, "writer": pid, "worker 0": pid, ...}
    sample = take_sample(slots)                 # {"worker 0": {"pid":…, "rss_kb":…, "pss_kb":…, …}, …}
"""

from __future__ import annotations

import os
import struct
from collections import Counter
from pathlib import Path
from typing import Any

from kick_tools.bench.measure import status_number
from kick_tools.harness import children_of

ROLLUP_KEYS = {"Rss:": "rss_kb", "Pss:": "pss_kb", "Private_Clean:": "private_kb", "Private_Dirty:": "private_kb",
               "Shared_Clean:": "shared_kb", "Shared_Dirty:": "shared_kb", "Swap:": "swap_kb"}


def rollup(pid: int) -> dict[str, int] | None:
    """RSS, PSS, private, shared and swap of `pid` in kB (smaps_rollup), None if it is gone."""
    found = {"rss_kb": 0, "pss_kb": 0, "private_kb": 0, "shared_kb": 0, "swap_kb": 0}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as rollup_file:
            for line in rollup_file:
                parts = line.split()
                key = ROLLUP_KEYS.get(parts[0]) if parts else None
                if key is not None:
                    found[key] += int(parts[1])
    except (OSError, IndexError, ValueError):
        return None
    return found if found["rss_kb"] else None


def open_fds(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def thread_count(pid: int) -> int | None:
    return status_number(pid, "Threads")


HEAP_MAX = 64 << 20  # glibc's reservation for each thread arena's heap (64-bit)


def malloc_thread_arenas(pid: int | str = "self") -> int:
    """glibc thread arenas in `pid`: each is a 64 MiB-aligned anonymous reservation whose start is
    usable (rw-p) and the rest of its 64 MiB inaccessible (---p) until the arena grows."""
    regions = []
    with open(f"/proc/{pid}/maps") as maps:
        for line in maps:
            fields = line.split()
            start, end = (int(x, 16) for x in fields[0].split("-"))
            regions.append((start, end, fields[1], len(fields) > 5))
    count = 0
    for i, (start, end, perms, named) in enumerate(regions):
        if named or perms != "rw-p" or start % HEAP_MAX:
            continue
        rest = regions[i + 1] if i + 1 < len(regions) else None
        reserved = rest[1] if rest and rest[0] == end and rest[2] == "---p" and not rest[3] else end
        if reserved - start == HEAP_MAX:
            count += 1
    return count


def slot_of(title: str) -> str | None:
    """The role slot from a child's process title (`kick-monitor: worker shard 3` → `worker 3`)."""
    text = title.removeprefix("kick-monitor:").strip()
    if text.startswith("worker shard "):
        return "worker " + text.rsplit(" ", 1)[1]
    for role in ("writer", "planner", "exporter", "webhook", "notifier"):
        if text.startswith(role):
            return role
    return None


def service_slots(service_pid: int) -> dict[str, int]:
    """Every process of the service tree by slot; the coordinator is the service PID itself."""
    slots = {"coordinator": service_pid}
    for pid, title in children_of(service_pid).items():
        slot = slot_of(title)
        if slot is not None:
            slots[slot] = pid
    return slots


def take_sample(slots: dict[str, int]) -> dict[str, dict[str, int]]:
    """One reading of each slot's process; a process gone mid-read is left out."""
    sample: dict[str, dict[str, int]] = {}
    for slot, pid in slots.items():
        memory = rollup(pid)
        if memory is None:
            continue
        sample[slot] = {"pid": pid, **memory, "fds": open_fds(pid) or 0, "threads": thread_count(pid) or 0}
    return sample


def role_of(slot: str) -> str:
    return slot.split(" ", 1)[0]


def by_role(sample: dict[str, dict[str, int]]) -> dict[str, dict[str, Any]]:
    """Per role: process count, max and total of RSS/PSS/private in MB (the docs' table)."""
    roles: dict[str, dict[str, Any]] = {}
    for slot, reading in sample.items():
        entry = roles.setdefault(role_of(slot), {"processes": 0})
        entry["processes"] += 1
        for key in ("rss_kb", "pss_kb", "private_kb"):
            name = key.removesuffix("_kb")
            mb = reading[key] / 1024
            entry[f"{name}_max_mb"] = round(max(entry.get(f"{name}_max_mb", 0.0), mb), 1)
            entry[f"{name}_total_mb"] = round(entry.get(f"{name}_total_mb", 0.0) + mb, 1)
    return roles


def totals(sample: dict[str, dict[str, int]]) -> dict[str, float]:
    """The whole service tree in MB (PostgreSQL and the simulator are not in `sample`)."""
    return {key.removesuffix("_kb") + "_mb": round(sum(r[key] for r in sample.values()) / 1024, 1)
            for key in ("rss_kb", "pss_kb", "private_kb")}


def import_cost_table(modules: list[str]) -> list[tuple[str, float]]:
    """RSS in MB of a fresh interpreter after importing each module alone (sorted, biggest first)."""
    import subprocess
    import sys

    code = ("import importlib, sys\n"
            "def rss():\n"
            "    return int(next(l for l in open('/proc/self/status') if l.startswith('VmRSS')).split()[1])\n"
            "base = rss()\nimportlib.import_module(sys.argv[1])\nprint((rss() - base) / 1024)\n")
    found = []
    root = Path(__file__).resolve().parents[2]
    for module in modules:
        done = subprocess.run([sys.executable, "-c", code, module], capture_output=True, text=True, cwd=root,
                              timeout=60, check=False)
        if done.returncode == 0:
            found.append((module, round(float(done.stdout.strip()), 1)))
    return sorted(found, key=lambda item: -item[1])


VSYSCALL = 0xFFFFFFFFFF600000  # the vsyscall page: not in pagemap


def present_frames(pagemap: Any, start: int, end: int) -> list[int | None]:
    """The frame of each page in [start, end), None where nothing is resident."""
    pagemap.seek(start // 4096 * 8)
    return [entry & ((1 << 55) - 1) if entry >> 63 else None
            for (entry,) in struct.iter_unpack("Q", pagemap.read((end - start) // 4096 * 8))]


def resident_frames(pid: int) -> set[int] | None:
    """Page frame numbers of `pid`'s resident pages; None without the right to see them (non-root)."""
    frames: set[int] = set()
    try:
        with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/pagemap", "rb") as pagemap:
            for line in maps:
                start, end = (int(x, 16) for x in line.split(" ", 1)[0].split("-"))
                if start >= VSYSCALL:
                    continue
                frames.update(frame for frame in present_frames(pagemap, start, end) if frame is not None)
    except (OSError, ValueError):
        return None
    if frames and frames <= {0}:
        return None  # PFNs hidden (no CAP_SYS_ADMIN)
    return frames


def tree_pss(slots: dict[str, int]) -> dict[str, float] | None:
    """slot -> MB, each resident page divided among the tree's processes that map it (see docstring)."""
    frames = {slot: resident_frames(pid) for slot, pid in slots.items()}
    if any(f is None for f in frames.values()):
        return None
    sharers = Counter(frame for found in frames.values() if found for frame in found)
    return {slot: round(sum(1 / sharers[f] for f in found or ()) * 4 / 1024, 1) for slot, found in frames.items()}


ORIGIN_KINDS = ("shared", "copied", "new")


def mapping_class(path: str) -> str:
    """What a mapping of /proc/PID/maps holds, as the docs' anatomy table groups it."""
    if path in ("", "[anon]"):
        return "anonymous (pymalloc arenas, big allocations)"
    if path == "[heap]":
        return "malloc heap"
    if path.startswith("["):
        return "stack and kernel"
    if "libpython" in path:
        return "libpython"
    if ".so" in path:
        return "extension modules and libraries"
    return "other files"


def page_origins(parent_pid: int, child_pid: int) -> dict[str, dict[str, float]] | None:
    """MB of a forked child's resident pages by mapping class and origin; None without root or if one is gone.

    Origins, comparing the page at the same address in the parent: *shared* (the same frame: still one
    copy), *copied* (both have one, different frames: one of them wrote it after the fork — with CPython
    3.11 mostly reference counts and code objects' caches of the image both inherited), *new* (the
    parent has nothing resident there: the child's own allocations, or pages the parent gave back).
    """
    found: dict[str, Counter[str]] = {}
    visible = False  # a non-zero frame seen: the kernel shows frames to this user
    try:
        with (open(f"/proc/{child_pid}/maps") as maps, open(f"/proc/{child_pid}/pagemap", "rb") as child,
              open(f"/proc/{parent_pid}/pagemap", "rb") as parent):
            for line in maps:
                fields = line.split(maxsplit=5)
                start, end = (int(x, 16) for x in fields[0].split("-"))
                if start >= VSYSCALL:
                    continue
                counts = found.setdefault(mapping_class(fields[5].strip() if len(fields) > 5 else ""), Counter())
                theirs = present_frames(parent, start, end)
                for mine, old in zip(present_frames(child, start, end), theirs, strict=True):
                    if mine is not None:
                        counts["shared" if mine == old else "copied" if old is not None else "new"] += 1
                        visible = visible or bool(mine)
    except (OSError, ValueError):
        return None
    if not visible:
        return None  # frames hidden (no CAP_SYS_ADMIN): every frame reads 0, every page would look shared
    table = {name: {kind: round(counts[kind] * 4 / 1024, 1) for kind in ORIGIN_KINDS}
             for name, counts in sorted(found.items()) if sum(counts.values())}
    table["total"] = {kind: round(sum(c[kind] for c in found.values()) * 4 / 1024, 1) for kind in ORIGIN_KINDS}
    return table
