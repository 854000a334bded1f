"""Measure the simulator under the target load, with the simulator in its own process.

    python -m kick_sim.loadcheck --streamers 100000 --connections 16 --rate 5000 --runs 3

Per run: start `python -m kick_sim.cli`, subscribe channel.{id} and channel_{id} of
every streamer over raw websocket-client sockets, flip at --rate for --duration seconds,
and report subscription time, lifecycle frames/s delivered, send->receive latency and the
simulator's CPU (from /proc). Prints one JSON object per run and the medians.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import requests
import websocket

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def start_simulator(
    args: argparse.Namespace, seed: int, workdir: str
) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    ready = Path(workdir) / f"ready-{seed}.json"
    command = [
        sys.executable, "-m", "kick_sim.cli", "--streamers", str(args.streamers),
        "--lifecycle-channels", args.lifecycle_channels, "--seed", str(seed), "--ready-file", str(ready),
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not ready.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError("simulator did not become ready")
        time.sleep(0.05)
    return process, json.loads(ready.read_text())


class Reader(threading.Thread):
    """Owns one raw socket: subscribes its share of channels, then records lifecycle frames."""

    def __init__(self, url: str, channels: list[str]) -> None:
        super().__init__(daemon=True)
        self.ws = websocket.create_connection(url, timeout=0.5, skip_utf8_validation=True)
        self.ws.recv()  # pusher:connection_established
        self.channels = channels
        self.subscribed = threading.Event()
        self.stopping = threading.Event()
        self.frames: list[tuple[float, bytes]] = []

    def run(self) -> None:
        wire = b"".join(
            websocket.ABNF.create_frame(
                orjson.dumps({"event": "pusher:subscribe", "data": {"auth": "", "channel": name}}),
                websocket.ABNF.OPCODE_TEXT,
            ).format()
            for name in self.channels
        )
        assert self.ws.sock is not None
        sender = threading.Thread(target=self.ws.sock.sendall, args=(wire,), daemon=True)
        sender.start()
        acks = 0
        while not self.stopping.is_set():
            try:
                _, data = self.ws.recv_data()
            except websocket.WebSocketTimeoutException:
                continue
            if b"subscription_succeeded" in data:
                acks += 1
                if acks == len(self.channels):
                    self.subscribed.set()
            elif b"App\\\\Events" in data:
                self.frames.append((time.time(), data))
        sender.join()
        self.ws.close()


def latencies(frames: list[tuple[float, bytes]], truth: dict[tuple[int, str], float]) -> list[float]:
    """Receive wall time minus the simulator's sent_wall for each lifecycle frame."""
    result = []
    for received, data in frames:
        frame = orjson.loads(data)
        sent = truth.get((orjson.loads(frame["data"])["livestream"]["id"], frame["event"]))
        if sent is not None:
            result.append(received - sent)
    return result


def run_once(args: argparse.Namespace, seed: int, workdir: str) -> dict[str, Any]:
    process, urls = start_simulator(args, seed, workdir)
    control = urls["control_url"]
    try:
        streamers = requests.get(f"{control}/control/streamers", timeout=60).json()["streamers"]
        names = [f"channel{sep}{s['channel_id']}" for s in streamers for sep in (".", "_")]
        readers = [Reader(urls["pusher_url"], names[i :: args.connections]) for i in range(args.connections)]
        started, cpu_start = time.monotonic(), cpu_seconds(process.pid)
        for reader in readers:
            reader.start()
        for reader in readers:
            if not reader.subscribed.wait(120):
                raise RuntimeError("subscriptions were not all acknowledged")
        subscribe_seconds = time.monotonic() - started
        subscribe_cpu = cpu_seconds(process.pid) - cpu_start
        stats = requests.get(f"{control}/control/stats", timeout=10).json()
        cpu_before, flip_started = cpu_seconds(process.pid), time.monotonic()
        requests.post(f"{control}/control/flip", json={"rate": args.rate, "duration": args.duration}, timeout=10)
        requests.post(f"{control}/control/flip/wait", json={"timeout": args.duration + 30}, timeout=args.duration + 40)
        flip_seconds = time.monotonic() - flip_started
        cpu_used = cpu_seconds(process.pid) - cpu_before
        expected = requests.get(f"{control}/control/stats", timeout=10).json()["frames_sent"].get("lifecycle", 0)
        deadline = time.monotonic() + 10
        while sum(len(r.frames) for r in readers) < expected and time.monotonic() < deadline:
            time.sleep(0.05)
        for reader in readers:
            reader.stopping.set()
        for reader in readers:
            reader.join(10)
        truth_lines = requests.get(f"{control}/control/truth", timeout=60).content.splitlines()
        truth = {(row["livestream_id"], row["event"]): row["sent_wall"] for row in map(orjson.loads, truth_lines)}
        frames = [frame for reader in readers for frame in reader.frames]
        first = min(received for received, _ in frames)
        last = max(received for received, _ in frames)
        lags = sorted(latencies(frames, truth))
        return {
            "subscriptions": stats["subscriptions"],
            "connections": stats["connections"],
            "subscribe_seconds": round(subscribe_seconds, 2),
            "sim_cpu_seconds_subscribing": round(subscribe_cpu, 2),
            "frames_expected": expected,
            "frames_received": len(frames),
            "frames_per_second": round(len(frames) / max(last - first, 1e-9)),
            "sim_cpu_percent": round(100 * cpu_used / flip_seconds, 1),
            "latency_ms_p50": round(1000 * lags[len(lags) // 2], 2),
            "latency_ms_p99": round(1000 * lags[int(len(lags) * 0.99)], 2),
        }
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kick_sim.loadcheck", description=__doc__)
    parser.add_argument("--streamers", type=int, default=100_000)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rate", type=float, default=5000.0, help="flips per second")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of flipping per run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--lifecycle-channels", choices=("dot", "underscore", "both"), default="both")
    args = parser.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory() as workdir:
        for run in range(args.runs):
            result = run_once(args, seed=run + 1, workdir=workdir)
            print(json.dumps(result), flush=True)
            results.append(result)
    medians = {key: statistics.median(r[key] for r in results) for key in results[0]}
    print(json.dumps({"median_of": len(results), **medians}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
