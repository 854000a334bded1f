"""The receiver's HTTP server on real loopback sockets: limits, the read deadline, a shared port."""

from __future__ import annotations

import http.client
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest

from kick_monitor.webhook_server import HttpServer


def echo_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    body = environ["wsgi.input"].read()
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]


def make(port: int = 0, **kwargs: Any) -> HttpServer:
    options: dict[str, Any] = {"threads": 2, "max_connections": 20, "read_timeout": 1.0, "idle_timeout": 30,
                               "max_body": 1024, **kwargs}
    server = HttpServer(echo_app, "127.0.0.1", port, **options)
    server.start()
    return server


@pytest.fixture
def server() -> Iterator[HttpServer]:
    srv = make()
    yield srv
    srv.close()


def request(port: int, body: bytes) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("POST", "/", body=body)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_bodies_are_passed_through_and_bounded(server: HttpServer) -> None:
    assert request(server.port, b"x" * 1024) == (200, b"x" * 1024)
    assert request(server.port, b"x" * 1025)[0] == 413


def test_keep_alive_serves_several_requests_on_one_connection(server: HttpServer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    for n in range(3):
        conn.request("POST", "/", body=str(n).encode())
        resp = conn.getresponse()
        assert (resp.status, resp.read()) == (200, str(n).encode())
    conn.close()


def test_a_request_trickling_past_the_read_deadline_is_cut_off(server: HttpServer) -> None:
    slow = socket.create_connection(("127.0.0.1", server.port))
    slow.settimeout(0.3)
    began = time.monotonic()
    slow.sendall(b"POST / HTTP/1.1\r\nHost: x\r\n")
    closed = False
    while not closed and time.monotonic() - began < 5:
        try:
            slow.sendall(b"X-More: 1\r\n")  # never idle: waitress's own idle timeout would not fire
            closed = slow.recv(100) == b""
        except TimeoutError:
            continue
        except OSError:
            closed = True
    slow.close()
    assert closed and time.monotonic() - began < 3  # read_timeout 1 s (+ the 0.5 s check)
    assert request(server.port, b"ok") == (200, b"ok")


def test_two_receivers_of_one_host_share_the_port(server: HttpServer) -> None:
    second = make(server.port)  # another process tree (per-shard units) with the same configuration
    try:
        assert second.port == server.port
        assert request(server.port, b"hi") == (200, b"hi")
    finally:
        second.close()
