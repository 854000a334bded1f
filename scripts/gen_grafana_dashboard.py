#!/usr/bin/env python3
"""Generate etc/grafana/kick-monitor.json, the Grafana dashboard over kick-monitor's metrics.

Panels are declared below as (title, kind, queries); the JSON is Grafana's dashboard model
(import it, or provision it from a file). Tests check it parses, every query names only
metrics defined in kick_monitor/metrics.py, and the file matches this script's output.

    python scripts/gen_grafana_dashboard.py           # rewrite the file
    python scripts/gen_grafana_dashboard.py --check   # exit 1 if it is out of date
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from scripts.generated import generate  # noqa: E402

OUTPUT = REPO / "etc" / "grafana" / "kick-monitor.json"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
SEL = 'instance=~"$instance"'

# (title, kind, unit, [(legend, expr)], width)
Panel = tuple[str, str, str, list[tuple[str, str]], int]
ROWS: list[tuple[str, list[Panel]]] = [
    ("Overview", [
        ("Streamers by status", "stat", "short", [
            ("{{status}}", f"max by (status) (kick_monitor_streamers{{{SEL}}})")], 8),
        ("Shards connected", "stat", "short", [
            ("connected", f"sum(kick_monitor_pusher_connected{{{SEL}}})"),
            ("shards", f"count(kick_monitor_pusher_connected{{{SEL}}})")], 4),
        ("Database up", "stat", "short", [("{{instance}}", f"kick_monitor_database_up{{{SEL}}}")], 4),
        ("Spool", "stat", "bytes", [("{{instance}}", f"kick_monitor_spool_bytes{{{SEL}}}")], 4),
        ("Version", "stat", "short", [("{{version}}", f"count by (version) (kick_monitor_build_info{{{SEL}}})")], 4),
    ]),
    ("Status changes", [
        ("Status changes / s", "timeseries", "ops", [
            ("{{status}} ({{source}})",
             f"sum by (status, source) (rate(kick_monitor_status_changes_total{{{SEL}}}[$__rate_interval]))")], 12),
        ("Frame → commit latency", "timeseries", "s", [
            ("p50", "histogram_quantile(0.5, sum by (le) "
                    f"(rate(kick_monitor_frame_to_commit_seconds_bucket{{{SEL}}}[$__rate_interval])))"),
            ("p99", "histogram_quantile(0.99, sum by (le) "
                    f"(rate(kick_monitor_frame_to_commit_seconds_bucket{{{SEL}}}[$__rate_interval])))")], 12),
        ("Lifecycle frames / s by shard", "timeseries", "ops", [
            ("shard {{shard}}",
             f"sum by (shard) (rate(kick_monitor_frames_received_total{{{SEL}}}[$__rate_interval]))")], 12),
        ("Committed changes / s", "timeseries", "ops", [
            ("{{outcome}}",
             f"sum by (outcome) (rate(kick_monitor_writer_committed_changes_total{{{SEL}}}[$__rate_interval]))")], 12),
    ]),
    ("Writer and database", [
        ("Commit duration", "timeseries", "s", [
            ("p50", "histogram_quantile(0.5, sum by (le) "
                    f"(rate(kick_monitor_writer_commit_duration_seconds_bucket{{{SEL}}}[$__rate_interval])))"),
            ("p99", "histogram_quantile(0.99, sum by (le) "
                    f"(rate(kick_monitor_writer_commit_duration_seconds_bucket{{{SEL}}}[$__rate_interval])))")], 8),
        ("Changes per batch (mean)", "timeseries", "short", [
            ("mean", f"sum(rate(kick_monitor_writer_batch_size_sum{{{SEL}}}[$__rate_interval]))"
                     f" / sum(rate(kick_monitor_writer_batch_size_count{{{SEL}}}[$__rate_interval]))")], 8),
        ("Waiting for durability", "timeseries", "short", [
            ("writer queue", f"sum(kick_monitor_writer_queue_depth{{{SEL}}})"),
            ("unacked, shard {{shard}}", f"max by (shard) (kick_monitor_worker_unacked_changes{{{SEL}}})")], 8),
        ("Commit errors / s", "timeseries", "ops", [
            ("{{kind}}", f"sum by (kind) (rate(kick_monitor_writer_commit_errors_total{{{SEL}}}[$__rate_interval]))")],
         8),
        ("Spooled changes / s", "timeseries", "ops", [
            ("spooled", f"sum(rate(kick_monitor_spooled_changes_total{{{SEL}}}[$__rate_interval]))"),
            ("worker spilled, shard {{shard}}",
             f"sum by (shard) (rate(kick_monitor_handoff_spilled_changes_total{{{SEL}}}[$__rate_interval]))"),
            ("worker dropped, shard {{shard}}",
             f"sum by (shard) (rate(kick_monitor_handoff_dropped_changes_total{{{SEL}}}[$__rate_interval]))")], 8),
        ("Spool size", "timeseries", "bytes", [
            ("{{instance}}", f"kick_monitor_spool_bytes{{{SEL}}}")], 8),
        ("Clock offset (database − host)", "timeseries", "s", [
            ("{{instance}}", f"kick_monitor_clock_offset_seconds{{{SEL}}}")], 8),
    ]),
    ("Pusher connections", [
        ("Connected by shard", "timeseries", "short", [
            ("shard {{shard}}", f"max by (shard) (kick_monitor_pusher_connected{{{SEL}}})")], 8),
        ("Reconnects / min by reason", "timeseries", "short", [
            ("{{reason}}",
             f"sum by (reason) (rate(kick_monitor_pusher_reconnects_total{{{SEL}}}[$__rate_interval])) * 60")], 8),
        ("Subscriptions by shard", "timeseries", "short", [
            ("shard {{shard}}", f"max by (shard) (kick_monitor_pusher_subscriptions{{{SEL}}})")], 8),
        ("Parse errors / min by kind", "timeseries", "short", [
            ("{{kind}}", f"sum by (kind) (rate(kick_monitor_parse_errors_total{{{SEL}}}[$__rate_interval])) * 60"),
            ("subscription errors",
             f"sum(rate(kick_monitor_pusher_subscription_errors_total{{{SEL}}}[$__rate_interval])) * 60")], 12),
        ("Worker heartbeat age", "timeseries", "s", [
            ("shard {{shard}}", f"time() - max by (shard) (kick_monitor_worker_heartbeat_timestamp_seconds{{{SEL}}})")],
         12),
    ]),
    ("Kick API and processes", [
        ("API requests / min", "timeseries", "short", [
            ("{{endpoint}} {{status}}",
             f"sum by (endpoint, status) (rate(kick_monitor_api_requests_total{{{SEL}}}[$__rate_interval])) * 60")], 6),
        ("API retries, 429s / min; throttled s / min", "timeseries", "short", [
            ("retries", f"sum(rate(kick_monitor_api_retries_total{{{SEL}}}[$__rate_interval])) * 60"),
            ("429 answers", f"sum(rate(kick_monitor_api_rate_limited_total{{{SEL}}}[$__rate_interval])) * 60"),
            ("throttled s", f"sum(rate(kick_monitor_api_throttled_seconds_total{{{SEL}}}[$__rate_interval])) * 60")],
         6),
        ("Shared API budget: current rate (requests/s)", "timeseries", "reqps", [
            ("rate", f"max(kick_monitor_api_rate{{{SEL}}})")], 6),
        ("Reconciliations and token fetches / h", "timeseries", "short", [
            ("reconcile {{outcome}}",
             f"sum by (outcome) (rate(kick_monitor_reconciliations_total{{{SEL}}}[$__rate_interval])) * 3600"),
            ("token fetches",
             f"sum(rate(kick_monitor_api_token_refreshes_total{{{SEL}}}[$__rate_interval])) * 3600")], 6),
        ("Process restarts", "timeseries", "short", [
            ("{{role}}", f"sum by (role) (increase(kick_monitor_worker_restarts_total{{{SEL}}}[$__rate_interval]))")],
         6),
    ]),
    ("Webhook subscriptions (issue 16)", [
        ("Subscriptions by state (streamer × event)", "timeseries", "short", [
            ("{{state}}", f"max by (state) (kick_monitor_webhook_subscriptions{{{SEL}}})")], 12),
        ("Sync rounds / h", "timeseries", "short", [
            ("{{outcome}}",
             f"sum by (outcome) (increase(kick_monitor_webhook_sync_runs_total{{{SEL}}}[1h]))"),
            ("problem {{kind}}",
             f"sum by (kind) (increase(kick_monitor_webhook_sync_errors_total{{{SEL}}}[1h]))")], 12),
    ]),
    ("Application integration (docs/integration.md)", [
        ("Mirror lag (our commit → the application's)", "timeseries", "s", [
            ("p50", "histogram_quantile(0.5, sum by (le) "
                    f"(rate(kick_monitor_mirror_lag_seconds_bucket{{{SEL}}}[$__rate_interval])))"),
            ("p99", "histogram_quantile(0.99, sum by (le) "
                    f"(rate(kick_monitor_mirror_lag_seconds_bucket{{{SEL}}}[$__rate_interval])))"),
            ("round p99", "histogram_quantile(0.99, sum by (le) "
                          f"(rate(kick_monitor_mirror_batch_duration_seconds_bucket{{{SEL}}}[$__rate_interval])))")],
         8),
        ("Mirror applications and failures / s", "timeseries", "ops", [
            ("applied", f"sum(rate(kick_monitor_mirror_applied_total{{{SEL}}}[$__rate_interval]))"),
            ("failed {{kind}}",
             f"sum by (kind) (rate(kick_monitor_mirror_failures_total{{{SEL}}}[$__rate_interval]))"),
            ("pending", f"max(kick_monitor_mirror_pending{{{SEL}}})")], 8),
        ("Streamer source", "timeseries", "short", [
            ("rows", f"max(kick_monitor_source_rows{{{SEL}}})"),
            ("syncs {{outcome}} / h",
             f"sum by (outcome) (rate(kick_monitor_source_syncs_total{{{SEL}}}[$__rate_interval])) * 3600")], 8),
    ]),
    # issue 16: the webhook receiver
    ("Webhooks (Kick's Events API)", [
        ("Deliveries / min by outcome", "timeseries", "short", [
            ("{{event}} {{outcome}}",
             f"sum by (event, outcome) (rate(kick_monitor_webhook_deliveries_total{{{SEL}}}[$__rate_interval])) * 60"),
            ("waiting for the writer", f"max(kick_monitor_webhook_waiting_deliveries{{{SEL}}})")], 8),
        ("Kick's delay (message timestamp → durable) and verification", "timeseries", "s", [
            ("delay p50", "histogram_quantile(0.5, sum by (le) "
                          f"(rate(kick_monitor_webhook_delay_seconds_bucket{{{SEL}}}[$__rate_interval])))"),
            ("delay p99", "histogram_quantile(0.99, sum by (le) "
                          f"(rate(kick_monitor_webhook_delay_seconds_bucket{{{SEL}}}[$__rate_interval])))"),
            ("verify p99", "histogram_quantile(0.99, sum by (le) "
                           f"(rate(kick_monitor_webhook_verify_seconds_bucket{{{SEL}}}[$__rate_interval])))")], 8),
        ("Since the last accepted delivery", "timeseries", "s", [
            ("{{event}}", f"time() - max by (event) (kick_monitor_webhook_last_delivery_timestamp_seconds{{{SEL}}})")],
         8),
    ]),
    # notifier (issue 19)
    ("Go-live notifications (docs/notifications.md)", [
        ("Announcement latency (commit → webhook answer)", "timeseries", "s", [
            ("p50 {{kind}} {{event}}", "histogram_quantile(0.5, sum by (le, kind, event) "
             f"(rate(kick_monitor_notify_delivery_latency_seconds_bucket{{{SEL}}}[$__rate_interval])))"),
            ("p99 {{kind}} {{event}}", "histogram_quantile(0.99, sum by (le, kind, event) "
             f"(rate(kick_monitor_notify_delivery_latency_seconds_bucket{{{SEL}}}[$__rate_interval])))")], 8),
        ("Deliveries / min", "timeseries", "short", [
            ("{{kind}} {{outcome}}",
             f"sum by (kind, outcome) (rate(kick_monitor_notify_deliveries_total{{{SEL}}}[$__rate_interval])) * 60")],
         8),
        ("Outbox, targets, dispatching", "timeseries", "short", [
            ("outbox {{state}}", f"max by (state) (kick_monitor_notify_outbox{{{SEL}}})"),
            ("targets {{state}}", f"max by (state) (kick_monitor_notify_targets{{{SEL}}})"),
            ("dispatching trees", f"sum(kick_monitor_notify_active{{{SEL}}})")], 8),
    ]),
    # --- issue 17 (cluster) ---
    ("Cluster", [
        ("Shard leases per node", "timeseries", "short", [
            ("{{instance}}", f"max by (instance) (kick_monitor_cluster_leases_held{{{SEL}}})")], 8),
        ("Lease hand-overs / h", "timeseries", "short", [
            ("{{event}} {{instance}}",
             "sum by (event, instance) "
             f"(rate(kick_monitor_cluster_handovers_total{{{SEL}}}[$__rate_interval])) * 3600")],
         8),
        ("Longest-unowned shard", "timeseries", "s", [
            ("unowned", f"max(kick_monitor_cluster_shard_unowned_seconds{{{SEL}}})")], 8),
    ]),
    # --- end issue 17 ---
]


def panel(panel_id: int, spec: Panel, x: int, y: int) -> dict[str, Any]:
    title, kind, unit, queries, width = spec
    height = 4 if kind == "stat" else 8
    result: dict[str, Any] = {
        "id": panel_id,
        "type": kind,
        "title": title,
        "datasource": DATASOURCE,
        "gridPos": {"x": x, "y": y, "w": width, "h": height},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [
            {"refId": chr(ord("A") + i), "datasource": DATASOURCE, "expr": expr, "legendFormat": legend}
            for i, (legend, expr) in enumerate(queries)
        ],
    }
    if kind == "stat":
        result["options"] = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                             "colorMode": "value", "graphMode": "none", "textMode": "value_and_name"}
    else:
        result["options"] = {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                             "tooltip": {"mode": "multi", "sort": "desc"}}
    return result


def render() -> str:
    panels: list[dict[str, Any]] = []
    next_id, y = 1, 0
    for row_title, specs in ROWS:
        panels.append({"id": next_id, "type": "row", "title": row_title, "collapsed": False,
                       "gridPos": {"x": 0, "y": y, "w": 24, "h": 1}, "panels": []})
        next_id, y, x, row_height = next_id + 1, y + 1, 0, 0
        for spec in specs:
            if x + spec[4] > 24:
                x, y, row_height = 0, y + row_height, 0
            made = panel(next_id, spec, x, y)
            panels.append(made)
            next_id += 1
            x += spec[4]
            row_height = max(row_height, made["gridPos"]["h"])
        y += row_height
    dashboard = {
        "uid": "kick-monitor",
        "title": "kick-monitor",
        "description": "Kick.com live status monitor: streamers, Pusher shards, writer and database "
                       "(generated by scripts/gen_grafana_dashboard.py; metrics in docs/metrics.md)",
        "tags": ["kick-monitor"],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-6h", "to": "now"},
        "templating": {"list": [
            {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
             "current": {}, "hide": 0, "refresh": 1},
            {"name": "instance", "label": "Instance", "type": "query", "datasource": DATASOURCE,
             "query": {"query": "label_values(kick_monitor_build_info, instance)", "refId": "instance"},
             "definition": "label_values(kick_monitor_build_info, instance)",
             "multi": True, "includeAll": True, "current": {}, "hide": 0, "refresh": 2, "sort": 1},
        ]},
        "annotations": {"list": []},
        "links": [],
        "panels": panels,
    }
    return json.dumps(dashboard, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    return generate({OUTPUT: render}, "Generate etc/grafana/kick-monitor.json", "gen_grafana_dashboard.py", argv)


if __name__ == "__main__":
    raise SystemExit(main())
