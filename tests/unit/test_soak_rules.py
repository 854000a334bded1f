"""The soak's pass rule on synthetic samples: a slow leak across respawned pids fails, a sawtooth of
restarts with flat memory passes, fds must come back, and history losses are told apart by window."""

from __future__ import annotations

from typing import Any

from kick_tools.bench import soak_rules

HOUR = 3600.0


def samples(series: dict[str, list[tuple[float, int, float]]], fds: dict[str, list[int]] | None = None) -> list[
        dict[str, Any]]:
    """Build sampler output from slot -> [(t, pid, private MB)] (and optional fds per point)."""
    by_t: dict[float, dict[str, Any]] = {}
    for slot, points in series.items():
        for i, (t, pid, mb) in enumerate(points):
            reading = {"pid": pid, "private_kb": mb * 1024, "pss_kb": mb * 1024, "threads": 2,
                       "fds": (fds or {}).get(slot, [10] * len(points))[i]}
            by_t.setdefault(t, {"t": t, "slots": {}})["slots"][slot] = reading
    return [by_t[t] for t in sorted(by_t)]


def test_a_leak_of_3_mb_an_hour_fails_and_one_reset_by_restarts_shows_within_pids() -> None:
    writer = [(float(s), 1, 30 + 3 * s / HOUR) for s in range(0, 7200, 10)]  # never killed: leaks 3 MB/h
    worker = []  # killed every 20 min; each pid starts at 10 MB and leaks 3 MB/h
    for k in range(6):
        pid, born = 100 + k, k * 1200.0
        worker += [(born + s, pid, 10 + 3 * s / HOUR) for s in range(0, 1200, 10)]
    data = samples({"writer": writer, "worker 0": worker})
    slopes = soak_rules.memory_slopes(data, warmup=300)
    assert slopes["writer"] is not None and abs(slopes["writer"] - 3.0) < 0.05
    verdict = soak_rules.verdict(slopes, {}, {}, {"duplicated": 0, "lost": 0}, 0)
    assert verdict["soak_verdict"] == "FAIL" and verdict["failures"][0].startswith("writer private memory grows 3.0")
    within = soak_rules.memory_slopes(data, warmup=300, within_pids=True)
    assert within["worker 0"] is not None and abs(within["worker 0"] - 3.0) < 0.05


def test_restarts_with_flat_memory_pass_and_a_level_rising_pid_after_pid_fails() -> None:
    # every pid climbs for 40 s at start (left out: its own start-up), then stays flat
    flat, rising = [], []
    for k in range(4):
        pid, born = 200 + k, k * 1800.0
        for s in range(0, 1800, 10):
            start_up = min(1.0, s / 40)
            flat.append((born + s, pid, 8 + 4 * start_up + (0.2 if s % 20 else -0.2)))
            rising.append((born + s, pid, 8 + 4 * start_up + 3.0 * k))  # +3 MB per pid: 6 MB/h
    slopes = soak_rules.memory_slopes(samples({"worker 1": flat, "worker 2": rising,
                                               "writer": [(t, 1, 20.0) for t, _, _ in flat]}), warmup=300)
    assert abs(slopes["worker 1"] or 0.0) < 0.1
    assert slopes["writer"] == 0.0
    assert slopes["worker 2"] is not None and slopes["worker 2"] > 5.0
    within = soak_rules.memory_slopes(samples({"worker 2": rising}), warmup=300, within_pids=True)
    assert abs(within["worker 2"] or 0.0) < 0.1  # each process alone is flat: the growth is across pids
    verdict = soak_rules.verdict(slopes, {}, {}, {}, 0)
    assert verdict["soak_verdict"] == "FAIL"
    assert verdict["failures"] == [f"worker 2 private memory grows {slopes['worker 2']} MB/h"]


def test_fds_must_return_to_their_level() -> None:
    points = [(float(t), 1, 20.0) for t in range(0, 1000, 10)]
    fine = [10] * 90 + [14] * 5 + [10] * 5  # a fault raised them for a while
    leaking = [10] * 50 + [11] * 20 + [12] * 20 + [13] * 10
    got = soak_rules.returned_to_level(samples({"a": points, "b": points}, {"a": fine, "b": leaking}), "fds",
                                       warmup=300, settled_from=950, tolerance=soak_rules.FD_TOLERANCE)
    assert got["a"]["ok"] and got["a"]["level"] == 10
    assert not got["b"]["ok"] and got["b"]["final"] == 13


def test_history_losses_are_split_by_fault_window_and_staleness() -> None:
    def t(cid: int, status: str, ls: int, wall: float) -> dict[str, Any]:
        return {"channel_id": cid, "status": status, "livestream_id": ls, "sent_wall": wall}

    transitions = [
        t(1, "online", 11, 1.0),  # recorded once
        t(2, "online", 21, 2.0),  # recorded twice
        t(3, "online", 31, 50.0),  # missed inside the window [49, 60]
        t(3, "offline", 31, 70.0),  # missed after it: the worker still believed offline
        t(4, "online", 41, 80.0),  # missed, no window: a real loss
        t(5, "offline", 51, 90.0),  # repaired by reconciliation (a row without livestream id)
    ]
    recorded = {(1, "online", 11): 1, (2, "online", 21): 2, (5, "offline", None): 1}
    counts = soak_rules.classify_history(transitions, recorded, [(49.0, 60.0)])
    examples = counts.pop("lost_examples")
    assert counts.pop("duplicated_examples") == [{"channel_id": 2, "status": "online", "livestream_id": 21,
                                                  "sent_wall": 2.0, "rows": 2}]
    assert counts == {"exposed": 6, "once": 1, "duplicated": 1, "in_fault_window": 1, "stale_after_window": 1,
                      "repaired": 1, "lost": 1}
    assert examples == [{"channel_id": 4, "status": "online", "livestream_id": 41, "sent_wall": 80.0}]
    failures = soak_rules.verdict({}, {}, {}, counts, 3)["failures"]
    assert len(failures) == 3  # duplicated, lost, state


def test_a_role_that_crashed_fails_the_soak_and_names_its_exception() -> None:
    """The 2-hour soak of round 8's code passed with 40 writer crashes in its first hour: the rule now sees them."""
    log = [
        '{"ts":"t","level":"INFO","process":"worker","logger":"kick_monitor.worker","msg":"connected to Pusher"}',
        '{"ts":"t","level":"ERROR","process":"writer","logger":"kick_monitor.role","msg":"writer crashed",'
        '"exc":"Traceback (most recent call last):\\n  File \\"w.py\\"\\n'
        'ValueError: Counters can only be incremented"}',
        '{"ts":"t","level":"ERROR","process":"writer","logger":"kick_monitor.role","msg":"writer crashed","exc":""}',
        'not json "msg":"x crashed"',
        '{"ts":"t","level":"ERROR","logger":"kick_monitor.api","msg":"the API crashed"}',  # not a role's
    ]
    crashes = soak_rules.role_crashes(log)
    assert crashes == {"count": 2, "by_role": {"writer": 2},
                       "first": "writer: ValueError: Counters can only be incremented"}
    failures = soak_rules.verdict({}, {}, {}, {}, 0, crashes=crashes)["failures"]
    assert failures == ["2 role crashes {'writer': 2}, first writer: ValueError: Counters can only be incremented"]
    assert soak_rules.verdict({}, {}, {}, {}, 0, crashes=soak_rules.role_crashes(log[:1]))["soak_verdict"] == "PASS"
