"""The supervisor's decisions on a child's death, with a fake clock and no processes.

`on_child_exit` gets real wait statuses (as `os.waitpid` returns them); time comes from
a clock the test moves, heartbeats are the real shared-memory slots. Where the supervisor
sends signals, the "child" pid is a `sleep` process this test started and stops itself,
so no signal can reach a process the test does not own.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from kick_monitor.config import load_settings
from kick_monitor.exitcodes import EX_BOOT, EX_CONFIG, EX_FAILURE, EX_OK, EX_USAGE
from workers.coordinator import BOOT_WINDOW, MAX_BOOT_FAILURES, RESPAWN_MAX, RESPAWN_MIN, Child, Supervisor, TreePlan


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def exited(code: int) -> int:
    return code << 8


def killed(sig: int) -> int:
    return sig


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(autouse=True)
def own_pid() -> Iterator[int]:
    """A process of ours that stands in for every child (signals sent to it are harmless)."""
    global OWN_PID
    proc = subprocess.Popen(["sleep", "60"])
    OWN_PID = proc.pid
    try:
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


OWN_PID = 0


@pytest.fixture
def supervisor(tmp_path: Path, clock: Clock) -> Supervisor:
    settings = load_settings(cli={"data_dir": tmp_path}, environ={})
    return Supervisor(settings, "postgresql://unused/db", TreePlan("all", 2, (0, 1)), clock=clock)


def child(supervisor: Supervisor, name: str) -> Child:
    return next(c for c in supervisor.children if c.name == name)


def start(supervisor: Supervisor, c: Child, clock: Clock, *, boots: bool) -> None:
    """What spawn() records, without forking: a pid, a start time, the beat at fork, maybe one more."""
    supervisor.heartbeats.beat(c.slot, clock.now)
    c.spawn_beat = supervisor.heartbeats.last(c.slot)
    c.pid = OWN_PID
    c.started = clock.now
    if boots:
        clock.now += 0.1
        supervisor.heartbeats.beat(c.slot, clock.now)


def test_the_tree_has_writer_planner_and_one_worker_per_shard(supervisor: Supervisor) -> None:
    assert [c.name for c in supervisor.children] == ["writer", "planner", "worker-0", "worker-1"]
    assert [c.slot for c in supervisor.children] == [0, 1, 2, 3]


def test_a_booted_worker_killed_from_outside_is_respawned_at_once(supervisor: Supervisor, clock: Clock) -> None:
    worker = child(supervisor, "worker-0")
    start(supervisor, worker, clock, boots=True)
    clock.now += BOOT_WINDOW + 1
    supervisor.on_child_exit(worker, killed(signal.SIGKILL))
    assert worker.pid is None and not worker.failed
    assert worker.respawn_at == clock.now
    assert worker.boot_failures == 0


def test_young_deaths_back_off_exponentially_up_to_the_cap(supervisor: Supervisor, clock: Clock) -> None:
    worker = child(supervisor, "worker-1")
    delays = []
    for _ in range(12):
        start(supervisor, worker, clock, boots=True)  # booted, so never "failed at boot"
        clock.now += 1.0
        supervisor.on_child_exit(worker, exited(EX_FAILURE))
        delays.append(worker.respawn_at - clock.now)
        clock.now = worker.respawn_at
    assert delays[:4] == [RESPAWN_MIN, RESPAWN_MIN * 2, RESPAWN_MIN * 4, RESPAWN_MIN * 8]
    assert max(delays) == RESPAWN_MAX and not worker.failed


def test_a_long_life_resets_the_back_off(supervisor: Supervisor, clock: Clock) -> None:
    worker = child(supervisor, "worker-1")
    for _ in range(3):
        start(supervisor, worker, clock, boots=True)
        clock.now += 1.0
        supervisor.on_child_exit(worker, exited(EX_FAILURE))
        clock.now = worker.respawn_at
    start(supervisor, worker, clock, boots=True)
    clock.now += BOOT_WINDOW + 5
    supervisor.on_child_exit(worker, exited(EX_FAILURE))
    assert worker.respawn_at == clock.now


def test_a_worker_failing_at_boot_is_given_up_but_the_service_goes_on(supervisor: Supervisor, clock: Clock) -> None:
    worker = child(supervisor, "worker-0")
    for attempt in range(1, MAX_BOOT_FAILURES + 1):
        start(supervisor, worker, clock, boots=False)
        clock.now += 0.2
        supervisor.on_child_exit(worker, exited(EX_BOOT))
        assert worker.failed == (attempt == MAX_BOOT_FAILURES)
        clock.now = worker.respawn_at
    assert supervisor.stopping is None and supervisor.exit_code == EX_OK


@pytest.mark.parametrize("name", ["writer", "planner"])
def test_an_essential_role_failing_at_boot_stops_the_service(supervisor: Supervisor, clock: Clock, name: str) -> None:
    role = child(supervisor, name)
    for _ in range(MAX_BOOT_FAILURES):
        start(supervisor, role, clock, boots=False)
        clock.now += 0.2
        supervisor.on_child_exit(role, exited(EX_BOOT))
        clock.now = role.respawn_at
    assert role.failed
    assert supervisor.stopping == "warm" and supervisor.exit_code == EX_FAILURE


@pytest.mark.parametrize("code", [EX_CONFIG, EX_USAGE])
def test_a_fatal_configuration_exit_stops_the_service_with_that_code(
    supervisor: Supervisor, clock: Clock, code: int
) -> None:
    worker = child(supervisor, "worker-1")
    start(supervisor, worker, clock, boots=True)
    supervisor.on_child_exit(worker, exited(code))
    assert supervisor.stopping == "warm"
    assert supervisor.exit_code == code


def test_a_planned_restart_is_respawned_without_back_off(supervisor: Supervisor, clock: Clock) -> None:
    writer = child(supervisor, "writer")
    start(supervisor, writer, clock, boots=True)
    writer.planned_restart = True
    supervisor.on_child_exit(writer, exited(EX_OK))
    assert writer.respawn_at == clock.now and not writer.planned_restart and writer.quick_deaths == 0


def test_children_that_exit_during_a_stop_are_not_respawned(supervisor: Supervisor, clock: Clock) -> None:
    worker = child(supervisor, "worker-0")
    start(supervisor, worker, clock, boots=True)
    supervisor.begin_stop("SIGTERM")
    supervisor.on_child_exit(worker, killed(signal.SIGKILL))
    assert supervisor.exit_code == EX_OK and worker.quick_deaths == 0


def test_a_second_stop_signal_turns_a_warm_stop_cold(supervisor: Supervisor) -> None:
    supervisor.begin_stop("SIGTERM")
    assert (supervisor.stopping, supervisor.stop_phase) == ("warm", "workers")
    supervisor.begin_stop("SIGINT")
    assert (supervisor.stopping, supervisor.stop_phase) == ("cold", "cold")


def test_warm_stop_goes_workers_then_writer_then_the_rest(supervisor: Supervisor, clock: Clock) -> None:
    supervisor.begin_stop("SIGTERM")
    writer = child(supervisor, "writer")
    start(supervisor, writer, clock, boots=True)
    supervisor.advance_shutdown()  # no worker alive: on to the writer
    assert supervisor.stop_phase == "writer"
    writer.pid = None
    supervisor.advance_shutdown()
    assert supervisor.stop_phase == "rest"
    supervisor.advance_shutdown()
    assert supervisor.finished()
