"""Generated references cannot drift: the committed files equal what their generators produce now.

docs/configuration.md and etc/kick-monitor.env.example come from the Settings model,
docs/metrics.md from kick_monitor/metrics.py, etc/grafana/kick-monitor.json from its
generator. A failure here means: run the script named in the message and commit the result.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest

from kick_monitor import metrics
from kick_monitor.config import FIELD_BY_KEY, Settings, env_key, load_settings, parse_env_file
from tests.service import REPO

pytestmark = pytest.mark.timeout(60)


def script(name: str) -> ModuleType:
    path = REPO / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"kick_monitor_scripts_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("generator", "path", "render"),
    [
        ("gen_config_docs", "docs/configuration.md", "render_markdown"),
        ("gen_config_docs", "etc/kick-monitor.env.example", "render_env_example"),
        ("gen_metrics_docs", "docs/metrics.md", "render"),
        ("gen_grafana_dashboard", "etc/grafana/kick-monitor.json", "render"),
    ],
)
def test_committed_file_matches_its_generator(generator: str, path: str, render: str) -> None:
    expected = getattr(script(generator), render)()
    assert (REPO / path).read_text(encoding="utf-8") == expected, f"{path} is stale: run python scripts/{generator}.py"


def test_check_mode_reports_a_stale_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = script("gen_metrics_docs")
    stale = tmp_path / "metrics.md"
    stale.write_text("old\n")
    monkeypatch.setattr(module, "OUTPUT", stale)
    monkeypatch.setattr(module, "REPO", tmp_path)
    assert module.main(["--check"]) == 1
    assert stale.read_text() == "old\n", "--check writes nothing"
    assert module.main([]) == 0 and module.main(["--check"]) == 0


def test_env_example_lists_every_key_with_its_default_and_parses() -> None:
    example = REPO / "etc" / "kick-monitor.env.example"
    assert parse_env_file(example) == {}, "every line is commented out: the defaults stay the code's"
    keys = re.findall(r"^#(KICK_MONITOR_[A-Z_]+)=(.*)$", example.read_text(), flags=re.M)
    assert [key for key, _ in keys] == [env_key(name) for name in Settings.model_fields]
    uncommented = example.with_name("uncommented.env")
    try:
        uncommented.write_text("".join(f"{key}={value}\n" for key, value in keys))
        settings = load_settings(environ={}, config_file=uncommented)
    finally:
        uncommented.unlink()
    assert settings == load_settings(environ={}), "the values shown are the defaults"


def test_configuration_doc_names_every_key() -> None:
    text = (REPO / "docs" / "configuration.md").read_text()
    for key in FIELD_BY_KEY:
        assert f"| `{key}` |" in text


def test_metric_definitions_follow_prometheus_conventions() -> None:
    defined = [m for m in vars(metrics).values() if hasattr(m, "_type") and hasattr(m, "_name")]
    assert len(defined) >= 20
    for metric in defined:
        name = metric._name
        assert re.fullmatch(r"kick_monitor_[a-z][a-z0-9_]*", name), name
        assert metric._documentation, name
        assert not name.endswith("_total"), f"{name}: prometheus_client adds _total to counters"
        if metric._type == "gauge":
            assert not name.endswith(("_count", "_sum", "_bucket")), name
        if "seconds" in name or "duration" in name or "latency" in name:
            assert name.endswith(("_seconds", "_timestamp_seconds")), f"{name}: base unit seconds, as a suffix"
        assert not re.search(r"_(ms|milliseconds|bytes_total|kb|mb)$", name), name
        assert "shard" not in metric._labelnames or metric._labelnames[0] == "shard", name
    text = (REPO / "docs" / "metrics.md").read_text()
    for metric in defined:
        shown = metric._name + ("_total" if metric._type == "counter" else "")
        assert f"| `{shown}` |" in text
