"""Run inside a private network namespace (`unshare -n` or `-Urn`) by test_database_keepalive.py.

A LISTEN connection to the test PostgreSQL goes through a TCP proxy on this namespace's own
loopback (the proxy forwards to the server's unix socket, which namespaces do not separate).
Once a notification has proved the path works, the proxy stops forwarding and the loopback
goes down: the peer is now silent in the way a crashed host or a cut link is — no FIN, no
RST, no ACK. (A proxy that only stops reading is not enough: its kernel would still
acknowledge every keepalive probe.) One connection has `database.connect`'s settings,
shortened; a control connection has keepalives off. Prints one JSON line: when each noticed.
"""

from __future__ import annotations

import argparse
import json
import select
import socket
import subprocess
import threading
import time

import psycopg2
import psycopg2.extensions

from kick_monitor.database import connect


class SilentProxy:
    """127.0.0.1:<free port> → a unix socket; `go_silent()` stops forwarding, sockets stay open."""

    def __init__(self, unix_path: str) -> None:
        self.unix_path = unix_path
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.silent = threading.Event()
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def go_silent(self) -> None:
        self.silent.set()

    def _accept(self) -> None:
        while True:
            client, _ = self.listener.accept()
            server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            server.connect(self.unix_path)
            self.held += [client, server]
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        peers = {a: b, b: a}
        while not self.silent.is_set():
            readable, _, _ = select.select(list(peers), [], [], 0.1)
            for sock in readable:
                if self.silent.is_set():
                    break
                data = sock.recv(65536)
                if not data:
                    return
                peers[sock].sendall(data)


def wait_for_notification(conn: psycopg2.extensions.connection, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not conn.notifies:
        if time.monotonic() > deadline:
            raise SystemExit("no notification through the proxy")
        select.select([conn], [], [], 0.2)
        conn.poll()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--unix-socket", required=True)
    parser.add_argument("--database", required=True)
    parser.add_argument("--direct-url", required=True)
    parser.add_argument("--bound", type=float, required=True)
    args = parser.parse_args()
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    proxy = SilentProxy(args.unix_socket)
    url = f"postgresql://postgres@127.0.0.1:{proxy.port}/{args.database}"
    # idle 1 s + 2 probes 1 s apart: ~3 s; production: 10 + 3 x 5 = 25 s
    watched = connect(url, autocommit=True, keepalives_idle=1, keepalives_interval=1, keepalives_count=2,
                      tcp_user_timeout_ms=3000)
    control = psycopg2.connect(url, keepalives=0)
    control.set_isolation_level(psycopg2.extensions.ISOLATION_LEVEL_AUTOCOMMIT)
    for conn in (watched, control):
        with conn.cursor() as cur:
            cur.execute("LISTEN dead_peer")
    notifier = psycopg2.connect(args.direct_url)
    notifier.set_isolation_level(psycopg2.extensions.ISOLATION_LEVEL_AUTOCOMMIT)
    with notifier.cursor() as cur:
        cur.execute("NOTIFY dead_peer, 'through the proxy'")
    for conn in (watched, control):
        wait_for_notification(conn, 10)

    proxy.go_silent()
    subprocess.run(["ip", "link", "set", "lo", "down"], check=True)
    started = time.monotonic()
    noticed: dict[str, float | None] = {"watched": None, "control": None}
    errors: dict[str, str] = {}
    conns = {"watched": watched, "control": control}
    while time.monotonic() - started < args.bound:
        waiting = [conn for name, conn in conns.items() if noticed[name] is None]
        if not waiting:
            break
        select.select(waiting, [], [], 0.2)
        for name, conn in conns.items():
            if noticed[name] is not None:
                continue
            try:
                conn.poll()
            except psycopg2.OperationalError as exc:
                noticed[name] = round(time.monotonic() - started, 2)
                errors[name] = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    print(json.dumps({"noticed_after": noticed, "errors": errors}), flush=True)


if __name__ == "__main__":
    main()
