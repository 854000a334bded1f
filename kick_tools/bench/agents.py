"""The helper processes a benchmark starts besides the service and the simulator.

    python -m kick_tools.bench.agents ROLE --out result.json [options]

- `writer`: the real `BatchWriter` (or `compare.NaiveWriter`) alone, on its own listening
  socket, recording each change's commit time minus its hand-over time.
- `feeder`: a stand-in for a shard worker: `handoff.ChangeSender` sending transitions at a
  paced rate (bursts as one batch, as a worker reading a burst would) or as fast as an
  in-flight window allows.
- `client`: our `PusherSession` + `StatusTracker` (the worker's receive path) or Pysher,
  subscribed to a list of channels, sampling its own CPU and frame count every 0.25 s.
- `poller`: `compare.RestPoller`.

Each writes `--out` (JSON) when it ends — on SIGTERM for the long-running ones — and
creates `<out>.ready` once it is ready, so the harness never has to guess.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from kick_monitor.messages import StatusChange
from kick_tools.bench.compare import NaiveWriter, PysherClient, RestPoller, self_cpu

SAMPLE_EVERY = 0.25


def write_json(path: Path, data: dict[str, Any]) -> None:
    partial = path.with_suffix(".tmp")
    partial.write_text(json.dumps(data))
    os.replace(partial, path)


def mark_ready(out: Path) -> None:
    out.with_suffix(".ready").write_text(str(os.getpid()))


class StopFlag:
    """SIGTERM/SIGINT set it; loops poll it."""

    def __init__(self) -> None:
        self.event = threading.Event()
        signal.signal(signal.SIGTERM, lambda s, f: self.event.set())
        signal.signal(signal.SIGINT, lambda s, f: self.event.set())

    def __bool__(self) -> bool:
        return self.event.is_set()


# -- writer ----------------------------------------------------------------------------------


def run_writer(args: argparse.Namespace) -> int:
    """The writer alone: ours (group commit) or the naive one, fed through the real hand-off."""
    from kick_monitor.config import load_settings
    from kick_monitor.handoff import bind_listener
    from kick_monitor.logsetup import configure_logging
    from kick_monitor.role import standalone_context
    from workers.writer import BatchWriter

    latencies: list[float] = []
    first_received: list[float] = []
    last_commit = [0.0]

    def record(change: StatusChange, committed: float) -> None:
        if not first_received:
            first_received.append(change.received_at)
        latencies.append((committed - change.received_at) * 1000)
        last_commit[0] = committed

    def record_all(changes: Sequence[StatusChange], committed: float) -> None:
        for change in changes:
            record(change, committed)

    listener = bind_listener(args.socket)
    settings = load_settings(cli={"log_format": "json", "log_level": "WARNING", "data_dir": Path(args.spool).parent},
                             environ={})
    configure_logging(settings, role="writer")
    writer: Any
    if args.mode == "naive":
        writer = NaiveWriter(args.database_url, listener, on_commit=record)
        run = writer.run
    else:
        ctx, _supervisor_end = standalone_context(
            "writer", settings, args.database_url, listener=listener, data_dir=Path(args.spool).parent
        )
        writer = BatchWriter(ctx, on_commit=record_all)
        run = writer.main
    mark_ready(Path(args.out))
    try:
        code = int(run())
    finally:
        write_json(Path(args.out), {
            "mode": args.mode, "committed": writer.committed, "latencies_ms": latencies,
            "first_received": first_received[0] if first_received else None, "last_commit": last_commit[0],
        })
    return code


# -- feeder ----------------------------------------------------------------------------------


def run_feeder(args: argparse.Namespace) -> int:
    """Send `--count` transitions over `--channels` (paced by `--rate`, or window-limited)."""
    from kick_monitor.handoff import ChangeSender

    stop = StopFlag()
    channels = json.loads(Path(args.channels).read_text())[args.index :: args.feeders]
    status: dict[int, str] = {}
    stream: dict[int, int] = {}
    sender = ChangeSender(args.socket, sender=f"feeder-{args.index}")
    made = 0

    def make(count: int) -> list[StatusChange]:
        nonlocal made
        now, mono = time.time(), time.monotonic()
        out = []
        for _ in range(count):
            channel = channels[made % len(channels)]
            new = "offline" if status.get(channel) == "online" else "online"
            status[channel] = new
            if new == "online":
                stream[channel] = 100_000_000 + made  # a new broadcast; its offline names the same one
            out.append(StatusChange(
                f"w:{args.index}:{made}", channel, new, "pusher",  # type: ignore[arg-type]
                "App\\Events\\StreamerIsLive" if new == "online" else "App\\Events\\StopStreamBroadcast",
                stream[channel], None, now if new == "online" else None, now, mono, args.index,
                1, made + 1,  # generation, seq: each channel has one feeder, so its seq only grows
                channel,  # streamer id: the bench's streamers are seeded with id == channel id
            ))
            made += 1
        return out

    def service(timeout: float) -> None:
        fd = sender.fileno()
        if fd is None:
            sender.service(time.monotonic())
            time.sleep(min(timeout, 0.01))
            return
        wlist = [fd] if sender.wants_write else []
        readable, writable, _ = select.select([fd], wlist, [], max(0.0, timeout))
        sender.service(time.monotonic(), bool(readable), bool(writable))

    deadline = time.monotonic() + 10
    while not sender.connected and time.monotonic() < deadline:
        service(0.05)
    mark_ready(Path(args.out))
    started = time.monotonic()
    first_send = time.time()
    if args.rate > 0:
        gap = args.burst / args.rate
        due = started
        while made < args.count and not stop:
            now = time.monotonic()
            while due <= now and made < args.count:
                sender.send(make(min(args.burst, args.count - made)))
                due += gap
            service(max(0.0, due - time.monotonic()))
    else:
        while made < args.count and not stop:
            if sender.unacked_changes < args.window:
                sender.send(make(min(args.batch, args.count - made)))
                service(0.0)
            else:
                service(0.05)
    sent_done = time.time()
    deadline = time.monotonic() + args.drain
    while sender.unacked and time.monotonic() < deadline and not stop:
        service(0.05)
    write_json(Path(args.out), {
        "sent": made, "unacked": sender.unacked_changes, "first_send": first_send, "sent_done": sent_done,
        "last_ack": time.time(), "reconnects": sender.reconnects,
    })
    sender.close()
    return 0


# -- clients ----------------------------------------------------------------------------------


def run_client(args: argparse.Namespace) -> int:
    """Subscribe `--channels`, receive until SIGTERM; timeline of (wall, frames, cpu) for the harness."""
    stop = StopFlag()
    channels: list[str] = json.loads(Path(args.channels).read_text())
    timeline: list[tuple[float, int, float]] = []
    result: dict[str, Any]
    if args.impl == "pysher":
        client = PysherClient(args.url, channels)
        client.start()
        mark_ready(Path(args.out))
        while not stop:
            timeline.append((time.time(), client.frames, self_cpu()))
            stop.event.wait(SAMPLE_EVERY)
        client.stop()
        result = {"frames": client.frames, "detections": client.detections,
                  "connection_events": client.connection_events}
    else:
        result = _run_our_client(args.url, channels, stop, timeline, lambda: mark_ready(Path(args.out)))
    result.update(impl=args.impl, timeline=timeline)
    write_json(Path(args.out), result)
    return 0


def _run_our_client(url: str, channels: list[str], stop: StopFlag, timeline: list[tuple[float, int, float]],
                    ready: Callable[[], None]) -> dict[str, Any]:
    """The shard worker's receive path, nothing else: PusherSession → parse_frame → StatusTracker."""
    from kick_monitor.events import LIFECYCLE_EVENTS, EventStats, StatusTracker
    from kick_monitor.messages import StreamerRef
    from kick_monitor.pusher import PusherSession

    ids = sorted({int(name.split("_", 1)[1]) for name in channels if name.startswith("channel_")})
    stats = EventStats(0)
    tracker = StatusTracker([StreamerRef(i, f"s{i}", i, None, "offline") for i in ids], stats=stats)
    session = PusherSession(url, app_events=LIFECYCLE_EVENTS, event_stats=stats)
    session.subscribe(channels)
    detections: list[tuple[str, str, int | None, float]] = []
    connection_events: list[tuple[float, str]] = []
    generation = 0
    attempts = 0
    next_sample = 0.0
    ready()
    while not stop:
        now = time.monotonic()
        if now >= next_sample:
            timeline.append((time.time(), session.stats.frames, self_cpu()))
            next_sample = now + SAMPLE_EVERY
        fd = session.fileno()
        wait = min(session.next_timeout(now), max(0.0, next_sample - now), 0.25)
        try:
            readable = bool(select.select([fd] if fd is not None else [], [], [], wait)[0])
        except InterruptedError:
            continue
        connected_before = session.connected
        for ev in session.service(time.monotonic(), readable):
            change = tracker.apply(ev)
            if isinstance(change, StatusChange):
                detections.append((ev.channel or "", change.status, change.livestream_id, change.received_at))
        while attempts < session.stats.connect_attempts:
            attempts += 1
            connection_events.append((time.time(), "attempt"))
        if session.generation != generation:
            generation = session.generation
            connection_events.append((time.time(), "established"))
        elif connected_before and not session.connected:
            connection_events.append((time.time(), "close"))
    session.close()
    return {
        "frames": session.stats.frames, "detections": detections, "connection_events": connection_events,
        "connect_attempts": session.stats.connect_attempts, "reconnects": session.stats.reconnects,
    }


# -- poller ------------------------------------------------------------------------------------


def run_poller(args: argparse.Namespace) -> int:
    stop = StopFlag()
    slugs: list[str] = json.loads(Path(args.slugs).read_text())
    poller = RestPoller(args.api_base_url, args.token_url, args.client_id, args.client_secret, slugs,
                        interval=args.interval, batch=args.batch)
    poller.poll_once()  # the baseline: nothing is "detected" from the first answer
    mark_ready(Path(args.out))
    thread = threading.Thread(target=poller.run, daemon=True)
    thread.start()
    stop.event.wait()
    poller.stop_event.set()
    thread.join(30)
    write_json(Path(args.out), {
        "detections": poller.detections, "requests": poller.requests, "polls": poller.polls,
        "interval": args.interval, "batch": args.batch,
    })
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m kick_tools.bench.agents", description=__doc__)
    roles = parser.add_subparsers(dest="role", required=True)
    writer = roles.add_parser("writer")
    writer.add_argument("--database-url", required=True)
    writer.add_argument("--socket", required=True)
    writer.add_argument("--spool", required=True)
    writer.add_argument("--mode", choices=("batched", "naive"), default="batched")
    feeder = roles.add_parser("feeder")
    feeder.add_argument("--socket", required=True)
    feeder.add_argument("--channels", required=True, help="JSON list of channel ids")
    feeder.add_argument("--index", type=int, default=0)
    feeder.add_argument("--feeders", type=int, default=1)
    feeder.add_argument("--count", type=int, required=True)
    feeder.add_argument("--rate", type=float, default=0.0, help="changes/s; 0 = as fast as the window allows")
    feeder.add_argument("--burst", type=int, default=1)
    feeder.add_argument("--batch", type=int, default=500)
    feeder.add_argument("--window", type=int, default=20_000)
    feeder.add_argument("--drain", type=float, default=120.0)
    client = roles.add_parser("client")
    client.add_argument("--impl", choices=("ours", "pysher"), required=True)
    client.add_argument("--url", required=True)
    client.add_argument("--channels", required=True, help="JSON list of channel names")
    poller = roles.add_parser("poller")
    poller.add_argument("--api-base-url", required=True)
    poller.add_argument("--token-url", required=True)
    poller.add_argument("--client-id", required=True)
    poller.add_argument("--client-secret", required=True)
    poller.add_argument("--slugs", required=True)
    poller.add_argument("--interval", type=float, default=60.0)
    poller.add_argument("--batch", type=int, default=50)
    for sub in (writer, feeder, client, poller):
        sub.add_argument("--out", required=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    runners: dict[str, Callable[[argparse.Namespace], int]] = {
        "writer": run_writer, "feeder": run_feeder, "client": run_client, "poller": run_poller,
    }
    return runners[args.role](args)


if __name__ == "__main__":
    sys.exit(main())
