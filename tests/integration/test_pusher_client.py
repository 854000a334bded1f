"""PusherSession against the in-process Kick simulator: real sockets, real server.

Each test drives the session the way a worker does (select() on its socket, `service()`
when readable or when `next_timeout()` runs out); every wait is bounded.
"""

from __future__ import annotations

import contextlib
import select
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
from websockets.sync.server import ServerConnection, serve

from kick_monitor.backoff import CloseAction, ReconnectPolicy
from kick_monitor.events import (
    LIFECYCLE_EVENTS,
    STOP_STREAM_BROADCAST,
    STREAMER_IS_LIVE,
    AppEvent,
    StatusTracker,
    TitleUpdate,
)
from kick_monitor.messages import StatusChange, StreamerRef
from kick_monitor.pusher import PusherFatalError, PusherSession
from kick_sim import SimConfig, SimStreamer, Simulator
from kick_sim.malformed import MALFORMED_KINDS


class Env:
    """Simulators and sessions of one test; sessions close first, so teardown is quick."""

    def __init__(self) -> None:
        self.sims: list[Simulator] = []
        self.sessions: list[PusherSession] = []

    def sim(self, **options: object) -> Simulator:
        sim = Simulator(SimConfig(port=0, seed=1, **options))  # type: ignore[arg-type]
        sim.start()
        self.sims.append(sim)
        return sim

    def session(self, url: str, **options: object) -> PusherSession:
        session = PusherSession(url, **options)  # type: ignore[arg-type]
        self.sessions.append(session)
        return session

    def connected(
        self, sim: Simulator, channels: list[str], **options: object
    ) -> PusherSession:
        """A session subscribed to `channels`, once the simulator holds all of them and the session has
        read every answer (a test counting frames from here then counts only its own)."""
        session = self.session(sim.pusher_url, **options)
        session.subscribe(channels)
        assert pump(session, 5, lambda: sim.subscription_count() == len(set(channels)) and not session.awaiting())
        return session

    def close(self) -> None:
        for session in self.sessions:
            session.close()
        for sim in self.sims:
            sim.stop()


@pytest.fixture
def env() -> Iterator[Env]:
    harness = Env()
    yield harness
    harness.close()


def names(streamers: list[SimStreamer]) -> list[str]:
    return [
        n
        for s in streamers
        for n in (f"channel.{s.channel_id}", f"channel_{s.channel_id}")
    ]


def pump(
    session: PusherSession,
    seconds: float,
    until: Callable[[], bool] | None = None,
    events: list[AppEvent] | None = None,
) -> bool:
    """Run the worker loop until `until()` holds (True) or `seconds` pass (False)."""
    deadline = time.monotonic() + seconds
    while True:
        if until is not None and until():
            return True
        now = time.monotonic()
        if now >= deadline:
            return until is None
        wait = max(0.0, min(session.next_timeout(now), deadline - now, 0.02))
        fd = session.fileno()
        if fd is None:
            time.sleep(wait)
            readable = False
        else:
            readable = bool(select.select([fd], [], [], wait)[0])
        got = session.service(time.monotonic(), readable)
        if events is not None:
            events.extend(got)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("ours", "servers", "effective"), [(120, 30, 30), (10, 120, 10)]
)
def test_connects_and_uses_the_smaller_activity_timeout(
    env: Env, ours: float, servers: int, effective: float
) -> None:
    sim = env.sim(activity_timeout=servers)
    session = env.session(sim.pusher_url, activity_timeout=ours)
    assert session.fileno() is None and session.next_timeout(time.monotonic()) == 0.0
    assert pump(session, 5, lambda: session.connected)
    assert session.generation == 1 and session.socket_id and "." in session.socket_id
    assert session.activity_timeout == effective
    assert 0 < session.next_timeout(time.monotonic()) <= effective
    assert sim.connection_count() == 1
    session.close()
    assert session.fileno() is None and session.service(time.monotonic(), False) == []


@pytest.mark.timeout(60)
def test_thousands_of_channels_subscribe_fast(env: Env) -> None:
    sim = env.sim()
    streamers = sim.create_streamers(2000)
    first, later = names(streamers[:1000]), names(streamers[1000:])
    session = env.session(sim.pusher_url)
    session.subscribe(first)  # before connecting: remembered, sent on connect
    start = time.monotonic()
    assert pump(session, 5, lambda: sim.subscription_count() == 2000)
    on_connect = time.monotonic() - start
    start = time.monotonic()
    session.subscribe(later)  # while connected: one write, no waiting for acks
    write = time.monotonic() - start
    assert pump(session, 5, lambda: sim.subscription_count() == 4000)
    while_running = time.monotonic() - start
    assert sim.subscribed_channels() == set(first + later)
    assert on_connect < 2.0 and while_running < 2.0 and write < 0.5, (on_connect, write)
    assert session.generation == 1 and not session.failed_channels


@pytest.mark.timeout(60)
@pytest.mark.parametrize("style", ["subscription_error", "pusher_error"])
def test_subscription_error_keeps_the_socket(env: Env, style: str) -> None:
    sim = env.sim(subscription_error_style=style)
    (streamer,) = sim.create_streamers(1)
    session = env.connected(sim, names([streamer]), app_events=LIFECYCLE_EVENTS)
    session.subscribe(["private-livestream.1", "bad channel!"])
    assert pump(session, 5, lambda: session.stats.subscription_errors == 2)
    if style == "subscription_error":  # pusher:error {code: null} names no channel
        assert set(session.failed_channels) == {"private-livestream.1", "bad channel!"}
    events: list[AppEvent] = []
    sim.set_live(streamer.slug, True)
    assert pump(session, 5, lambda: len(events) == 2, events)
    assert session.generation == 1 and session.stats.connect_attempts == 1


@pytest.mark.timeout(60)
def test_lifecycle_events_arrive_as_app_events(env: Env) -> None:
    sim = env.sim(lifecycle_channels="both", noise_rate=200.0)
    streamers = sim.create_streamers(20)
    a = streamers[3]
    tracker = StatusTracker(
        [
            StreamerRef(i, s.slug, s.channel_id, s.user_id, "offline")
            for i, s in enumerate(streamers)
        ]
    )
    chatrooms = [f"chatrooms.{s.chatroom_id}.v2" for s in streamers]
    session = env.connected(
        sim,
        tracker.channel_names() + chatrooms,
        app_events=LIFECYCLE_EVENTS,
        event_stats=tracker.stats,
    )
    events: list[AppEvent] = []
    sim.set_live(a.slug, True, title="hello")
    assert pump(session, 5, lambda: len(events) == 2, events)
    sim.update_title(a.slug, "new title")
    sim.set_live(a.slug, False)
    assert pump(session, 5, lambda: len(events) == 6, events)
    assert {e.channel for e in events} == {
        f"channel.{a.channel_id}",
        f"channel_{a.channel_id}",
    }
    results = [tracker.apply(e) for e in events]
    changes = [r for r in results if isinstance(r, StatusChange)]
    assert [(c.status, c.event) for c in changes] == [
        ("online", STREAMER_IS_LIVE),
        ("offline", STOP_STREAM_BROADCAST),
    ]
    assert changes[0].title == "hello" and changes[0].channel_id == a.channel_id
    titles = [r for r in results if isinstance(r, TitleUpdate)]
    assert [t.change.title for t in titles] == ["new title"]
    assert all(abs(e.received_at - time.time()) < 10 for e in events)
    assert tracker.stats.malformed == {}
    # the chat noise (200 frames/s), counted unparsed; on a loaded machine the 6 events can all come
    # before the first noise frame, so read on until one did (nothing else may arrive meanwhile)
    assert pump(session, 5, lambda: sum(tracker.stats.ignored.values()) > 0, events)
    assert len(events) == 6


@pytest.mark.timeout(60)
def test_dropped_connection_reconnects_and_resubscribes_everything(
    env: Env,
) -> None:
    sim = env.sim()
    streamers = sim.create_streamers(500)
    channels = names(streamers)
    session = env.connected(sim, channels, app_events=LIFECYCLE_EVENTS)
    assert sim.drop_connections() == 1
    assert pump(session, 10, lambda: session.generation == 2)
    assert pump(session, 5, lambda: sim.subscribed_channels() == set(channels))
    assert session.stats.reconnects == {"connection_lost": 1}
    events: list[AppEvent] = []
    sim.set_live(streamers[-1].slug, True)
    assert pump(session, 5, lambda: len(events) == 2, events)


@pytest.mark.timeout(60)
def test_4200_reconnects_fast_and_resubscribes(env: Env) -> None:
    sim = env.sim()
    channels = names(sim.create_streamers(300))
    session = env.connected(sim, channels)
    start = time.monotonic()
    sim.send_pusher_error(code=4200)
    assert pump(session, 5, lambda: session.generation == 2)
    assert time.monotonic() - start < 1.0  # 0.1-0.2 s jittered floor, then connect
    assert pump(session, 5, lambda: sim.subscribed_channels() == set(channels))
    assert session.stats.last_close_code == 4200


@pytest.mark.timeout(60)
def test_4100_backs_off_at_least_a_second(env: Env) -> None:
    sim = env.sim()
    session = env.connected(sim, names(sim.create_streamers(10)))
    sim.send_pusher_error(code=4100, message="Over capacity")
    assert pump(session, 5, lambda: not session.connected)
    closed = time.monotonic()
    assert session.next_timeout(closed) >= 0.9
    assert pump(session, 10, lambda: session.generation == 2)
    assert time.monotonic() - closed >= 1.0
    assert session.stats.last_close_code == 4100


@pytest.mark.timeout(60)
def test_wrong_app_key_is_fatal_and_never_retried(env: Env) -> None:
    sim = env.sim()
    url = sim.pusher_url.replace("32cbd69e4b950bf97679", "eb1d5f283081a78b932c")
    session = env.session(url)
    with pytest.raises(PusherFatalError) as info:
        pump(session, 5)
    assert info.value.code == 4001
    assert session.next_timeout(time.monotonic()) == float("inf")
    with pytest.raises(PusherFatalError):  # again, and without a new attempt
        session.service(time.monotonic() + 100, False)
    assert session.stats.connect_attempts == 1 and session.fileno() is None


@pytest.mark.timeout(60)
def test_fatal_error_on_a_live_connection(env: Env) -> None:
    sim = env.sim()
    session = env.connected(sim, names(sim.create_streamers(5)))
    sim.send_pusher_error(code=4009, message="Connection is unauthorized")
    with pytest.raises(PusherFatalError) as info:
        pump(session, 5)
    assert info.value.code == 4009 and not session.connected


@pytest.mark.timeout(60)
def test_silent_server_gets_pinged_then_dropped_after_the_pong_timeout(
    env: Env,
) -> None:
    sim = env.sim()
    channels = names(sim.create_streamers(50))
    session = env.connected(sim, channels, activity_timeout=0.5, pong_timeout=0.5)
    assert pump(session, 2) and session.generation == 1  # pings answered: stays up
    pings_before = session.stats.pings_sent
    assert pings_before >= 2
    sim.set_silent(True)
    start = time.monotonic()
    assert pump(session, 10, lambda: session.generation == 2)
    # silence 0.5 s -> ping -> 0.5 s without any frame -> close -> 0.5-1 s back-off
    assert 0.9 <= time.monotonic() - start < 4.0
    assert session.stats.reconnects == {"pong_timeout": 1}
    assert session.stats.pings_sent > pings_before
    assert pump(session, 5, lambda: sim.subscribed_channels() == set(channels))


@pytest.mark.timeout(60)
def test_server_pings_are_answered(env: Env) -> None:
    """Frames keep arriving (we never need to ping), so the server pings us; no 4201."""
    sim = env.sim(activity_timeout=1, idle_timeout=2.0, noise_rate=100.0)
    streamers = sim.create_streamers(5)
    chatrooms = [f"chatrooms.{s.chatroom_id}.v2" for s in streamers]
    session = env.connected(sim, chatrooms, activity_timeout=30)
    assert session.activity_timeout == 1
    assert pump(session, 4)
    assert session.stats.pongs_sent >= 1 and session.stats.pings_sent == 0
    assert session.generation == 1


def attempts_bound(policy: ReconnectPolicy, window: float) -> int:
    """Most connection attempts `policy` allows in `window` seconds after a drop."""
    elapsed, attempts = policy.min_delay(CloseAction.RECONNECT, 0), 0
    while elapsed <= window:
        attempts += 1
        elapsed += policy.min_delay(CloseAction.RECONNECT, attempts)
    return attempts


@pytest.mark.slow  # long end to end: make test-slow
@pytest.mark.timeout(60)
def test_refused_connections_back_off_without_a_storm(env: Env) -> None:
    sim = env.sim()
    channels = names(sim.create_streamers(20))
    policy = ReconnectPolicy(cap=8.0)
    session = env.connected(sim, channels, policy=policy)
    sim.refuse_connections(True)
    sim.drop_connections()
    pump(session, 10)
    refused = sim.stats()["connections_refused"]
    bound = attempts_bound(ReconnectPolicy(cap=8.0), 10)
    assert bound == 4  # 0.5 + 1 + 2 + 4 = 7.5 s, then 8 more
    assert 2 <= refused <= bound
    assert session.stats.connect_failures == refused
    sim.refuse_connections(False)
    assert pump(session, 10, lambda: session.generation == 2)  # back-off capped at 8 s
    assert pump(session, 5, lambda: sim.subscribed_channels() == set(channels))


@pytest.mark.timeout(60)
def test_subscribe_and_unsubscribe_while_running(env: Env) -> None:
    sim = env.sim()
    streamers = sim.create_streamers(150)
    kept, added, removed = streamers[:70], streamers[70:120], streamers[120:]
    session = env.connected(sim, names(kept + removed), app_events=LIFECYCLE_EVENTS)
    session.subscribe(names(added))
    session.unsubscribe(names(removed))
    expected = set(names(kept + added))
    assert pump(session, 5, lambda: sim.subscribed_channels() == expected)
    assert session.channels == expected
    events: list[AppEvent] = []
    sim.set_live(removed[0].slug, True)  # no longer ours
    sim.set_live(added[0].slug, True)
    assert pump(session, 5, lambda: len(events) >= 2, events)
    pump(session, 0.2, events=events)
    assert {e.channel for e in events} == set(names(added[:1]))
    assert session.generation == 1 and session.stats.connect_attempts == 1


@pytest.mark.timeout(60)
def test_malformed_frames_never_break_the_session(env: Env) -> None:
    sim = env.sim()
    streamers = sim.create_streamers(5)
    tracker = StatusTracker(
        [
            StreamerRef(i, s.slug, s.channel_id, s.user_id, "offline")
            for i, s in enumerate(streamers)
        ]
    )
    session = env.connected(sim, tracker.channel_names(), event_stats=tracker.stats)
    events: list[AppEvent] = []
    kinds = MALFORMED_KINDS
    sent = sum(sim.send_malformed(kind) for kind in kinds)
    assert pump(session, 5, lambda: session.stats.frames >= 10 + sent, events)
    assert [tracker.apply(e) for e in events] == [None] * len(events)
    assert session.generation == 1 and session.stats.reconnects == {}
    stats = tracker.stats
    assert {
        "bad_json",
        "bad_data_json",
        "missing_field",
        "bad_type",
        "bad_frame",
    } <= set(stats.malformed)
    assert stats.unknown_channel == 1 and stats.changes == 0


ESTABLISHED = orjson.dumps(
    {
        "event": "pusher:connection_established",
        "data": orjson.dumps({"socket_id": "1.2", "activity_timeout": 120}).decode(),
    }
).decode()


def text_frame(channel: str) -> bytes:
    """A StreamerIsLive text frame as a server writes it (2-byte header + payload, RFC 6455)."""
    payload = orjson.dumps({"event": STREAMER_IS_LIVE, "channel": channel, "data": "{}"})
    return bytes([0x81, len(payload)]) + payload


@contextlib.contextmanager
def bare_server(env: Env, write: Callable[[socket.socket], None]) -> Iterator[PusherSession]:
    """A session on a bare `websockets` server that sends connection_established, then hands its
    raw socket to `write` (the simulator cannot tear frames or batch them in one write)."""
    done = threading.Event()

    def handler(conn: ServerConnection) -> None:
        conn.send(ESTABLISHED)
        write(conn.socket)
        done.wait(10)

    with serve(handler, "127.0.0.1", 0) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        port = server.socket.getsockname()[1]
        session = env.session(f"ws://127.0.0.1:{port}/app/key?protocol=7")
        try:
            yield session
        finally:
            done.set()
            session.close()
            server.shutdown()


@pytest.mark.timeout(60)
def test_torn_frames_are_reassembled_without_blocking(env: Env) -> None:
    """A frame arriving in pieces: service() returns at once each time, then yields it."""
    frame_bytes = text_frame("channel.1")

    def write(sock: socket.socket) -> None:
        for piece in (frame_bytes[:1], frame_bytes[1:10], frame_bytes[10:] + frame_bytes):
            time.sleep(0.15)
            sock.sendall(piece)

    events: list[AppEvent] = []
    slowest = 0.0
    with bare_server(env, write) as session:
        deadline = time.monotonic() + 5
        while len(events) < 2 and time.monotonic() < deadline:
            fd = session.fileno()
            readable = fd is not None and bool(select.select([fd], [], [], 0.02)[0])
            start = time.monotonic()
            events += session.service(time.monotonic(), readable)
            if session.connected:
                slowest = max(slowest, time.monotonic() - start)
    assert [e.event for e in events] == [STREAMER_IS_LIVE] * 2
    assert slowest < 0.05  # never waited for the rest of a frame
    assert session.stats.frames == 3 and session.generation == 1


@pytest.mark.timeout(60)
def test_frames_read_ahead_are_served_without_waiting_for_the_socket(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A burst of frames arrives in one write; the session reads it from the socket at once
    (READ_AHEAD) but hands out only MAX_FRAMES_PER_SERVICE a call. The rest are held where
    select() cannot see them: the session must say so (next_timeout 0, has_buffered_data), or a
    worker loop that sleeps in select() until the socket is readable strands them."""
    monkeypatch.setattr("kick_monitor.pusher.MAX_FRAMES_PER_SERVICE", 2)
    frames = b"".join(text_frame(f"channel.{n}") for n in range(1, 8))

    def write(sock: socket.socket) -> None:
        time.sleep(0.2)
        sock.sendall(frames)  # seven frames in one write, then silence

    events: list[AppEvent] = []
    with bare_server(env, write) as session:
        deadline = time.monotonic() + 3
        while len(events) < 7 and time.monotonic() < deadline:
            now = time.monotonic()
            fd = session.fileno()
            wait = min(session.next_timeout(now), deadline - now)  # as a worker waits: no polling
            readable = fd is not None and bool(select.select([fd], [], [], max(0.0, wait))[0])
            events += session.service(time.monotonic(), readable)
        assert not session.has_buffered_data()
    assert [e.channel for e in events] == [f"channel.{n}" for n in range(1, 8)]


class CountingSocket:
    """A socket that counts the recv() calls made on it (and passes everything through)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.recvs = 0

    def recv(self, size: int) -> bytes:
        self.recvs += 1
        return self.sock.recv(size)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)


@pytest.mark.timeout(60)
def test_a_burst_costs_one_read_of_the_socket(env: Env) -> None:
    """Frames that came in one write are read in one recv(): once a read got less than it asked for,
    the session waits for select() instead of asking the socket again for an EAGAIN."""
    burst = b"".join(text_frame(f"channel.{n}") for n in range(1, 6))
    ready = threading.Event()

    def write(sock: socket.socket) -> None:
        ready.wait(5)
        sock.sendall(burst)
        time.sleep(0.3)
        sock.sendall(burst)

    events: list[AppEvent] = []
    with bare_server(env, write) as session:
        assert pump(session, 5, lambda: session.connected)
        ws = session._ws
        assert ws is not None and ws.sock is not None
        counting = CountingSocket(ws.sock)
        ws.sock = counting  # type: ignore[assignment]  # duck-typed: websocket-client only calls its methods
        ready.set()
        deadline = time.monotonic() + 5
        while len(events) < 10 and time.monotonic() < deadline:
            fd = session.fileno()
            readable = fd is not None and bool(select.select([fd], [], [], 0.5)[0])
            events += session.service(time.monotonic(), readable)
    assert [e.channel for e in events] == [f"channel.{n}" for n in range(1, 6)] * 2
    assert counting.recvs == 2  # one a burst (three a frame without the read-ahead, four with an EAGAIN)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("max_frame_bytes", "reconnects"),
    [
        (128 * 1024, {}),  # 1 MB frame: read, counted "oversize", dropped; socket kept
        (32 * 1024, {"frame_too_large": 1}),  # beyond 16x the limit: not even buffered
    ],
)
def test_oversize_frames(
    env: Env, max_frame_bytes: int, reconnects: dict[str, int]
) -> None:
    sim = env.sim()
    channels = names(sim.create_streamers(3))
    session = env.connected(sim, channels, max_frame_bytes=max_frame_bytes)
    frames = session.stats.frames
    assert sim.send_malformed("huge") == 1
    assert pump(session, 5, lambda: session.event_stats.malformed.get("oversize") == 1)
    if reconnects:
        assert pump(session, 5, lambda: session.generation == 2)
    else:
        assert pump(session, 0.3) and session.stats.frames == frames + 1
    assert session.stats.reconnects == reconnects
    assert pump(session, 5, lambda: sim.subscribed_channels() == set(channels))


@pytest.mark.timeout(60)
def test_subscriptions_are_awaited_until_answered_and_a_barrier_follows_unsubscribes(env: Env) -> None:
    """Issue 17's hand-over: reconcile only once the server answered our subscriptions, and after
    unsubscribing read everything the server sent before it applied that (a ping's pong)."""
    sim = env.sim()
    streamers = sim.create_streamers(40)
    session = env.connected(sim, names(streamers[:20]), app_events=LIFECYCLE_EVENTS)
    assert pump(session, 5, lambda: not session.awaiting(names(streamers[:20])))
    session.subscribe(names(streamers[20:]))
    assert session.awaiting(names(streamers[20:]))  # sent, not answered yet
    assert pump(session, 5, lambda: not session.awaiting(names(streamers[20:])))
    assert sys.getsizeof(session._unacked) == sys.getsizeof(set()), "an answered burst's table is given back"
    assert sim.subscription_count() == 80
    events: list[AppEvent] = []
    sim.set_live(streamers[0].slug, True)  # published while we still listen ...
    session.unsubscribe(names(streamers[:20]))  # ... and we leave before reading it
    barrier = session.barrier()
    assert not session.passed(barrier)
    assert pump(session, 5, lambda: session.passed(barrier), events)
    assert {e.channel for e in events} == set(names(streamers[:1])), "read before the barrier passed"
    assert sim.subscription_count() == 40
    session.close()
    assert session.passed(session.barrier())  # no connection: nothing to wait for
