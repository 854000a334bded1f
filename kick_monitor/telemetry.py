"""Metrics for a process role, or a stand-in that does nothing when metrics are off.

Roles call `telemetry.FRAMES.labels(shard="3").inc()` unconditionally: with metrics on
that is the real prometheus_client metric of `kick_monitor.metrics`; with metrics off
(no `PROMETHEUS_MULTIPROC_DIR`, i.e. `metrics_port = 0`) every name answers a no-op
whose `labels()` returns itself. No `if self._metrics is not None` guards anywhere, and
prometheus_client is not even imported when nobody scrapes.

>>> t = load_telemetry()          # before any fork-specific setup is not required
>>> t.STATUS_CHANGES.labels(shard="0", status="online", source="pusher").inc()
"""

from __future__ import annotations

import os
from typing import Any


class NullMetric:
    """Accepts every metric call and does nothing."""

    def labels(self, *args: Any, **kwargs: Any) -> NullMetric:
        return self

    def inc(self, amount: float = 1) -> None:
        pass

    def dec(self, amount: float = 1) -> None:
        pass

    def set(self, value: float) -> None:
        pass

    def observe(self, value: float) -> None:
        pass


class NullTelemetry:
    """Every metric name of `kick_monitor.metrics` is a `NullMetric`."""

    enabled = False
    _metric = NullMetric()

    def __getattr__(self, name: str) -> Any:
        if name.isupper():
            return self._metric
        raise AttributeError(name)

    def record_build_info(self) -> None:
        pass


def metrics_enabled() -> bool:
    return "PROMETHEUS_MULTIPROC_DIR" in os.environ


def load_telemetry() -> Any:
    """`kick_monitor.metrics` when metrics are on, else a `NullTelemetry` (same names)."""
    if not metrics_enabled():
        return NullTelemetry()
    from kick_monitor import metrics

    return metrics
