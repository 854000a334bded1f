"""The lazily imported commands: run (workers.coordinator), and the tools found by entry point
(`kick_monitor.commands`: sim, demo, bench) get their arguments and settings."""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import types
from collections.abc import Callable, Iterator
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

import pytest

from kick_monitor.cli import main as cli_main
from kick_monitor.cli.errors import CliError
from kick_monitor.cli.hooks import GROUP, load_module, tool_commands
from kick_monitor.cli.main import main
from kick_monitor.config import Settings


@pytest.fixture(autouse=True)
def quiet_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for key in [key for key in list(__import__("os").environ) if key.startswith("KICK_MONITOR_")]:
        monkeypatch.delenv(key)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def fake_module(monkeypatch: pytest.MonkeyPatch, name: str, **attributes: Any) -> types.ModuleType:
    module = types.ModuleType(name)
    for key, value in attributes.items():
        setattr(module, key, value)
    monkeypatch.setitem(sys.modules, name, module)
    return module


def fake_tools(monkeypatch: pytest.MonkeyPatch, **commands: str) -> None:
    """Installed tool commands as the CLI discovers them: name -> `module[:attribute]`."""
    found = {name: EntryPoint(name, value, GROUP) for name, value in commands.items()}
    monkeypatch.setattr(cli_main, "tool_commands", lambda: found)


def test_run_hands_the_settings_to_the_coordinator(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Settings] = []

    def run_service(settings: Settings, reload_settings: Callable[[], Settings] | None = None) -> int:
        seen.append(settings)
        assert reload_settings is not None
        monkeypatch.setenv("KICK_MONITOR_API_RATE", "3")  # changed while running; then SIGHUP
        seen.append(reload_settings())
        return 0

    fake_module(monkeypatch, "workers.coordinator", run_service=run_service)
    monkeypatch.setenv("KICK_MONITOR_API_RATE", "2")
    assert main(["--batch-size", "7", "run", "--shard-count", "4", "--shard-index", "3"]) == 0
    initial, reloaded = seen
    assert (initial.batch_size, initial.shard_count, initial.shard_index, initial.api_rate) == (7, 4, 3, 2.0)
    assert (reloaded.batch_size, reloaded.shard_count, reloaded.api_rate) == (7, 4, 3.0)  # flags kept, env re-read


def test_demo_and_bench_get_their_arguments_and_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, argparse.Namespace, Settings]] = []
    fake_tools(monkeypatch, demo="km_fake_demo", bench="km_fake_tools.bench:COMMAND")
    for name, module in (("demo", "km_fake_demo"), ("bench", "km_fake_tools.bench")):

        def add_arguments(parser: argparse.ArgumentParser) -> None:
            parser.add_argument("--scenario", default="S1")
            parser.add_argument("--duration", type=float, default=60.0)

        def run(args: argparse.Namespace, settings: Settings, name: str = name) -> int:
            calls.append((name, args, settings))
            return 3

        if name == "demo":
            fake_module(monkeypatch, module, add_arguments=add_arguments, run=run, TAKES_SETTINGS=True)
        else:  # a `module:attribute` entry point names an object with the same contract
            command = types.SimpleNamespace(add_arguments=add_arguments, run=run, TAKES_SETTINGS=True)
            fake_module(monkeypatch, module, COMMAND=command)
    assert main(["--log-level", "ERROR", "demo", "--duration", "5", "--data-dir", "/tmp/x"]) == 3
    assert main(["bench", "--scenario", "S2"]) == 3
    (demo, demo_args, demo_settings), (bench, bench_args, _) = calls
    assert demo == "demo" and demo_args.duration == 5.0 and demo_settings.data_dir == Path("/tmp/x")
    assert demo_settings.log_level == "ERROR"
    assert bench == "bench" and bench_args.scenario == "S2"


def test_sim_gets_its_arguments_only(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    got: list[argparse.Namespace] = []

    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--streamers", type=int, default=10)

    def run(args: argparse.Namespace) -> int:
        got.append(args)
        return 0

    fake_tools(monkeypatch, sim="km_fake_sim")
    fake_module(monkeypatch, "km_fake_sim", add_arguments=add_arguments, run=run, HELP="a fake simulator")
    assert main(["sim", "--streamers", "300"]) == 0
    assert got[0].streamers == 300
    assert main(["sim", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--streamers" in out and "a fake simulator" in out
    assert main(["--help"]) == 0
    assert "a fake simulator" in " ".join(capsys.readouterr().out.split())  # the one-line help, loaded only for --help
    assert main(["sim", "--bogus"]) == 2
    assert capsys.readouterr().err.startswith("kick-monitor: error: sim: unrecognized arguments: --bogus")


def test_missing_module(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(
        CliError, match=r"`demo` is not available in this installation \(kick_monitor\.nope is missing\)"
    ):
        load_module("kick_monitor.nope", "demo")


def test_module_with_a_missing_dependency(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "km_plugin_dep.py").write_text("import km_no_such_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(CliError, match="`sim` needs the Python package 'km_no_such_dependency'"):
        load_module("km_plugin_dep", "sim")


def test_broken_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "km_plugin_broken.py").write_text("raise RuntimeError('boom')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(CliError, match="importing km_plugin_broken failed: RuntimeError: boom"):
        load_module("km_plugin_broken", "bench")


def test_module_without_the_entry_points(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    fake_tools(monkeypatch, demo="km_fake_demo")
    fake_module(monkeypatch, "km_fake_demo")
    assert main(["demo"]) == 1
    assert capsys.readouterr().err == (
        "kick-monitor: error: `demo` is not available: km_fake_demo.add_arguments is missing\n"
    )


def test_a_declared_tool_that_is_not_installed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_tools(monkeypatch, sim="km_no_such_tool.cli")
    assert main(["sim"]) == 1
    assert capsys.readouterr().err == (
        "kick-monitor: error: `sim` is not available in this installation (km_no_such_tool.cli is missing)\n"
    )
    assert main(["--help"]) == 0  # the rest of the CLI works, and says why the tool does not
    assert "(unavailable: `sim` is not available in this installation" in " ".join(capsys.readouterr().out.split())


def test_the_installed_tools_are_declared_not_named() -> None:
    """`make venv` installs the entry points; the product's own source never names the tool packages."""
    assert {"sim", "demo", "bench"} <= set(tool_commands())
    assert tool_commands()["sim"].module.split(".")[0] == "kick_sim"
    for name in ("sim", "demo", "bench"):
        done = subprocess.run(
            [sys.executable, "-m", "kick_monitor.cli.main", name, "--help"],
            capture_output=True, text=True, timeout=60, check=False,
        )
        assert done.returncode == 0 and f"usage: kick-monitor {name}" in done.stdout, done.stderr


def test_failure_inside_a_command_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def run_service(settings: Settings, reload_settings: object = None) -> int:
        raise KeyError("shard table")

    fake_module(monkeypatch, "workers.coordinator", run_service=run_service)
    assert main(["run"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("kick-monitor: error: unexpected KeyError: 'shard table'")
