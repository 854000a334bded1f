"""etc/prometheus/alerts.yml and etc/grafana/kick-monitor.json name only real metrics, and parse.

Always: every `kick_monitor_*` series an alert or a panel queries is one that
kick_monitor/metrics.py defines (with the right suffix for its type), and the alert set
covers what operators asked for. With PyYAML: the rule file's structure. With promtool
(Debian's `prometheus` package): `promtool check rules`, the rule unit tests in
tests/ops/alerts_test.yml, and every dashboard query parsed as PromQL.
"""

from __future__ import annotations

import importlib
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from kick_monitor import metrics
from tests.service import REPO

pytestmark = pytest.mark.timeout(60)

ALERTS = REPO / "etc" / "prometheus" / "alerts.yml"
ALERTS_TEST = REPO / "tests" / "ops" / "alerts_test.yml"
DASHBOARD = REPO / "etc" / "grafana" / "kick-monitor.json"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed (Debian: apt-get install prometheus)"
)
WANTED_ALERTS = {
    "KickMonitorDown", "KickMonitorWorkerStalled", "KickMonitorWorkersRestarting", "KickMonitorShardDisconnected",
    "KickMonitorNoFrames", "KickMonitorReconnectStorm", "KickMonitorSpoolGrowing", "KickMonitorDatabaseDown",
    "KickMonitorCommitLatencyHigh", "KickMonitorFrameToCommitSlow", "KickMonitorUnresolvedStreamers",
    "KickMonitorHandoffSpilling", "KickMonitorHandoffDropping",
    "KickMonitorWebhooksSilent", "KickMonitorWebhooksUnavailable",  # issue 16
    "KickMonitorShardUnowned", "KickMonitorNodeLostLeases",  # issue 17 (cluster)
}


def series_names() -> set[str]:
    """Every sample name the service can expose."""
    names: set[str] = set()
    for metric in vars(metrics).values():
        if not (hasattr(metric, "_type") and hasattr(metric, "_name")):
            continue
        base = metric._name
        if metric._type == "counter":
            names.add(base + "_total")
        elif metric._type == "histogram":
            names |= {base + "_bucket", base + "_count", base + "_sum"}
        else:
            names.add(base)
    return names


def referenced(expr: str) -> set[str]:
    return set(re.findall(r"\bkick_monitor_[a-z0-9_]+", expr))


def rules_from_text(text: str) -> list[dict[str, str]]:
    """`alert` and `expr` of each rule, read line by line (enough for this file; no YAML library needed)."""
    rules: list[dict[str, str]] = []
    block: tuple[dict[str, str], int] | None = None
    for line in text.splitlines():
        indent = len(line) - len(line.lstrip())
        if block is not None:
            if not line.strip() or indent > block[1]:
                block[0]["expr"] += " " + line.strip()
                continue
            block = None
        alert = re.fullmatch(r"\s*- alert: (\S+)\s*", line)
        if alert:
            rules.append({"alert": alert.group(1), "expr": ""})
            continue
        expr = re.fullmatch(r"(\s*)expr: (.*)", line)
        if expr and rules:
            value = expr.group(2).strip()
            if value in ("|", ">", "|-", ">-"):
                block = (rules[-1], len(expr.group(1)))
            else:
                rules[-1]["expr"] = value
    return rules


def test_every_alert_queries_real_metrics_and_the_set_is_complete() -> None:
    rules = rules_from_text(ALERTS.read_text())
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names)), "alert names are unique"
    assert set(names) >= WANTED_ALERTS, WANTED_ALERTS - set(names)
    known = series_names()
    for rule in rules:
        assert rule["expr"].strip(), rule
        unknown = referenced(rule["expr"]) - known
        assert not unknown, f"{rule['alert']}: unknown metrics {unknown}"
        assert referenced(rule["expr"]) or "up{" in rule["expr"], rule


def test_alert_file_structure() -> None:
    try:
        yaml: Any = importlib.import_module("yaml")
    except ImportError:
        pytest.skip("PyYAML is not installed; the structure is checked by promtool where it is installed")
    document = yaml.safe_load(ALERTS.read_text())
    [group] = document["groups"]
    assert group["name"] == "kick-monitor"
    assert [r["alert"] for r in group["rules"]] == [r["alert"] for r in rules_from_text(ALERTS.read_text())]
    for rule in group["rules"]:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
        assert rule["labels"]["severity"] in ("critical", "warning", "info")
        assert {"summary", "description"} <= set(rule["annotations"])


@needs_promtool
def test_promtool_checks_and_unit_tests_the_rules() -> None:
    assert PROMTOOL is not None
    check = subprocess.run([PROMTOOL, "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=30,
                           check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"SUCCESS: {len(rules_from_text(ALERTS.read_text()))} rules found" in check.stdout
    tested = subprocess.run([PROMTOOL, "test", "rules", str(ALERTS_TEST)], capture_output=True, text=True,
                            timeout=30, check=False, cwd=ALERTS_TEST.parent)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def dashboard_queries() -> list[tuple[str, str]]:
    board = json.loads(DASHBOARD.read_text())
    queries = []
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            queries.append((panel["title"], target["expr"]))
    return queries


def test_dashboard_is_sound_and_queries_real_metrics() -> None:
    board = json.loads(DASHBOARD.read_text())
    assert board["uid"] == "kick-monitor" and board["title"]
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    for panel in board["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel["targets"], panel["title"]
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
    queries = dashboard_queries()
    known = series_names()
    used: set[str] = set()
    for title, expr in queries:
        found = referenced(expr)
        assert found, f"{title}: {expr}"
        assert not found - known, f"{title}: unknown metrics {found - known}"
        assert 'instance=~"$instance"' in expr, f"{title}: follows the instance selector"
        used |= found
    bases = {name.removesuffix("_total") for name in known if not name.endswith(("_bucket", "_count", "_sum"))}
    shown = {name.removesuffix("_total") for name in used} | {
        name.rsplit("_", 1)[0] for name in used if name.endswith(("_bucket", "_count", "_sum"))}
    assert bases - shown == set(), f"metrics without a panel: {bases - shown}"


@needs_promtool
def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """Each query, Grafana's variables filled in, as a recording rule that promtool parses."""
    assert PROMTOOL is not None
    lines = ["groups:", "  - name: dashboard", "    rules:"]
    for number, (_, expr) in enumerate(dashboard_queries()):
        concrete = expr.replace("$__rate_interval", "5m").replace("$instance", ".*")
        lines += [f"      - record: dashboard_query_{number}", f"        expr: {json.dumps(concrete)}"]
    rules = tmp_path / "dashboard-rules.yml"
    rules.write_text("\n".join(lines) + "\n")
    check = subprocess.run([PROMTOOL, "check", "rules", str(rules)], capture_output=True, text=True, timeout=30,
                           check=False)
    assert check.returncode == 0, check.stdout + check.stderr
