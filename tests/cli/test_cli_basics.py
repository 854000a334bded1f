"""--version, --help, usage errors: always one line on stderr and the right exit code."""

from __future__ import annotations

from pathlib import Path

import pytest

from kick_monitor import __version__
from tests.conftest import CliRunner


def assert_one_error(stderr: str, *parts: str) -> None:
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("kick-monitor: error: "), stderr
    for part in parts:
        assert part in lines[0]
    assert "Traceback" not in stderr


def test_version(cli: CliRunner) -> None:
    code, out, err = cli("--version")
    assert (code, out, err) == (0, f"kick-monitor {__version__}\n", "")
    assert __version__ >= "1.0.0"


def test_usage_error_from_the_real_entry_point(cli: CliRunner) -> None:
    code, out, err = cli("streamers", "add")
    assert code == 2 and out == ""
    assert_one_error(err, "streamers add: the following arguments are required: SLUG")


def test_help_lists_commands_settings_and_exit_codes(cli: CliRunner) -> None:
    code, out, err = cli("--help")
    assert code == 0 and err == ""
    for word in (
        "run",
        "db",
        "streamers",
        "status",
        "sim",
        "demo",
        "bench",
        "--dry-run",
        "--config",
        "--database-url",
        "--shard-index",
        "--metrics-port",
        "exit codes",
    ):
        assert word in out
    assert "--client-secret" not in out


@pytest.mark.parametrize(
    "args",
    [
        ["streamers", "add", "--help"],
        ["streamers", "import", "--help"],
        ["db", "migrate", "--help"],
        ["status", "--help"],
        ["run", "--help"],
    ],
)
def test_every_command_has_help(run_main: CliRunner, args: list[str]) -> None:
    code, out, err = run_main(*args)
    assert code == 0 and err == "" and out.startswith("usage: kick-monitor")


@pytest.mark.parametrize(
    ("args", "parts"),
    [
        ([], ["no command given"]),
        (["frobnicate"], ["invalid choice: 'frobnicate'"]),
        (["status", "--bogus"], ["unrecognized arguments: --bogus"]),
        (["streamers"], ["streamers: the following arguments are required: COMMAND"]),
        (["streamers", "add"], ["streamers add: the following arguments are required: SLUG"]),
        (["--dry-run", "status"], ["--dry-run goes with `run`"]),
        (["--metrics-port", "-1", "status"], ["--metrics-port: Input should be greater than or equal to 0"]),
        (["--log-format", "yaml", "status"], ["--log-format: Input should be 'auto', 'json' or 'text'"]),
        (["status", "--data", "x"], ["unrecognized arguments: --data x"]),  # no abbreviations
        (["run", "--client-secret", "hunter2-long"], ["--client-secret is not accepted on the command line"]),
        (["--config", "/nonexistent/km.env", "status"], ["--config /nonexistent/km.env: cannot read"]),
    ],
)
def test_usage_and_config_errors_exit_2_with_one_line(run_main: CliRunner, args: list[str], parts: list[str]) -> None:
    code, out, err = run_main(*args)
    assert code == 2, err
    assert out == ""
    assert_one_error(err, *parts)
    assert "hunter2-long" not in err


def test_bad_environment_exits_2(cli: CliRunner) -> None:
    code, _, err = cli("status", env={"KICK_MONITOR_DATABASE_URL": "mysql://u:topsecretpw@h/db"})
    assert code == 2
    assert_one_error(err, "KICK_MONITOR_DATABASE_URL: must be a URL starting with postgresql://")
    assert "topsecretpw" not in err


def test_flags_are_accepted_after_the_command_too(run_main: CliRunner) -> None:
    code, _, err = run_main("status", "--log-format", "yaml")
    assert code == 2
    assert_one_error(err, "--log-format")


def test_config_file_from_environment(run_main: CliRunner, tmp_path: Path) -> None:
    config = tmp_path / "km.env"
    config.write_text("KICK_MONITOR_BATCHSIZE=5\n")
    code, _, err = run_main("status", env={"KICK_MONITOR_CONFIG": str(config)})
    assert code == 2
    assert_one_error(err, f"--config {config}:1: unknown key KICK_MONITOR_BATCHSIZE")
