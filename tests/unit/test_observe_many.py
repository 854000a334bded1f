"""`metrics.observe_many`: a batch of observations into a histogram costs one increment per bucket
touched, not one locked write per change — and exports exactly what `observe` per value would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.multiprocess import MultiProcessCollector

from kick_monitor.metrics import LATENCY_BUCKETS, observe_many

# Bounds themselves (le is inclusive), between them, 0, above the last finite bound, negative.
AMOUNTS = [0.0, 0.0005, 0.00051, 0.001, 0.0042, 0.0042, 0.01, 0.3, 0.75, 1.0, 4.99, 5.0, 5.01, 60.0, -0.001]


def samples(registry: CollectorRegistry) -> dict[str, float]:
    return {f"{s.name}{sorted(s.labels.items())}": s.value for m in registry.collect() for s in m.samples
            if not s.name.endswith("_created")}


def test_the_same_samples_as_one_observe_per_value() -> None:
    one, many = CollectorRegistry(), CollectorRegistry()
    by_one = Histogram("t_seconds", "t", ["source"], buckets=LATENCY_BUCKETS, registry=one)
    by_many = Histogram("t_seconds", "t", ["source"], buckets=LATENCY_BUCKETS, registry=many)
    for amount in AMOUNTS:
        by_one.labels(source="pusher").observe(amount)
    observe_many(by_many.labels(source="pusher"), AMOUNTS)
    observe_many(by_many.labels(source="api"), [])  # nothing to add: a labelled child with zeros, as `labels()` makes
    by_one.labels(source="api")
    assert samples(many) == samples(one)
    assert samples(many)["t_seconds_count[('source', 'pusher')]"] == len(AMOUNTS)


OBSERVE_IN_A_CHILD = """
import json, sys
from prometheus_client import Histogram
from kick_monitor.metrics import LATENCY_BUCKETS, observe_many
amounts = json.loads(sys.argv[2])
h = Histogram("t_seconds", "t", ["source"], buckets=LATENCY_BUCKETS)
if sys.argv[1] == "many":
    observe_many(h.labels(source="pusher"), amounts)
else:
    for amount in amounts:
        h.labels(source="pusher").observe(amount)
"""


def test_the_same_samples_in_multiprocess_mode(tmp_path: Path) -> None:
    """The writer's metrics live in per-process mmap files read by the exporter: the case that matters."""
    found = {}
    for way in ("one", "many"):
        directory = tmp_path / way
        directory.mkdir()
        env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=str(directory))
        subprocess.run([sys.executable, "-c", OBSERVE_IN_A_CHILD, way, json.dumps(AMOUNTS)], env=env, check=True,
                       timeout=60)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(directory))
        found[way] = samples(registry)
    assert found["many"] == found["one"]
    assert found["many"]["t_seconds_count[('source', 'pusher')]"] == len(AMOUNTS)


class OnlyObserve:
    """A histogram child without prometheus_client's internals (another version, a stand-in)."""

    def __init__(self) -> None:
        self.seen: list[float] = []

    def observe(self, amount: float) -> None:
        self.seen.append(amount)


def test_without_the_internals_it_observes_one_by_one() -> None:
    child = OnlyObserve()
    observe_many(child, AMOUNTS)
    assert child.seen == AMOUNTS


def test_nan_is_observed_as_observe_would() -> None:
    one, many = CollectorRegistry(), CollectorRegistry()
    by_one = Histogram("n_seconds", "n", buckets=LATENCY_BUCKETS, registry=one)
    by_many = Histogram("n_seconds", "n", buckets=LATENCY_BUCKETS, registry=many)
    by_one.observe(float("nan"))
    by_one.observe(0.002)
    observe_many(by_many, [float("nan"), 0.002])
    assert str(samples(many)) == str(samples(one))  # str: nan != nan


def test_a_batch_is_observed_by_source() -> None:
    """The writer's call: each change's receive → commit time under its own source's label."""
    from prometheus_client import REGISTRY

    from kick_monitor.messages import StatusChange
    from kick_monitor.metrics import observe_latencies

    def count(source: str, le: str | None = None) -> float:
        name = "kick_monitor_frame_to_commit_seconds_" + ("bucket" if le else "count")
        labels = {"source": source, **({"le": le} if le else {})}
        return REGISTRY.get_sample_value(name, labels) or 0.0

    def change(source: str, received_at: float) -> StatusChange:
        return StatusChange(change_id=f"{source}:{received_at}", channel_id=1, status="online", source=source,  # type: ignore[arg-type]
                            event="StreamerIsLive", livestream_id=None, title=None, occurred_at=None,
                            received_at=received_at, received_mono=0.0, shard=0)

    before = {s: count(s) for s in ("pusher", "api")}
    fast = count("pusher", "0.001")
    observe_latencies([change("pusher", 99.9995), change("api", 99.0), change("pusher", 98.0)], now=100.0)
    assert count("pusher") - before["pusher"] == 2
    assert count("api") - before["api"] == 1
    assert count("pusher", "0.001") - fast == 1  # 0.5 ms; the other pusher change took 2 s
