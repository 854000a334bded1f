"""CounterDeltas: running totals become counter increments, once each, per label set."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

from kick_monitor.metric_deltas import CounterDeltas


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    found = registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


def test_increments_by_the_difference_per_label_set() -> None:
    registry = CollectorRegistry()
    reconnects = Counter("t_reconnects", "test", ["shard", "reason"], registry=registry)
    deltas = CounterDeltas()
    deltas.advance(reconnects, 3, shard="0", reason="pong_timeout")
    deltas.advance(reconnects, 3, shard="0", reason="pong_timeout")  # unchanged: no increment
    deltas.advance(reconnects, 5, shard="0", reason="pong_timeout")
    deltas.advance(reconnects, 1, shard="0", reason="connection_lost")
    assert value(registry, "t_reconnects_total", shard="0", reason="pong_timeout") == 5
    assert value(registry, "t_reconnects_total", shard="0", reason="connection_lost") == 1


def test_unlabelled_counter_and_a_source_that_restarted() -> None:
    registry = CollectorRegistry()
    refreshes = Counter("t_refreshes", "test", registry=registry)
    deltas = CounterDeltas()
    deltas.advance(refreshes, 4)
    deltas.advance(refreshes, 2)  # a new client counts from 0 again: its 2 are new
    deltas.advance(refreshes, 3)
    assert value(registry, "t_refreshes_total") == 4 + 2 + 1


def test_zero_creates_no_increment() -> None:
    registry = CollectorRegistry()
    errors = Counter("t_errors", "test", ["shard"], registry=registry)
    CounterDeltas().advance(errors, 0, shard="1")
    assert value(registry, "t_errors_total", shard="1") == 0
