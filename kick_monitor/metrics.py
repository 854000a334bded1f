"""Every Prometheus metric of the service, defined once.

Multiprocess mode: the coordinator sets PROMETHEUS_MULTIPROC_DIR (see
`kick_monitor.metrics_server.prepare_multiprocess_dir`) *before* anything imports this
module, so import it lazily, inside process entry points, never at the top of a module
that the CLI imports. Names follow Prometheus conventions: `_total` counters, base units.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter, Gauge, Histogram

from . import __version__

if TYPE_CHECKING:
    from .messages import StatusChange

enabled = True  # `kick_monitor.telemetry.NullTelemetry.enabled` is False

# Latency buckets from 0.5 ms to 5 s: the pipeline's floor is ~0.7 ms, the promise < 1 s.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075,
    0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 2.0, 5.0,
)
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)

# Info metrics do not work in multiprocess mode; a constant-1 gauge with labels does.
BUILD_INFO = Gauge("kick_monitor_build_info", "Version of kick-monitor", ["version"], multiprocess_mode="livemax")

FRAMES = Counter("kick_monitor_frames_received_total", "Pusher frames received", ["shard", "event"])
PARSE_ERRORS = Counter("kick_monitor_parse_errors_total", "Malformed or unusable frames", ["shard", "kind"])
STATUS_CHANGES = Counter(
    "kick_monitor_status_changes_total", "Status changes sent to the writer", ["shard", "status", "source"]
)
CONNECTION_UP = Gauge(
    "kick_monitor_pusher_connected", "1 while the shard's Pusher connection is established", ["shard"],
    multiprocess_mode="livemax",
)
RECONNECTS = Counter("kick_monitor_pusher_reconnects_total", "Pusher reconnects", ["shard", "reason"])
SUBSCRIPTIONS = Gauge(
    "kick_monitor_pusher_subscriptions", "Channels subscribed", ["shard"], multiprocess_mode="livemax"
)
SUBSCRIPTION_ERRORS = Counter(
    "kick_monitor_pusher_subscription_errors_total", "Per-channel subscription errors", ["shard"]
)
UNACKED = Gauge(
    "kick_monitor_worker_unacked_changes", "Changes a worker holds until the writer makes them durable",
    ["shard"], multiprocess_mode="livemax",
)
HANDOFF_SPILLED = Counter(
    "kick_monitor_handoff_spilled_changes_total",
    "Changes a worker moved to its overflow spool because the writer did not acknowledge them in time",
    ["shard"],
)
HANDOFF_DROPPED = Counter(
    "kick_monitor_handoff_dropped_changes_total",
    "Changes a worker dropped: its memory bound and its overflow spool were both full",
    ["shard"],
)
HEARTBEAT = Gauge(
    "kick_monitor_worker_heartbeat_timestamp_seconds", "Last heartbeat of a worker", ["shard"],
    multiprocess_mode="livemax",
)

QUEUE_DEPTH = Gauge(
    "kick_monitor_writer_queue_depth", "Changes received by the writer and not yet durable",
    multiprocess_mode="livemax",
)
BATCH_SIZE = Histogram("kick_monitor_writer_batch_size", "Changes per committed batch", buckets=BATCH_BUCKETS)
COMMIT_SECONDS = Histogram(
    "kick_monitor_writer_commit_duration_seconds", "Duration of one batch commit", buckets=LATENCY_BUCKETS
)
COMMITTED = Counter("kick_monitor_writer_committed_changes_total", "Changes committed", ["outcome"])
COMMIT_ERRORS = Counter("kick_monitor_writer_commit_errors_total", "Failed commits", ["kind"])
LATENCY = Histogram(
    "kick_monitor_frame_to_commit_seconds", "From frame received to transition committed",
    ["source"], buckets=LATENCY_BUCKETS,
)
SPOOL_BYTES = Gauge("kick_monitor_spool_bytes", "Size of the durable spool", multiprocess_mode="livemax")
SPOOLED = Counter("kick_monitor_spooled_changes_total", "Changes written to the spool")
DB_UP = Gauge("kick_monitor_database_up", "1 while the writer can commit", multiprocess_mode="livemax")
CLOCK_OFFSET = Gauge(
    "kick_monitor_clock_offset_seconds",
    "Database now() minus this host's wall clock, measured by the writer (ordering never uses it)",
    multiprocess_mode="livemostrecent",
)

API_REQUESTS = Counter("kick_monitor_api_requests_total", "Kick API requests", ["endpoint", "status"])
TOKEN_REFRESHES = Counter("kick_monitor_api_token_refreshes_total", "OAuth token fetches")
API_RETRIES = Counter(
    "kick_monitor_api_retries_total", "Kick API requests sent again after a 429, a 5xx, a timeout or a network error"
)
API_RATE_LIMITED = Counter("kick_monitor_api_rate_limited_total", "Kick API answers 429 Too Many Requests")
API_THROTTLED_SECONDS = Counter(
    "kick_monitor_api_throttled_seconds_total", "Seconds Kick API requests waited for the client-side rate limit"
)
API_RATE = Gauge(
    "kick_monitor_api_rate",
    "Kick API requests per second the deployment's shared budget allows now (halved on a 429, recovers slowly)",
    multiprocess_mode="livemax",
)
RECONCILIATIONS = Counter(
    "kick_monitor_reconciliations_total", "Reconciliation passes a shard applied (the planner asks the API)",
    ["shard", "outcome"],
)

# -- webhook subscriptions (issue 16: kick_monitor/webhook_sync.py) --
WEBHOOK_SUBSCRIPTIONS = Gauge(
    "kick_monitor_webhook_subscriptions",
    "Kick webhook subscriptions (streamer × event) by state, as the deployment's last sync left them",
    ["state"], multiprocess_mode="livemax",
)
WEBHOOK_SYNCS = Counter(
    "kick_monitor_webhook_sync_runs_total", "Webhook subscription sync rounds by outcome", ["outcome"]
)
WEBHOOK_SYNC_ERRORS = Counter(
    "kick_monitor_webhook_sync_errors_total", "Webhook subscription sync rounds that met a problem, by kind",
    ["kind"],
)
# -- end webhook subscriptions --

WORKER_RESTARTS = Counter("kick_monitor_worker_restarts_total", "Child processes restarted", ["role"])
STREAMERS = Gauge(
    "kick_monitor_streamers", "Streamers by status", ["status"], multiprocess_mode="livemax"
)


SOURCE_SYNCS = Counter(
    "kick_monitor_source_syncs_total",
    "Syncs of the streamer list from streamers_source: ok, failed (list left as it was), skipped (another tree syncs)",
    ["outcome"],
)
SOURCE_ROWS = Gauge(
    "kick_monitor_source_rows", "Rows the streamer source returned at its last good sync", multiprocess_mode="livemax"
)
MIRROR_LAG = Histogram(
    "kick_monitor_mirror_lag_seconds", "From our commit of a status to the status mirror's commit of it",
    buckets=LATENCY_BUCKETS,
)
MIRROR_APPLIED = Counter("kick_monitor_mirror_applied_total", "Statuses the status mirror committed")
MIRROR_FAILURES = Counter(
    "kick_monitor_mirror_failures_total", "Failed applications of the status mirror statement (retried)", ["kind"]
)
MIRROR_PENDING = Gauge(
    "kick_monitor_mirror_pending", "Streamers whose current status is not mirrored yet", multiprocess_mode="livemax"
)
MIRROR_BATCH_SECONDS = Histogram(
    "kick_monitor_mirror_batch_duration_seconds", "Duration of one round of mirror applications",
    buckets=LATENCY_BUCKETS,
)

# -- issue 16: the webhook receiver ------------------------------------------------------------
WEBHOOK_DELAY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
WEBHOOK_DELIVERIES = Counter(
    "kick_monitor_webhook_deliveries_total",
    "Webhook deliveries by event type (other = a type we do not use) and outcome: accepted, duplicate,"
    " bad_signature, stale, unknown_broadcaster, unknown_type, invalid, unavailable (503), slow_client",
    ["event", "outcome"],
)
WEBHOOK_VERIFY_SECONDS = Histogram(
    "kick_monitor_webhook_verify_seconds", "Signature and timestamp check of one delivery",
    buckets=(0.00002, 0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01),
)
WEBHOOK_DELAY_SECONDS = Histogram(
    "kick_monitor_webhook_delay_seconds",
    "From Kick's Kick-Event-Message-Timestamp to the writer's acknowledgement (Kick's lag + ours)",
    ["event"], buckets=WEBHOOK_DELAY_BUCKETS,
)
WEBHOOK_LAST_DELIVERY = Gauge(
    "kick_monitor_webhook_last_delivery_timestamp_seconds",
    "When the receiver last accepted a delivery (set to its start time at start)", ["event"],
    multiprocess_mode="livemax",
)
WEBHOOK_WAITING = Gauge(
    "kick_monitor_webhook_waiting_deliveries", "Deliveries waiting for the writer's acknowledgement",
    multiprocess_mode="livemax",
)


def record_build_info() -> None:
    BUILD_INFO.labels(version=__version__).set(1)


# -- notifier (issue 19) ---------------------------------------------------------------------
NOTIFY_DELIVERIES = Counter(
    "kick_monitor_notify_deliveries_total",
    "Notification attempts by target kind and outcome: sent, retried (5xx, network), rate_limited (429),"
    " failed, uncertain (maybe delivered, never re-sent), skipped (late, flap guard)",
    ["kind", "outcome"],
)
NOTIFY_LATENCY = Histogram(
    "kick_monitor_notify_delivery_latency_seconds",
    "From the broadcast's commit (offline: from the end of the flap grace) to the webhook's answer",
    ["kind", "event"], buckets=LATENCY_BUCKETS,
)
NOTIFY_OUTBOX = Gauge(
    "kick_monitor_notify_outbox",
    "Deliveries not done: due (should go now), waiting (offline grace, retry back-off), sending",
    ["state"], multiprocess_mode="livemax",
)
NOTIFY_TARGETS = Gauge(
    "kick_monitor_notify_targets", "Notification targets by state (disabled: the webhook answered 404)",
    ["state"], multiprocess_mode="livemax",
)
NOTIFY_ACTIVE = Gauge(
    "kick_monitor_notify_active", "1 while this process tree's notifier dispatches (one per deployment)",
    multiprocess_mode="livemax",
)
# --- issue 17 (cluster): shard leases of this node (kick_monitor/lease_keeper.py) ---
CLUSTER_LEASES = Gauge(
    "kick_monitor_cluster_leases_held", "Shard leases this node holds", multiprocess_mode="livemax",
)
CLUSTER_HANDOVERS = Counter(
    "kick_monitor_cluster_handovers_total",
    "Shard lease events of this node: claimed, released (handed over), lost (taken by another node while"
    " this one ran), lapsed (not renewed in time: paused or cut off; stopped listening)",
    ["event"],
)
CLUSTER_UNOWNED_SECONDS = Gauge(
    "kick_monitor_cluster_shard_unowned_seconds",
    "How long the longest-unowned shard of the deployment has been without an owner (0: every shard owned)",
    multiprocess_mode="livemax",
)
# --- end issue 17 ---


def observe_many(child: Any, amounts: Iterable[float]) -> None:
    """`child.observe(a)` for every amount, as one increment per bucket touched and one of the sum.

    Measured (multiprocess mode, 20 buckets): `labels().observe()` costs 3.4–3.7 µs a value, each a
    locked write to an mmap file; the writer made one per change (LATENCY), 500 a batch. Grouped
    here: 0.17 µs a value. prometheus_client has no public call for it, so this reads the child's
    `_upper_bounds`, `_buckets` and `_sum` (what `observe` itself uses in 0.26, the version read); a child without
    them (another version, a stand-in) is observed value by value. The samples are the same as
    `observe`'s (tests/unit/test_observe_many.py), the sum up to floating-point rounding order."""
    bounds = getattr(child, "_upper_bounds", None)
    buckets = getattr(child, "_buckets", None)
    total_value = getattr(child, "_sum", None)
    check = getattr(child, "_raise_if_not_observable", None)
    if not bounds or buckets is None or total_value is None or check is None or len(bounds) != len(buckets):
        for amount in amounts:
            child.observe(amount)
        return
    check()  # a parent that needs labels raises, as observe() does
    counts = [0] * len(bounds)
    total, seen = 0.0, 0
    for amount in amounts:
        total += amount
        seen += 1
        index = bisect_left(bounds, amount)
        if index < len(bounds) and amount <= bounds[index]:  # NaN: in no bucket, as observe()
            counts[index] += 1
    if not seen:
        return
    total_value.inc(total)
    for index, count in enumerate(counts):
        if count:
            buckets[index].inc(count)


def observe_latencies(changes: Iterable[StatusChange], now: float) -> None:
    """LATENCY for a committed batch: each change's receive → commit time, by source, through
    `observe_many` (the writer's per-batch call; `kick_tools.bench.observe_cost` measures it)."""
    by_source: dict[str, list[float]] = {}
    for change in changes:
        by_source.setdefault(change.source, []).append(max(0.0, now - change.received_at))
    for source, amounts in by_source.items():
        observe_many(LATENCY.labels(source=source), amounts)
