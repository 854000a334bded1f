"""The benchmark's join of history rows to the simulator's truth (kick_tools.bench.measure.judge)."""

from __future__ import annotations

from typing import Any

from kick_tools.bench.measure import Row, judge, latency_by_phase


def transition(seq: int, status: str, previous: str, livestream_id: int, sent: float) -> dict[str, Any]:
    return {"seq": seq, "slug": "s", "channel_id": 7, "status": status, "previous_status": previous,
            "livestream_id": livestream_id, "sent_wall": sent, "delivered": True}


def row(status: str, previous: str, event: str, livestream_id: int, received: float, recorded: float) -> Row:
    return Row(7, status, previous, "pusher", event, livestream_id, received, recorded)


def test_an_inferred_end_is_a_repair_not_a_late_frame() -> None:
    """S4: an end missed in the outage is inferred when the next start arrives 10 s later; counted as
    the end's frame latency, it made S4's p99 seconds long."""
    truth = [transition(1, "online", "offline", 100, 0.0), transition(2, "offline", "online", 100, 1.0),
             transition(3, "online", "offline", 200, 11.0)]
    rows = [row("online", "offline", "App\\Events\\StreamerIsLive", 100, 0.001, 0.002),
            row("offline", "online", "inferred_end", 100, 11.001, 11.002),
            row("online", "offline", "App\\Events\\StreamerIsLive", 200, 11.001, 11.002)]
    verdict = judge(truth, rows)
    assert verdict.matched == 3 and verdict.lost == 0
    assert len(verdict.latencies_ms) == 2 and max(verdict.latencies_ms) < 10
    assert [round(ms) for ms in verdict.repair_ms] == [10002]


def test_latency_by_phase_splits_frames_by_their_send_time() -> None:
    truth = [transition(1, "online", "offline", 100, 0.0), transition(2, "offline", "online", 100, 5.0),
             transition(3, "online", "offline", 200, 20.0)]
    rows = [row("online", "offline", "App\\Events\\StreamerIsLive", 100, 0.001, 0.002),
            row("offline", "online", "App\\Events\\StopStreamBroadcast", 100, 5.001, 5.010),
            row("online", "offline", "App\\Events\\StreamerIsLive", 200, 20.001, 20.003)]
    phases = latency_by_phase(judge(truth, rows), (("before", 0.0, 4.0), ("during", 4.0, 15.0), ("after", 15.0, 99.0)))
    assert {name: (s["count"], s.get("max")) for name, s in phases.items()} == {
        "before": (1, 2.0), "during": (1, 10.0), "after": (1, 3.0)}
