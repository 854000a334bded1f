"""The shared process harness stops exactly what it started: SIGTERM by PID, then SIGKILL to the
child's own process group after the bound (grandchildren included), and says why a start failed."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from kick_tools.harness import HarnessError, Process, SimProcess, alive, group_members, wait_until

# Ignores SIGTERM and leaves a grandchild in its process group: only SIGKILL to the group clears both.
STUBBORN = """
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
ignore = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
child = subprocess.Popen([sys.executable, "-c", ignore])
print(child.pid, flush=True)
time.sleep(60)
"""


def test_a_child_that_exits_on_sigterm_is_not_killed(tmp_path: Path) -> None:
    process = Process("sleeper", [sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "log").start()
    started = time.monotonic()
    assert process.stop(timeout=10) == -15  # SIGTERM was enough
    assert time.monotonic() - started < 5
    assert not group_members(process.pid)


def test_a_stubborn_group_is_killed_after_the_bound(tmp_path: Path) -> None:
    log = tmp_path / "log"
    process = Process("stubborn", [sys.executable, "-c", STUBBORN], log).start()
    wait_until(lambda: log.read_text().strip() != "", 20, what="the grandchild's pid")
    grandchild = int(log.read_text().split()[0])
    assert set(group_members(process.pid)) == {process.pid, grandchild}
    started = time.monotonic()
    assert process.stop(timeout=0.5) == -9
    assert 0.5 <= time.monotonic() - started < 8
    assert not alive(grandchild) and not group_members(process.pid)


def test_a_simulator_that_cannot_start_says_why(tmp_path: Path) -> None:
    with pytest.raises(HarnessError, match=r"the simulator exited at start \(code 2\)") as failed:
        SimProcess.start(tmp_path / "sim.log", tmp_path / "ready.json", ["--host", "0.0.0.0"], timeout=30)
    assert "non-loopback" in str(failed.value)
