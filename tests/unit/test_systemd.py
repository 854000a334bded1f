"""kick_monitor.systemd: sd_notify and the watchdog, against a real datagram socket."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from kick_monitor.systemd import Watchdog, sd_notify


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify.sock"))
    yield sock
    sock.close()


def received(sock: socket.socket) -> list[str]:
    messages = []
    while True:
        try:
            messages.append(sock.recv(4096).decode())
        except BlockingIOError:
            return messages


@pytest.mark.parametrize(
    ("environ", "interval"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "30000000"}, 30.0),
        ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}, 2.0),
        ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}, None),  # meant for another process
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
    ],
)
def test_interval_from_the_environment(environ: dict[str, str], interval: float | None) -> None:
    watchdog = Watchdog.from_environment(environ)
    assert watchdog.interval == interval and watchdog.enabled is (interval is not None)


def test_pings_at_most_every_half_interval(notify_socket: socket.socket) -> None:
    watchdog = Watchdog(2.0)
    sent = [watchdog.ping(now) for now in (100.0, 100.5, 100.99, 101.0, 101.5, 102.2)]
    assert sent == [True, False, False, True, False, True]
    assert received(notify_socket) == ["WATCHDOG=1"] * 3


def test_without_systemd_nothing_is_sent(notify_socket: socket.socket, monkeypatch: pytest.MonkeyPatch) -> None:
    assert Watchdog(None).ping(100.0) is False
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert Watchdog(2.0).ping(100.0) is False and sd_notify("READY=1") is False
    assert received(notify_socket) == []
