"""`kick-monitor demo` as CI runs it (stdout not a terminal): real PostgreSQL, simulator and service.

The demo runs in a session of its own, so "nothing left behind" can be checked exactly:
no process in its group, none in the groups of the simulator and the service it reports,
and no postgres for its data dir.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from kick_monitor.cli.main import main
from tests.conftest import clean_environment
from tests.service import alive

pytestmark = pytest.mark.timeout(120)
DURATION = 20


def group_members(pgid: int) -> list[int]:
    """Live processes in process group `pgid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if fields[0] != "Z" and int(fields[2]) == pgid:
                    found.append(int(entry.name))
    return found


def postgres_running_in(pgdata: Path) -> list[int]:
    """Postgres processes serving `pgdata` (by its command line)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                if "postgres" in cmdline and f"-D {pgdata}" in cmdline:
                    found.append(int(entry.name))
    return found


def number(pattern: str, text: str) -> float:
    match = re.search(pattern, text)
    assert match, f"{pattern!r} not in the output:\n{text}"
    return float(match.group(1))


def run_demo(*args: str, cwd: Path, timeout: float) -> tuple[subprocess.Popen[str], str, str]:
    """The demo in its own session; on a hang it gets SIGTERM (it cleans up), then its group SIGKILL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "kick_monitor.cli.main", "demo", *args],
        env=clean_environment(), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=60)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"the demo did not end within {timeout}s:\n{out}\n{err}")
    return proc, out, err


@pytest.mark.slow  # long end to end: make test-slow
def test_demo_commits_every_transition_and_leaves_nothing_behind(tmp_path: Path, server_tmp_path: Path) -> None:
    data_dir = server_tmp_path / "data"  # not under pytest's tmp: see tests.conftest.make_server_dir
    started = time.monotonic()
    proc, out, err = run_demo("--duration", str(DURATION), "--data-dir", str(data_dir), cwd=tmp_path, timeout=90)
    elapsed = time.monotonic() - started

    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{out}\nstderr:\n{err}"
    assert re.search(r"^\[00:05\] online \d+ offline \d+ unknown 0 \| committed \d+", out, re.M), out
    sent = number(r"transitions sent\s+(\d+)", out)
    committed = number(r"transitions committed\s+(\d+)", out)
    assert committed > 0
    assert committed == sent
    assert number(r"mismatches\s+(\d+)", out) == 0
    p50 = number(r"latency\s+p50 ([\d.]+) ms", out)
    p99 = number(r"p99 ([\d.]+) ms", out)
    assert 0 < p50 <= p99 < 1000
    assert elapsed < 60, f"the demo took {elapsed:.1f}s"

    demo_dir = data_dir / "demo"
    service_pid = int(number(r"started `kick-monitor run` \(pid (\d+)", out))
    sim_pid = int(orjson.loads((demo_dir / "sim-ready.json").read_bytes())["pid"])
    for name, pid in (("demo", proc.pid), ("service", service_pid), ("simulator", sim_pid)):
        assert not alive(pid), f"the {name} (pid {pid}) is still running"
        assert group_members(pid) == [], f"processes of the {name}'s group are still running"
    assert postgres_running_in((demo_dir / "postgres").resolve()) == [], f"stderr:\n{err}"
    assert not (demo_dir / "postgres" / "postmaster.pid").exists()


@pytest.fixture
def in_process(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """For `main()` in this process: no outer KICK_MONITOR_* settings; root logger restored after."""
    for key in [key for key in os.environ if key.startswith("KICK_MONITOR_")]:
        monkeypatch.delenv(key)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("in_process")
def test_demo_help_documents_every_flag(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--help"]) == 0
    out = capsys.readouterr().out
    for flag in ("--duration", "--streamers", "--rate", "--live-fraction", "--noise-rate", "--shards",
                 "--seed", "--sim-port", "--refresh", "--plain", "--data-dir", "--metrics-port"):
        assert flag in out


@pytest.mark.usefixtures("in_process")
def test_demo_bad_flag_value_is_a_one_line_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--streamers", "0"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "kick-monitor: error: demo: --streamers must be at least 1"


def test_demo_port_in_use_fails_in_one_line_and_stops_what_it_started(
    tmp_path: Path, server_tmp_path: Path
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        data_dir = server_tmp_path / "data"
        proc, _out, err = run_demo("--sim-port", str(port), "--data-dir", str(data_dir), cwd=tmp_path, timeout=60)
    assert proc.returncode == 1
    assert err.strip().splitlines() == [
        f"kick-monitor: error: simulator port 127.0.0.1:{port} is in use; choose another --sim-port"
    ]
    assert group_members(proc.pid) == []
    assert postgres_running_in((data_dir / "demo" / "postgres").resolve()) == []
