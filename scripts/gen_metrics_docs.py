#!/usr/bin/env python3
"""Generate docs/metrics.md
from kick_monitor/metrics.py (every metric, defined once there).

    python scripts/gen_metrics_docs.py           # rewrite the file
    python scripts/gen_metrics_docs.py --check   # exit 1 if it is out of date (the tests run this)

Every label of every metric must be explained in LABELS below; a new label without an
explanation makes this script fail, so the reference cannot fall behind the code.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from kick_monitor import metrics  # noqa: E402
from scripts.generated import generate  # noqa: E402

OUTPUT = REPO / "docs" / "metrics.md"

# What each label's values are, by "metric:label" first, then by "label".
LABELS = {
    "shard": "shard index, `0` … `N-1`",
    "kick_monitor_cluster_handovers:event": "`claimed` \\| `released` (handed over) \\| `lost` (taken by another "
    "node) \\| `lapsed` (not renewed within the TTL: paused or cut off)",  # issue 17
    "kick_monitor_frames_received:event": "lifecycle event name (`App\\Events\\StreamerIsLive`, "
    "`App\\Events\\StopStreamBroadcast`, …) or `other` (chat, goals: dropped unparsed)",
    "kick_monitor_parse_errors:kind": "`oversize`, `bad_json`, `invalid_utf8`, `bad_frame`, `bad_data_json`, "
    "`bad_type`, `missing_field`, `channel_mismatch`, `bad_title`, `bad_timestamp`",
    "kick_monitor_status_changes:status": "`online` \\| `offline`",
    "kick_monitor_status_changes:source": "`pusher` (a frame) \\| `api` (reconciliation)",
    "kick_monitor_frame_to_commit_seconds:source": "`pusher` \\| `api`",
    "kick_monitor_pusher_reconnects:reason": "`connection_lost`, `closed_by_server`, `connect_failed`, "
    "`pong_timeout`, `pusher_error`, `frame_too_large`, `send_failed`, `internal_error`",
    "kick_monitor_writer_committed_changes:outcome": "`transition` (a status change recorded) \\| "
    "`no_change` (already known, or older than what the row holds) \\| `inferred` (a transition no source "
    "reported, which the writer recorded: the end of a broadcast when the next one starts, or a start it never "
    "saw)",
    "kick_monitor_writer_commit_errors:kind": "`connection` (database unreachable), `rejected` (a change the "
    "database refused: dropped and logged), `spool` (could not write the spool)",
    "kick_monitor_api_requests:endpoint": "`/oauth/token`, `/public/v1/channels`, `/public/v1/livestreams`, "
    "`/api/v2/channels` (slug left out)",
    "kick_monitor_api_requests:status": "HTTP status code, or `timeout` \\| `error` (no answer)",
    "kick_monitor_reconciliations:outcome": "`ok` \\| `error`",
    "kick_monitor_worker_restarts:role": "`worker` \\| `writer`",
    "kick_monitor_streamers:status": "`online`, `offline`, `unknown` (not yet known), `unresolved` (no channel id "
    "yet: not watched)",
    "kick_monitor_build_info:version": "kick-monitor version",
    "kick_monitor_source_syncs:outcome": "`ok` \\| `failed` (query failed or returned a bad row: the list is "
    "left as it was) \\| `skipped` (another process tree holds the sync lock)",
    "kick_monitor_webhook_subscriptions:state": "`subscribed` \\| `missing` (not made yet: new, or Kick was "
    "unavailable) \\| `failed` (Kick refused it: the subscription limit, or another reason in `webhooks status`)",
    "kick_monitor_webhook_sync_runs:outcome": "`ok`, `limit_reached` (creating stopped for the round), "
    "`refused` (Kick refused some for another reason), `partial` "
    "(stopped early: Kick unavailable or out of time; retried in 30 s), `failed` (listing failed: nothing changed), "
    "`skipped` (the same list was synced lately, maybe by another process)",
    "kick_monitor_webhook_sync_errors:kind": "`limit` (subscription limit reached), `refused` (Kick refused "
    "subscriptions for another reason), `incomplete` (some not tried this round), `list` (listing failed), "
    "`auth` (credentials refused)",
    "kick_monitor_mirror_failures:kind": "`lock` (the application held a lock past lock_timeout), `timeout` "
    "(statement_timeout), `constraint` (the application refused the value), `privilege`, `connection`, `error`",
    # issue 16: the webhook receiver
    "kick_monitor_webhook_deliveries:event": "`livestream.status.updated` \\| `livestream.metadata.updated` \\| "
    "`other` (a type we do not use); for a refused delivery, the type its (unsigned) header claims",
    "kick_monitor_webhook_deliveries:outcome": "`accepted` (durable in the writer), `duplicate` (a re-delivery of one "
    "acknowledged before), `bad_signature`, `stale` (replay: too old or from the future), `unknown_broadcaster`, "
    "`unknown_type`, `invalid` (signed but malformed: ignored), `unavailable` (503: the writer did not acknowledge "
    "in time), `slow_client` (disconnected: request not complete within webhook_read_timeout)",
    "kick_monitor_webhook_delay_seconds:event": "`livestream.status.updated` \\| `livestream.metadata.updated`",
    "kick_monitor_webhook_last_delivery_timestamp_seconds:event": "`livestream.status.updated` \\| "
    "`livestream.metadata.updated`",
    # notifier (issue 19)
    "kind": "notification target kind: `discord` \\| `slack` \\| `json`",
    "kick_monitor_notify_deliveries:outcome": "`sent`, `retried` (5xx, connection refused), `rate_limited` (429: "
    "waits its Retry-After), `failed` (4xx, 404: target disabled), `uncertain` (maybe delivered, never re-sent), "
    "`skipped` (late discovery, flap guard)",
    "kick_monitor_notify_delivery_latency_seconds:event": "`live` \\| `offline`",
    "kick_monitor_notify_outbox:state": "`due` (should be sent now: grows when a target or the notifier is stuck), "
    "`waiting` (offline grace, retry back-off), `sending` (requests in flight)",
    "kick_monitor_notify_targets:state": "`enabled` \\| `disabled` (the webhook answered 404)",
}

TYPE_ORDER = {"counter": 0, "gauge": 1, "histogram": 2}


def defined_metrics() -> list[Any]:
    """Every metric object in kick_monitor.metrics, in definition order."""
    return [value for value in vars(metrics).values() if hasattr(value, "_type") and hasattr(value, "_name")]


def exposed_name(metric: Any) -> str:
    return f"{metric._name}_total" if metric._type == "counter" else str(metric._name)


def label_text(metric: Any, label: str) -> str:
    text = LABELS.get(f"{metric._name}:{label}") or LABELS.get(label)
    if text is None:
        raise SystemExit(f"gen_metrics_docs: explain label {label!r} of {metric._name} in LABELS")
    return text


def render() -> str:
    lines = [
        "# Metrics reference",
        "",
        "<!-- Generated by scripts/gen_metrics_docs.py from kick_monitor/metrics.py. Do not edit. -->",
        "",
        "One scrape endpoint per process tree, `http://KICK_MONITOR_METRICS_HOST:KICK_MONITOR_METRICS_PORT/metrics`",
        "(loopback by default; off while the port is 0). The exporter role serves every process's",
        "values from the prometheus_client multiprocess directory (`<data dir>/metrics/<tree>`, wiped",
        "at each start): counters and histograms are summed over the processes, dead ones included;",
        "gauges are the maximum over the *live* processes (`livemax`), so a killed worker's gauges",
        "vanish with it. With one unit per shard, each shard's tree has its own endpoint (shard N on",
        "port 94NN in the shipped configs): scrape them all and aggregate in PromQL.",
        "",
        "| Metric | Type | Labels | Meaning |",
        "| --- | --- | --- | --- |",
    ]
    for metric in defined_metrics():
        labels = ", ".join(f"`{label}`" for label in metric._labelnames) or "—"
        lines.append(f"| `{exposed_name(metric)}` | {metric._type} | {labels} | {metric._documentation} |")
    lines += ["", "## Label values", ""]
    for metric in defined_metrics():
        for label in metric._labelnames:
            lines.append(f"- `{exposed_name(metric)}` `{label}`: {label_text(metric, label)}")
    lines += ["", "## Histogram buckets", ""]
    for metric in defined_metrics():
        if metric._type == "histogram":
            bounds = ", ".join(f"{bound:g}" for bound in metric._kwargs.get("buckets", ()))
            unit = "s" if metric._name.endswith("_seconds") else ""
            lines.append(f"- `{metric._name}`: {bounds}{' ' + unit if unit else ''} (and `+Inf`)")
    lines += [
        "",
        "## Useful queries",
        "",
        "```promql",
        "# status changes per second, by status",
        "sum by (status) (rate(kick_monitor_status_changes_total[5m]))",
        "# frame-to-commit latency, 99th percentile",
        "histogram_quantile(0.99, sum by (le) (rate(kick_monitor_frame_to_commit_seconds_bucket[5m])))",
        "# shards whose Pusher connection is down",
        "kick_monitor_pusher_connected == 0",
        "# reconnects per minute, by reason",
        "sum by (reason) (rate(kick_monitor_pusher_reconnects_total[5m])) * 60",
        "```",
        "",
        "Alert rules over these metrics: `etc/prometheus/alerts.yml`; a Grafana dashboard:",
        "`etc/grafana/kick-monitor.json`.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    return generate({OUTPUT: render}, "Generate docs/metrics.md", "gen_metrics_docs.py", argv)


if __name__ == "__main__":
    raise SystemExit(main())
