"""The measured tree of `kick_tools.bench.memory_floor` (see there): a supervisor that imports the
image, freezes, and forks bare library loops in the product's process shape.

Kept apart from the driver so that the tree's image holds only what it names here (stdlib,
psycopg2, orjson; with `product`, the product coordinator's pre-fork imports): nothing of the
benchmark's own (websockets server, multiprocessing, the report).

    python -m kick_tools.bench.floor_tree URL WS_URL PROCESSES product|libraries
"""

from __future__ import annotations

import gc
import itertools
import json
import os
import pickle
import select
import signal
import socket
import struct
import sys
import time
from typing import Any

import orjson
import psycopg2

from kick_tools.bench.floor_statements import FLOOR_BATCH_SQL

LIVE, OFFLINE = "App\\Events\\StreamerIsLive", "App\\Events\\StopStreamBroadcast"
LENGTH = struct.Struct("!I")


def send_message(sock: socket.socket, message: object) -> None:
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    sock.sendall(LENGTH.pack(len(body)) + body)


def bare_writer(url: str, sock: socket.socket) -> None:
    """Batches from the worker → one UPDATE + INSERT statement and a notification a change → COMMIT → ack."""
    conn = psycopg2.connect(url)
    reader = sock.makefile("rb")
    sequence = itertools.count(1)
    while True:
        head = reader.read(LENGTH.size)
        if len(head) < LENGTH.size:
            return
        changes = pickle.loads(reader.read(LENGTH.unpack(head)[0]))
        with conn.cursor() as cur:
            seqs = [next(sequence) for _ in changes]
            cur.execute(FLOOR_BATCH_SQL, {
                "streamer": [c[0] for c in changes], "status": [c[1] for c in changes],
                "sent": [c[2] for c in changes], "seq": seqs, "change_id": [f"floor-{s}" for s in seqs]})
            for change in changes:
                cur.execute("SELECT pg_notify('kick_monitor_status', %s)", (f"{change[0]}:{change[1]}",))
        conn.commit()
        sock.sendall(b"A")


def bare_worker(ws_url: str, sock: socket.socket) -> None:
    """Frames → a status dict → each change pickled to the writer, acknowledged before the next read."""
    import websocket

    ws = websocket.create_connection(ws_url, skip_utf8_validation=True)
    statuses: dict[int, str] = {}
    while True:
        frame = orjson.loads(ws.recv())
        event = frame.get("event")
        if event not in (LIVE, OFFLINE):  # noise and the end marker: dropped unparsed, as the product drops them
            continue
        data = orjson.loads(frame["data"])
        streamer = int(data["livestream"]["channel_id"])
        status = "online" if event == LIVE else "offline"
        if statuses.get(streamer) != status:
            statuses[streamer] = status
            send_message(sock, [(streamer, status, float(data["livestream"]["created_at"]))])
            if sock.recv(1) != b"A":
                return


def bare_planner(url: str) -> None:
    """LISTEN for list changes; the streamer list re-read into a dict every 5 s."""
    conn = psycopg2.connect(url)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("LISTEN kick_monitor_streamers")
    while True:
        with conn.cursor() as cur:
            cur.execute("SELECT id, status FROM kick_monitor.streamers")
            listed = {row[0]: row[1] for row in cur.fetchall()}  # held until the next read, as a planner holds its list
        deadline = time.monotonic() + 5.0
        while (left := deadline - time.monotonic()) > 0:
            if select.select([conn], [], [], left)[0]:
                conn.poll()
                conn.notifies.clear()
        del listed  # freed before the next read builds its replacement


def run_tree(url: str, ws_url: str, processes: int, image: str) -> None:
    """The supervisor: import the image, freeze, fork the roles, print their pids, wait for SIGTERM."""
    if image == "product":
        import workers.coordinator  # noqa: F401  (the product's image before its first fork)
        from kick_monitor.preload import preload_role_modules

        preload_role_modules()
    else:
        import websocket  # noqa: F401
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGCHLD})
    to_writer, writer_end = socket.socketpair()
    gc.collect()
    gc.freeze()
    roles: list[tuple[str, Any, tuple[Any, ...], socket.socket | None]] = [
        ("writer", bare_writer, (url, writer_end), to_writer),
        ("worker 0", bare_worker, (ws_url, to_writer), writer_end),
    ]
    if processes >= 4:
        roles.append(("planner", bare_planner, (url,), None))
    pids = {"coordinator": os.getpid()}
    for slot, loop, args, unused in roles:
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGCHLD})
                if unused is not None:
                    unused.close()
                loop(*args)
            except BaseException:  # a floor role that fails says so and exits
                import traceback

                traceback.print_exc()
                code = 1
            finally:
                os._exit(code)
        pids[slot] = pid
    print(json.dumps(pids), flush=True)
    bench = os.getppid()
    while os.getppid() == bench:  # a bench that died without stopping us: stop too, leave nothing behind
        info = signal.sigtimedwait({signal.SIGTERM, signal.SIGCHLD}, 1.0)
        if info is not None and info.si_signo == signal.SIGTERM:
            break
    for slot, pid in pids.items():
        if slot != "coordinator":
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


if __name__ == "__main__":
    run_tree(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4])
