"""The soak's pass rule (issue 18), as pure functions over the samples: testable without processes.

- Memory: per role slot ("worker 3", "writer"), the least-squares slope of private memory
  over time after the warm-up, one line through the slot's successive pids (workers are
  SIGKILLed on purpose: their replacements continue the slot's series, so a level that rises
  from pid to pid counts as growth). A respawned pid's first `PID_SETTLE` seconds are its own
  start-up (measured: a respawned worker climbs to its level within ~40 s) and are left out.
  Pass: ≤ 2 MB/h. `pooled_slope` (one intercept per pid) is reported beside it: growth
  *within* processes, which a slot killed every few minutes cannot show across pids.
- fds and threads: after the last fault has settled, each slot is back at its level — the
  median of the first quarter of its post-warm-up samples — within a small tolerance.
- History: every transition a source exposed is recorded exactly once; transitions inside a
  fault window (dropped connections, a killed worker, PostgreSQL down) are counted
  separately, and so are later transitions of a streamer whose previous one was missed
  (its worker's state was stale until reconciliation repaired it), never invented.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

MAX_SLOPE_MB_PER_H = 2.0
MIN_SPAN = 900.0  # seconds after the warm-up below which a slope in MB/h is noise (the 60 s smoke run)
PID_SETTLE = 60.0  # seconds: a respawned process's own warm-up
FD_TOLERANCE, THREAD_TOLERANCE = 2, 1
MAX_EXAMPLES = 20  # duplicated / lost transitions explained in the result, each with its history rows

Sample = dict[str, Any]  # {"t": seconds since start, "slots": {slot: {"pid", "private_kb", "fds", "threads", ...}}}


def slot_series(samples: Sequence[Sample], key: str) -> dict[str, list[tuple[float, int, float]]]:
    """slot -> [(t, pid, value)] in time order."""
    series: dict[str, list[tuple[float, int, float]]] = defaultdict(list)
    for sample in samples:
        for slot, reading in sample["slots"].items():
            series[slot].append((float(sample["t"]), int(reading["pid"]), float(reading[key])))
    return dict(series)


def pooled_slope(points: Iterable[tuple[float, int, float]]) -> float | None:
    """Least-squares slope of value over time with one intercept per pid (units per second)."""
    by_pid: dict[int, list[tuple[float, float]]] = defaultdict(list)
    for t, pid, value in points:
        by_pid[pid].append((t, value))
    numerator = denominator = 0.0
    for values in by_pid.values():
        if len(values) < 2:
            continue
        t_mean = statistics.fmean(t for t, _ in values)
        y_mean = statistics.fmean(y for _, y in values)
        numerator += sum((t - t_mean) * (y - y_mean) for t, y in values)
        denominator += sum((t - t_mean) ** 2 for t, _ in values)
    return None if denominator == 0 else numerator / denominator


def settled_points(points: Sequence[tuple[float, int, float]], warmup: float,
                   pid_settle: float) -> list[tuple[float, int, float]]:
    """The points after the run's warm-up, without each respawned pid's first `pid_settle` seconds."""
    first_seen: dict[int, float] = {}
    for t, pid, _ in points:
        first_seen.setdefault(pid, t)
    return [(t, pid, v) for t, pid, v in points
            if t >= warmup and (pid == points[0][1] or t - first_seen[pid] >= pid_settle)]


def slope(points: Iterable[tuple[float, int, float]]) -> float | None:
    """Ordinary least-squares slope of value over time (units per second), pids ignored."""
    values = [(t, v) for t, _, v in points]
    if len(values) < 2:
        return None
    t_mean = statistics.fmean(t for t, _ in values)
    v_mean = statistics.fmean(v for _, v in values)
    denominator = sum((t - t_mean) ** 2 for t, _ in values)
    return None if denominator == 0 else sum((t - t_mean) * (v - v_mean) for t, v in values) / denominator


def memory_slopes(samples: Sequence[Sample], warmup: float, pid_settle: float = PID_SETTLE,
                  within_pids: bool = False) -> dict[str, float | None]:
    """slot -> private-memory slope in MB/h after the warm-up (see module docstring); `within_pids`:
    the pooled within-pid slope instead."""
    found: dict[str, float | None] = {}
    fit = pooled_slope if within_pids else slope
    for slot, points in slot_series(samples, "private_kb").items():
        value = fit(settled_points(points, warmup, pid_settle))
        found[slot] = None if value is None else round(value * 3600 / 1024, 3)
    return found


def returned_to_level(samples: Sequence[Sample], key: str, warmup: float, settled_from: float,
                      tolerance: int) -> dict[str, dict[str, Any]]:
    """slot -> {level, final, ok}: the last sample (taken after `settled_from`) against the slot's level,
    the median of the first quarter of its post-warm-up samples (before faults could accumulate)."""
    found: dict[str, dict[str, Any]] = {}
    for slot, points in slot_series(samples, key).items():
        steady = [value for t, _, value in points if t >= warmup]
        final = [value for t, _, value in points if t >= settled_from]
        if not steady or not final:
            continue
        level = statistics.median(steady[: max(1, len(steady) // 4)])
        found[slot] = {"level": level, "final": final[-1], "ok": final[-1] <= level + tolerance}
    return found


def in_window(wall: float, windows: Sequence[tuple[float, float]]) -> bool:
    return any(start <= wall <= end for start, end in windows)


def classify_history(transitions: Sequence[dict[str, Any]], recorded: dict[tuple[int, str, int | None], int],
                     windows: Sequence[tuple[float, float]]) -> dict[str, Any]:
    """Count exposed transitions: recorded once, duplicated, missed in a fault window, stale after one, lost.

    `transitions` are the simulator's delivered status changes in time order (`channel_id`,
    `status`, `livestream_id`, `sent_wall`); `recorded` counts history rows by (channel, status,
    livestream id) — rows without a livestream id (reconciliation repairs) under None.
    """
    counts: dict[str, Any] = {"exposed": 0, "once": 0, "duplicated": 0, "in_fault_window": 0,
                              "stale_after_window": 0, "repaired": 0, "lost": 0}
    lost: list[dict[str, Any]] = []
    duplicated: list[dict[str, Any]] = []
    stale: set[int] = set()
    used: dict[tuple[int, str, int | None], int] = defaultdict(int)
    for t in transitions:
        counts["exposed"] += 1
        key = (t["channel_id"], t["status"], t["livestream_id"])
        have = recorded.get(key, 0)
        if have >= 1:
            counts["once" if have == 1 else "duplicated"] += 1
            if have > 1:
                duplicated.append({k: t.get(k) for k in ("channel_id", "status", "livestream_id", "sent_wall")}
                                  | {"rows": have})
            stale.discard(t["channel_id"])
            continue
        loose = (t["channel_id"], t["status"], None)
        if recorded.get(loose, 0) > used[loose]:  # repaired by reconciliation (no livestream id)
            used[loose] += 1
            counts["repaired"] += 1
            stale.discard(t["channel_id"])
        elif in_window(t["sent_wall"], windows):
            counts["in_fault_window"] += 1
            stale.add(t["channel_id"])
        elif t["channel_id"] in stale:
            counts["stale_after_window"] += 1
        else:
            counts["lost"] += 1
            lost.append({k: t.get(k) for k in ("channel_id", "status", "livestream_id", "sent_wall")})
    if lost:
        counts["lost_examples"] = lost[:MAX_EXAMPLES]
    if duplicated:
        counts["duplicated_examples"] = duplicated[:MAX_EXAMPLES]
    return counts


def role_crashes(log_lines: Iterable[str]) -> dict[str, Any]:
    """Roles that died of an exception of their own (`kick_monitor.role`: "<role> crashed"), from the
    service's JSON log: by role, with the last line of the first traceback. The soak's own SIGKILLs
    and PostgreSQL's restart are faults the service must absorb; a crash is the service failing to."""
    by_role: dict[str, int] = {}
    first: str | None = None
    for line in log_lines:
        if '"msg":"' not in line or ' crashed"' not in line:
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        msg = str(record.get("msg", ""))
        if record.get("logger") != "kick_monitor.role" or not msg.endswith(" crashed"):
            continue
        role = msg.removesuffix(" crashed")
        by_role[role] = by_role.get(role, 0) + 1
        if first is None:
            exc = str(record.get("exc", "")).strip().splitlines()
            first = f"{role}: {exc[-1] if exc else '(no traceback)'}"
    return {"count": sum(by_role.values()), "by_role": by_role, "first": first}


def verdict(slopes: dict[str, float | None], fds: dict[str, dict[str, Any]], threads: dict[str, dict[str, Any]],
            history: dict[str, Any], state_mismatches: int, span: float = MIN_SPAN,
            crashes: dict[str, Any] | None = None) -> dict[str, Any]:
    """PASS only when every part passes; each failing part is named. Memory slopes are judged only
    over at least MIN_SPAN seconds after the warm-up (`span`); a shorter run says so instead."""
    failures = [f"{slot} private memory grows {slope} MB/h" for slot, slope in slopes.items()
                if slope is not None and slope > MAX_SLOPE_MB_PER_H and span >= MIN_SPAN]
    if crashes and crashes["count"]:
        failures.append(f"{crashes['count']} role crashes {crashes['by_role']}, first {crashes['first']}")
    failures += [f"{slot} fds {v['final']} above level {v['level']}" for slot, v in fds.items() if not v["ok"]]
    failures += [f"{slot} threads {v['final']} above level {v['level']}" for slot, v in threads.items() if not v["ok"]]
    if history.get("duplicated"):
        failures.append(f"{history['duplicated']} transitions recorded more than once")
    if history.get("lost"):
        failures.append(f"{history['lost']} exposed transitions outside any fault window missing from the history")
    if state_mismatches:
        failures.append(f"{state_mismatches} streamers' state differs from the truth at the end")
    judged = "" if span >= MIN_SPAN else f" (memory slopes not judged: {span:.0f} s after warm-up < {MIN_SPAN:.0f} s)"
    return {"soak_verdict": ("PASS" if not failures else "FAIL") + judged, "failures": failures}
