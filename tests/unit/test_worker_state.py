"""Worker → planner state over the real assignment socket (issue 17: connection state in `cluster status`)."""

from __future__ import annotations

import select
import time
from pathlib import Path

from kick_monitor.assignment import AssignmentClient, AssignmentServer
from kick_monitor.framing import bind_listener
from kick_monitor.messages import WorkerState


def pump(server: AssignmentServer, client: AssignmentClient, until: float = 2.0) -> None:
    deadline = time.monotonic() + until
    while time.monotonic() < deadline and not server.states:
        client.service(time.monotonic())
        readable, writable, _ = select.select(server.filenos(), server.writers(), [], 0.02)
        server.serve(readable, writable)


def test_the_planner_learns_each_workers_state_and_again_after_a_reconnection(tmp_path: Path) -> None:
    address = str(tmp_path / "planner.sock")
    listener = bind_listener(address)
    server = AssignmentServer(listener)
    client = AssignmentClient(address, 3)
    try:
        client.tell_state(WorkerState(3, False, 0))  # before connecting: told after the Hello
        pump(server, client)
        assert server.states == {3: WorkerState(3, False, 0)}
        client.tell_state(WorkerState(3, True, 40))
        server.states.clear()
        pump(server, client)
        assert server.states == {3: WorkerState(3, True, 40)}
        server.close()  # the planner restarts: the new one hears the last state again
        server.states.clear()
        server = AssignmentServer(listener)
        client.close()
        pump(server, client)
        assert server.states == {3: WorkerState(3, True, 40)}
    finally:
        client.close()
        server.close()
        listener.close()
