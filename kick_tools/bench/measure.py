"""What a run is judged by: CPU and memory per role from /proc, latency and losses against ground truth.

- CPU: utime + stime from /proc/PID/stat (all threads), sampled per role; a PID that exits
  keeps its last reading, and PostgreSQL also counts the CPU of reaped backends (the
  postmaster's cutime/cstime), so a role's figure never drops when a process goes away.
- Memory: VmRSS and VmHWM from /proc/PID/status (peak per process, peak sum per role);
  PSS from smaps_rollup when asked (forked children share the parent's pages, which RSS
  counts in full in every child).
- Latency of a transition: the row's `recorded_at` (clock_timestamp() at insert, in the
  transaction that commits it) minus the simulator's `sent_wall` for the frame — both
  `time.time()` on the same host. Rows are joined to the truth on (channel id, status,
  livestream id), which names one transition uniquely; rows without a livestream id
  (reconciliation) fall back to order within (channel, status).
- Lost: the truth's transitions missing from the history; duplicated: more than one row;
  order errors: a channel whose recorded sequence differs from the truth's. Rows
  unknown→offline are left out (reconciliation at start learning what the simulator
  never announced: its streamers start offline).
"""

from __future__ import annotations

import math
import os
import statistics
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg2

from kick_monitor.change_plan import INFERRED_EVENTS

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = 1024


@dataclass(frozen=True)
class RoleSpec:
    """The PIDs of one role now; `reaped` PIDs also count their reaped children's CPU."""

    pids: tuple[int, ...]
    reaped: tuple[int, ...] = ()


Discover = Callable[[], dict[str, RoleSpec]]


def cpu_seconds(pid: int, with_reaped: bool = False) -> float | None:
    """utime + stime (+ cutime + cstime) of `pid`, or None if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    ticks = int(fields[11]) + int(fields[12])
    if with_reaped:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLK_TCK


def status_numbers(pid: int, fields: tuple[str, ...]) -> dict[str, int] | None:
    """Numbers of /proc/PID/status (`VmRSS`, `Threads`, `voluntary_ctxt_switches`, …) in one read, or None if
    the process is gone; a field it does not show is left out."""
    prefixes = {field + ":": field for field in fields}
    found: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                name = prefixes.get(line[: line.find(":") + 1])
                if name is not None:
                    found[name] = int(line.split()[1])
    except (OSError, ValueError):
        return None
    return found


def status_number(pid: int, field: str) -> int | None:
    """One number of /proc/PID/status, or None if the process is gone or does not show it."""
    return (status_numbers(pid, (field,)) or {}).get(field)


def wakeups(pid: int) -> int | None:
    """Voluntary context switches of `pid` (every time it slept, in select() or on a lock, and was woken),
    or None if it is gone. A count, not seconds: not scaled by the host's speed (it moves with how changes batch)."""
    return status_number(pid, "voluntary_ctxt_switches")


SAMPLED_STATUS = ("VmRSS", "VmHWM", "voluntary_ctxt_switches")


def _memory_of(numbers: dict[str, int] | None) -> tuple[int, int] | None:
    """(VmRSS, VmHWM) in kB, or None if the process is gone (or a zombie)."""
    if not numbers or "VmRSS" not in numbers or "VmHWM" not in numbers:
        return None
    return numbers["VmRSS"], numbers["VmHWM"]


def pss_kb(pid: int) -> int | None:
    """Proportional set size in kB (shared pages divided among the processes sharing them)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as rollup:
            for line in rollup:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


@dataclass
class RolePeaks:
    """Peak memory of one role over the sampled period, in MB."""

    rss_max_process: float = 0.0
    hwm_max_process: float = 0.0
    pss_max_process: float = 0.0
    rss_total: float = 0.0
    pss_total: float = 0.0
    processes: int = 0


class RoleSampler:
    """Samples CPU, wake-ups and memory of every role on a thread; `mark()` snapshots CPU and wake-ups per role.

        sampler = RoleSampler(discover, interval=0.5).start()
        sampler.mark("flip")
        ...
        sampler.mark("done")
        sampler.stop()
        cpu = sampler.cpu_between("flip", "done")   # {role: seconds}
        woken = sampler.wakeups_between("flip", "done")   # {role: voluntary context switches}
    """

    def __init__(self, discover: Discover, interval: float = 0.5, pss: bool = False) -> None:
        self.discover = discover
        self.interval = interval
        self.pss = pss
        self._cpu: dict[str, dict[int, float]] = defaultdict(dict)
        self._wakeups: dict[str, dict[int, int]] = defaultdict(dict)
        self._marks: dict[str, dict[str, float]] = {}
        self._wakeup_marks: dict[str, dict[str, int]] = {}
        self.peaks: dict[str, RolePeaks] = defaultdict(RolePeaks)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="role-sampler", daemon=True)

    def start(self) -> RoleSampler:
        self.sample()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        self.sample()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        """One reading of every role's PIDs (discovered afresh: children come and go)."""
        try:
            roles = self.discover()
        except Exception:  # a vanished process mid-discovery: try again next tick
            return
        with self._lock:
            for role, spec in roles.items():
                known = self._cpu[role]
                rss_total = pss_total = 0.0
                peaks = self.peaks[role]
                peaks.processes = max(peaks.processes, len(spec.pids))
                for pid in spec.pids:
                    cpu = cpu_seconds(pid, with_reaped=pid in spec.reaped)
                    if cpu is not None:
                        known[pid] = cpu
                    numbers = status_numbers(pid, SAMPLED_STATUS)  # one read for memory and wake-ups
                    woken = (numbers or {}).get("voluntary_ctxt_switches")
                    if woken is not None:
                        self._wakeups[role][pid] = woken
                    mem = _memory_of(numbers)
                    if mem is not None:
                        rss_total += mem[0] / 1024
                        peaks.rss_max_process = max(peaks.rss_max_process, mem[0] / 1024)
                        peaks.hwm_max_process = max(peaks.hwm_max_process, mem[1] / 1024)
                    if self.pss:
                        pss = pss_kb(pid)
                        if pss is not None:
                            pss_total += pss / 1024
                            peaks.pss_max_process = max(peaks.pss_max_process, pss / 1024)
                peaks.rss_total = max(peaks.rss_total, rss_total)
                peaks.pss_total = max(peaks.pss_total, pss_total)

    def mark(self, label: str) -> None:
        self.sample()
        with self._lock:
            self._marks[label] = {role: sum(pids.values()) for role, pids in self._cpu.items()}
            self._wakeup_marks[label] = {role: sum(pids.values()) for role, pids in self._wakeups.items()}

    def cpu_between(self, start: str, end: str) -> dict[str, float]:
        """CPU seconds each role used between two marks."""
        first, last = self._marks[start], self._marks[end]
        return {role: round(last[role] - first.get(role, 0.0), 3) for role in last}

    def wakeups_between(self, start: str, end: str) -> dict[str, int]:
        """Voluntary context switches each role made between two marks (of the processes seen alive)."""
        first, last = self._wakeup_marks[start], self._wakeup_marks[end]
        return {role: last[role] - first.get(role, 0) for role in last}

    def peaks_json(self) -> dict[str, dict[str, float]]:
        return {
            role: {k: round(v, 1) for k, v in vars(p).items()} for role, p in self.peaks.items()
        }


# -- statistics -------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (q in 0..1); NaN when empty."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def latency_by_phase(verdict: Verdict, bounds: Sequence[tuple[str, float, float]]) -> dict[str, dict[str, float]]:
    """Frame latency summaries of the frames sent within each named [start, end) wall-time window."""
    return {
        name: latency_summary(ms for ms, sent in zip(verdict.latencies_ms, verdict.sent_wall, strict=True)
                              if start <= sent < end)
        for name, start, end in bounds
    }


def latency_summary(latencies_ms: Iterable[float]) -> dict[str, float]:
    """p50/p90/p99/p99.9/max/mean in ms, and the count."""
    values = sorted(latencies_ms)
    if not values:
        return {"count": 0}
    return {
        "count": len(values),
        "p50": round(percentile(values, 0.50), 3),
        "p90": round(percentile(values, 0.90), 3),
        "p99": round(percentile(values, 0.99), 3),
        "p99.9": round(percentile(values, 0.999), 3),
        "max": round(values[-1], 3),
        "mean": round(statistics.fmean(values), 3),
    }


def spread(values: Iterable[float | None]) -> dict[str, float] | None:
    """Median with min–max over runs (the way every figure is reported: machines are noisy)."""
    present = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not present:
        return None
    return {"median": round(statistics.median(present), 3), "min": round(min(present), 3),
            "max": round(max(present), 3), "runs": len(present)}


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# -- ground truth -------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One history row, times as epoch seconds."""

    channel_id: int
    status: str
    previous_status: str
    source: str
    event: str
    livestream_id: int | None
    received_at: float
    recorded_at: float


def fetch_rows(url: str, statement: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
    """Every row of a read-only query, on a connection of its own."""
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(statement, tuple(params))
            rows = cur.fetchall()
        conn.rollback()
        return rows
    finally:
        conn.close()


def fetch_history(url: str) -> list[Row]:
    """Every status_events row in recorded order."""
    return [Row(*r) for r in fetch_rows(
        url,
        "SELECT channel_id, status, previous_status, source, event, livestream_id,"
        " extract(epoch FROM received_at)::float8, extract(epoch FROM recorded_at)::float8"
        " FROM kick_monitor.status_events ORDER BY order_generation, order_seq, received_at, id",
    )]


def history_per_commit(url: str, since: float) -> dict[str, float | int]:
    """History rows per writer transaction recorded after `since` (epoch s): rows grouped by
    `xmin`, the inserting transaction's id: each transaction pays a fixed cost (docs/performance.md,
    round 7), and this says how many changes share it (S2: ~55, so about a tenth of its cost)."""
    sizes = sorted(int(r[0]) for r in fetch_rows(
        url,
        "SELECT count(*) FROM kick_monitor.status_events"
        " WHERE recorded_at >= to_timestamp(%s) GROUP BY xmin::text",
        (since,),
    ))
    if not sizes:
        return {"commits": 0}
    return {"commits": len(sizes), "mean": round(sum(sizes) / len(sizes), 2),
            "p50": sizes[len(sizes) // 2], "p90": sizes[int(len(sizes) * 0.9)], "max": sizes[-1]}


def fetch_broadcasts(url: str) -> list[tuple[int | None, int | None, float, float | None]]:
    """(channel id, livestream id, started, ended) of every recorded broadcast (issue 13)."""
    return [(r[0], r[1], r[2], r[3]) for r in fetch_rows(
        url,
        "SELECT s.channel_id, b.livestream_id, extract(epoch FROM b.started_at)::float8,"
        " extract(epoch FROM b.ended_at)::float8"
        " FROM kick_monitor.broadcasts b JOIN kick_monitor.streamers s ON s.id = b.streamer_id",
    )]


@dataclass
class BroadcastVerdict:
    """The simulator's broadcasts against `kick_monitor.broadcasts`.

    `hidden`: broadcasts that began and ended while no connection was up, with neither
    frame delivered and the end before the reconnection — no source can see them, so they
    are counted, never expected. `missing`: every other broadcast without a recorded row
    (matched by livestream id, or start within `tolerance` s). Must be 0.
    """

    truth: int = 0
    hidden: int = 0
    hidden_recorded: int = 0
    missing: int = 0
    missing_examples: list[str] = field(default_factory=list)

    def json(self) -> dict[str, Any]:
        return {"truth": self.truth, "exposed": self.truth - self.hidden, "missing": self.missing,
                "hidden": self.hidden, "hidden_recorded": self.hidden_recorded,
                "missing_examples": self.missing_examples[:5]}


def judge_broadcasts(
    truth: Sequence[dict[str, Any]],
    recorded: Sequence[tuple[int | None, int | None, float, float | None]],
    reconnected_at: float | None,
    tolerance: float = 2.0,
) -> BroadcastVerdict:
    """Every broadcast of the truth (online transition to the next offline) found or classified."""
    verdict = BroadcastVerdict()
    by_channel: dict[int, list[tuple[int | None, float]]] = defaultdict(list)
    for channel_id, livestream_id, started, _ in recorded:
        if channel_id is not None:
            by_channel[channel_id].append((livestream_id, started))
    opened: dict[int, dict[str, Any]] = {}
    spans: list[tuple[dict[str, Any], dict[str, Any] | None]] = []
    for t in status_transitions(truth):
        if t["status"] == "online":
            opened[t["channel_id"]] = t
        elif (start := opened.pop(t["channel_id"], None)) is not None:
            spans.append((start, t))
    spans.extend((start, None) for start in opened.values())
    for start, end in spans:
        verdict.truth += 1
        seen = by_channel.get(start["channel_id"], [])
        found = any(lid == start["livestream_id"] or abs(at - start["sent_wall"]) <= tolerance for lid, at in seen)
        hidden = (reconnected_at is not None and end is not None and not start["delivered"]
                  and not end["delivered"] and end["sent_wall"] <= reconnected_at)
        if hidden:
            verdict.hidden += 1
            verdict.hidden_recorded += found
        elif not found:
            verdict.missing += 1
            verdict.missing_examples.append(f"{start['slug']} livestream {start['livestream_id']}")
    return verdict


def status_transitions(truth: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The simulator's status changes (title updates keep the status and are not transitions)."""
    return [t for t in truth if t["status"] != t["previous_status"]]


def is_frame_row(row: Row) -> bool:
    """A row a Pusher frame announced. An inferred start or end (the writer's, when the next frame
    shows one was missed, e.g. inside an outage) is a repair: its time is the next frame's, not the
    missed one's, and counted as frame latency it made S4's p99 seconds long."""
    return row.source == "pusher" and row.event not in INFERRED_EVENTS.values()


def is_start_reconciliation(row: Row) -> bool:
    return row.previous_status == "unknown" and row.status == "offline"


@dataclass
class Verdict:
    """The latency join and the loss check of one run.

    `latencies_ms` are frame→commit for rows from Pusher frames, split into `receive_ms`
    (sent → the worker read the frame, its `received_at`) and `commit_ms` (read →
    `recorded_at`: parsing, hand-off, writer, PostgreSQL); `repair_ms` are reconciliation rows
    (source api) and the writer's inferred starts and ends, which repair what no frame announced.
    """

    latencies_ms: list[float] = field(default_factory=list)
    sent_wall: list[float] = field(default_factory=list)  # each latency's send time (phases of S4)
    receive_ms: list[float] = field(default_factory=list)
    commit_ms: list[float] = field(default_factory=list)
    repair_ms: list[float] = field(default_factory=list)
    matched: int = 0
    expected: int = 0
    lost: int = 0
    lost_delivered: int = 0
    lost_kinds: dict[str, int] = field(default_factory=dict)
    duplicated: int = 0
    extra: int = 0
    order_errors: int = 0
    by_source: dict[str, int] = field(default_factory=dict)
    lost_examples: list[str] = field(default_factory=list)

    def json(self) -> dict[str, Any]:
        return {
            "expected": self.expected, "matched": self.matched, "lost": self.lost,
            "lost_delivered": self.lost_delivered, "lost_delivered_kinds": self.lost_kinds,
            "duplicated": self.duplicated, "extra": self.extra,
            "order_errors": self.order_errors, "by_source": self.by_source,
            "lost_examples": self.lost_examples[:5],
        }


IN_FLIGHT = 1.0  # seconds before a drop in which a frame may still sit in a socket buffer


def judge(truth: Sequence[dict[str, Any]], rows: Sequence[Row], drop_at: float | None = None) -> Verdict:
    """Join history rows to the truth: latencies, losses, duplicates and order (module docstring).

    With `drop_at` (the wall time every connection was dropped), delivered transitions that
    are missing are classified: `in_flight` (sent in the second before the drop: the frame
    was written to a socket that was then aborted), `after_missed` (sent after the drop
    for a streamer whose previous transition was never received, so the worker's state
    was stale until reconciliation), `other`.
    """
    verdict = Verdict()
    transitions = status_transitions(truth)
    verdict.expected = len(transitions)
    history = [r for r in rows if not is_start_reconciliation(r)]
    verdict.by_source = dict(Counter(r.source for r in history))
    by_key: dict[tuple[int, str, int], list[Row]] = defaultdict(list)
    loose: dict[tuple[int, str], list[Row]] = defaultdict(list)
    for row in history:
        if row.livestream_id is not None:
            by_key[(row.channel_id, row.status, row.livestream_id)].append(row)
        else:
            loose[(row.channel_id, row.status)].append(row)
    used: set[int] = set()
    unseen_since_drop: set[int] = set()  # channels with a transition the worker never got
    kinds: Counter[str] = Counter()
    for t in transitions:
        key = (t["channel_id"], t["status"], t["livestream_id"])
        candidates = by_key.get(key) or loose.get((t["channel_id"], t["status"])) or []
        match = next((r for r in candidates if id(r) not in used), None)
        stale = t["channel_id"] in unseen_since_drop
        if (match is None or match.source != "pusher") and drop_at is not None \
                and t["sent_wall"] >= drop_at - IN_FLIGHT:
            unseen_since_drop.add(t["channel_id"])
        if match is None:
            verdict.lost += 1
            if t["delivered"]:
                verdict.lost_delivered += 1
                verdict.lost_examples.append(f"{t['slug']} {t['previous_status']}→{t['status']} seq {t['seq']}")
                if drop_at is not None:
                    if drop_at - IN_FLIGHT <= t["sent_wall"] <= drop_at:
                        kinds["in_flight"] += 1
                    elif t["sent_wall"] > drop_at and stale:
                        kinds["after_missed"] += 1
                    else:
                        kinds["other"] += 1
            continue
        used.add(id(match))
        verdict.matched += 1
        if len(by_key.get(key, ())) > 1:
            verdict.duplicated += 1
        if is_frame_row(match):
            verdict.latencies_ms.append((match.recorded_at - t["sent_wall"]) * 1000)
            verdict.sent_wall.append(t["sent_wall"])
            verdict.receive_ms.append((match.received_at - t["sent_wall"]) * 1000)
            verdict.commit_ms.append((match.recorded_at - match.received_at) * 1000)
        else:
            verdict.repair_ms.append((match.recorded_at - t["sent_wall"]) * 1000)
    verdict.lost_kinds = dict(kinds)
    verdict.extra = sum(1 for r in history if id(r) not in used)
    want: dict[int, list[str]] = defaultdict(list)
    got: dict[int, list[str]] = defaultdict(list)
    for t in transitions:
        want[t["channel_id"]].append(t["status"])
    for row in history:
        got[row.channel_id].append(row.status)
    verdict.order_errors = sum(1 for cid in want.keys() | got.keys() if want.get(cid) != got.get(cid))
    return verdict


def state_mismatches(url: str, sim_streamers: Sequence[dict[str, Any]]) -> int:
    """Streamers whose current DB status differs from the simulator's (never-flipped offline may be unknown)."""
    db = dict(fetch_rows(url, "SELECT channel_id, status FROM kick_monitor.streamers WHERE channel_id IS NOT NULL"))
    bad = 0
    for s in sim_streamers:
        want = "online" if s["live"] else "offline"
        have = db.get(s["channel_id"])
        if have != want and not (want == "offline" and have == "unknown"):
            bad += 1
    return bad


class TruthFollower:
    """The simulator's truth read incrementally: each streamer's latest status and when it changed."""

    def __init__(self, fetch: Callable[[int], Sequence[dict[str, Any]]]) -> None:
        self.fetch = fetch  # SimProcess.truth: transitions from the n-th on
        self.read = 0
        self.status: dict[int, str] = {}
        self.changed_at: dict[int, float] = {}

    def refresh(self) -> None:
        rows = self.fetch(self.read)
        self.read += len(rows)
        for t in rows:
            self.status[t["channel_id"]] = t["status"]
            self.changed_at[t["channel_id"]] = t["sent_wall"]

    def stale(self, url: str, settle: float = 0.5) -> int:
        """Streamers the database has wrong while the load goes on: what an outage left to repair.
        The database is read first, the truth after it; a streamer that changed within `settle` s of
        the read, or since, is left out (its row may be in flight), so only transitions the product
        missed count. A streamer with no transition yet is offline (its row may say unknown)."""
        read_at = time.time()
        db = fetch_rows(url, "SELECT channel_id, status FROM kick_monitor.streamers WHERE channel_id IS NOT NULL")
        self.refresh()
        return sum(1 for channel_id, have in db
                   if self.changed_at.get(channel_id, 0.0) <= read_at - settle
                   and have != self.status.get(channel_id, "offline")
                   and not (have == "unknown" and channel_id not in self.status))


# Named queries over status_events; values only ever travel as parameters.
COUNT_QUERIES = {
    "all": "SELECT count(*) FROM kick_monitor.status_events",
    # unknown→offline rows are reconciliation learning the start state, not transitions
    "transitions": "SELECT count(*) FROM kick_monitor.status_events"
    " WHERE NOT (previous_status = 'unknown' AND status = 'offline')",
    "repairs_since": "SELECT count(*) FROM kick_monitor.status_events"
    " WHERE source = 'api' AND event = 'reconcile' AND recorded_at > to_timestamp(%s)",
    "last_repair_since": "SELECT extract(epoch FROM max(recorded_at))::float8 FROM kick_monitor.status_events"
    " WHERE source = 'api' AND event = 'reconcile' AND recorded_at > to_timestamp(%s)",
}


def count_rows(url: str, which: str = "all", *params: object) -> int:
    """The result of one named query of COUNT_QUERIES (a count, or 0 when NULL)."""
    rows = fetch_rows(url, COUNT_QUERIES[which], params)
    return int(rows[0][0]) if rows and rows[0][0] is not None else 0


def count_unknown(url: str) -> int:
    return int(fetch_rows(url, "SELECT count(*) FROM kick_monitor.streamers WHERE status = 'unknown'")[0][0])


def wait_quiet(read: Callable[[], int], quiet: float, timeout: float) -> tuple[int, float]:
    """Poll a counter until it stops changing for `quiet` seconds; (value, seconds waited)."""
    started = time.monotonic()
    last, since = read(), time.monotonic()
    while time.monotonic() - started < timeout:
        time.sleep(0.1)
        value = read()
        if value != last:
            last, since = value, time.monotonic()
        elif time.monotonic() - since >= quiet:
            break
    return last, time.monotonic() - started
