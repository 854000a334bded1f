"""Fixtures of the fault suite: a simulator with a known secret, services that are checked for it.

`services(**settings)` makes a `FaultService` (`kick-monitor run` against the simulator and
this test's database); at teardown every one still running is stopped, and its whole log
is searched for the client secret. On failure the log's tail is printed.
At the end of the run the measured recovery times are printed as a table (and written as
JSON to $KICK_MONITOR_FAULT_REPORT when set).
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any, Protocol

import psycopg2.extensions
import pytest

from kick_monitor.database import connect
from kick_sim import SimConfig, Simulator
from tests.faults.faultkit import RECOVERIES, SECRET, FaultService, assert_clean, make_env


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"report_{report.when}", report)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not RECOVERIES:
        return
    terminalreporter.section("fault recovery times (this run)")
    for r in RECOVERIES:
        terminalreporter.write_line(f"{r.fault:<58} {r.seconds:>8.2f} s  {r.detail}")
    target = os.environ.get("KICK_MONITOR_FAULT_REPORT")
    if target:
        Path(target).write_text(json.dumps([vars(r) for r in RECOVERIES], indent=1) + "\n")


@pytest.fixture
def sim_config(request: pytest.FixtureRequest) -> SimConfig:
    """The suite's simulator (tests/conftest.py `sim` runs it): the known secret, a seed per test."""
    seed = zlib.crc32(request.node.nodeid.encode())
    return SimConfig(port=0, http_port=0, control_port=0, seed=seed, client_secret=SECRET)


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg2.extensions.connection]:
    """The test's own session, named so that killing "kick-monitor*" sessions spares it."""
    connection = connect(database_url, application_name="fault-test")
    try:
        yield connection
    finally:
        connection.close()


class ServiceFactory(Protocol):
    def __call__(
        self, *, database_url: str | None = None, data_dir: Path | None = None, umask: int | None = None,
        **settings: str,
    ) -> FaultService: ...


@pytest.fixture
def services(
    request: pytest.FixtureRequest, sim: Simulator, tmp_path: Path
) -> Iterator[ServiceFactory]:
    made: list[FaultService] = []

    def make(
        *, database_url: str | None = None, data_dir: Path | None = None, umask: int | None = None,
        **settings: str,
    ) -> FaultService:
        url = database_url or request.getfixturevalue("database_url")
        env = make_env(sim, url, data_dir or tmp_path / "data", **settings)
        service = FaultService(env, tmp_path / f"service-{len(made)}.log", umask=umask)
        made.append(service)
        return service

    yield make
    for service in made:
        if service.proc is None:
            continue
        if service.proc.poll() is None:
            service.stop()
        else:
            service.kill_leftovers()
    failed = any(getattr(getattr(request.node, f"report_{when}", None), "failed", False) for when in ("setup", "call"))
    for service in made:
        if service.proc is None:
            continue
        text = service.log_text()
        if failed:
            tail = "\n".join(text.splitlines()[-80:])
            print(f"\n----- {service.log_path.name} (last 80 lines) -----\n{tail}")
        assert_clean(text, f"the log of {service.log_path.name}")
