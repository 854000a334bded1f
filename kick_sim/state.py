"""The simulated world: streamers, their ids, their live status and the truth log.

All mutation happens on the simulator's event loop thread, so nothing here locks.
The truth log is what benchmarks grade a monitor against: every status change (and
title update), whether or not a frame announced it.
"""

from __future__ import annotations

import os
import random
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any

import orjson

ONLINE = "online"
OFFLINE = "offline"
# Realistic magnitudes (Kick's channel and user ids reach ~9e7 in 2025).
ID_RANGE = (1_000_000, 90_000_000)
FIRST_LIVESTREAM_ID = 74_300_000
SLUG_PREFIX_RE = re.compile(r"[a-z0-9_]{1,40}")
# Streamers live in many time zones, and Kick's official API writes a stream's start time
# with the streamer's offset (e.g. "+11:00"): a client must parse offsets, not assume "Z".
UTC_OFFSETS_MINUTES = (660, 0, -300, 60, 330, -480, 120, 540, -180, 0)
STREAM_UUID_NAMESPACE = uuid.UUID("5d1c3a0e-9a7b-4c55-8f2e-6b3e2a1f0c11")


class SimError(ValueError):
    """A control request the world cannot honour (unknown slug, no change, bad value)."""


@dataclass(frozen=True, slots=True)
class SimStreamer:
    """A streamer's identity; the three ids always differ, as they do on Kick."""

    slug: str
    channel_id: int
    user_id: int
    chatroom_id: int

    @property
    def utc_offset_minutes(self) -> int:
        """The streamer's time zone (fixed per streamer, derived from its user id)."""
        return UTC_OFFSETS_MINUTES[self.user_id % len(UTC_OFFSETS_MINUTES)]

    def to_json(self) -> dict[str, Any]:
        return {
            "slug": self.slug, "channel_id": self.channel_id, "user_id": self.user_id, "chatroom_id": self.chatroom_id,
        }


@dataclass(slots=True, eq=False)
class Broadcast:
    """One broadcast as Kick knows it: every source-specific id and its start (the truth)."""

    slug: str
    user_id: int
    channel_id: int
    livestream_id: int  # Pusher's and the web API's number
    stream_uuid: str  # the official v2 API's id
    started_wall: float
    ended_wall: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "slug": self.slug, "user_id": self.user_id, "channel_id": self.channel_id,
            "livestream_id": self.livestream_id, "stream_uuid": self.stream_uuid,
            "started_wall": self.started_wall, "ended_wall": self.ended_wall,
        }


@dataclass(frozen=True, slots=True)
class Transition:
    """One change of a streamer's status (or title) as the simulator made it happen."""

    seq: int
    slug: str
    channel_id: int
    user_id: int
    status: str
    previous_status: str
    livestream_id: int
    event: str
    title: str
    sent_wall: float
    sent_mono: float
    delivered: bool  # at least one frame was written to a subscriber
    channels: tuple[str, ...]  # Pusher channels it was published on; () if not sent
    stream_uuid: str = ""  # the broadcast's v2 id ("" if the streamer never went live)
    started_wall: float = 0.0  # the broadcast's start (0.0 if never live)

    def to_json(self) -> dict[str, Any]:
        """Plain dict for JSON lines (dataclasses.asdict is ~10x slower on 100k rows)."""
        return {
            "seq": self.seq,
            "slug": self.slug,
            "channel_id": self.channel_id,
            "user_id": self.user_id,
            "status": self.status,
            "previous_status": self.previous_status,
            "livestream_id": self.livestream_id,
            "event": self.event,
            "title": self.title,
            "sent_wall": self.sent_wall,
            "sent_mono": self.sent_mono,
            "delivered": self.delivered,
            "channels": list(self.channels),
            "stream_uuid": self.stream_uuid,
            "started_wall": self.started_wall,
        }


@dataclass(slots=True, eq=False)
class StreamerState:
    """Mutable live status of one streamer (the REST truth)."""

    streamer: SimStreamer
    live: bool = False
    livestream_id: int | None = None  # current stream, or the last one once offline
    title: str = ""
    started_wall: float = 0.0
    viewer_count: int = 0
    broadcast: Broadcast | None = None  # the current broadcast, or the last one once offline


class World:
    """Streamers by every id, plus the ordered truth log."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._used_ids: set[int] = set()
        self._next_index: dict[str, int] = {}
        self._next_livestream_id = FIRST_LIVESTREAM_ID
        self.states: list[StreamerState] = []
        self.by_slug: dict[str, StreamerState] = {}
        self.by_user_id: dict[int, StreamerState] = {}
        self.by_channel_id: dict[int, StreamerState] = {}
        self.by_chatroom_id: dict[int, StreamerState] = {}
        self.truth: list[Transition] = []
        self.broadcasts: list[Broadcast] = []  # every broadcast ever started, in start order
        self.live_count = 0

    def create_streamers(self, count: int, prefix: str, live_fraction: float) -> list[SimStreamer]:
        """Add `count` offline streamers; `live_fraction` of them start live (no transition)."""
        if count < 0 or count > 1_000_000:
            raise SimError("count must be 0..1000000")
        if not SLUG_PREFIX_RE.fullmatch(prefix):
            raise SimError("prefix must be 1-40 chars of [a-z0-9_]")
        if not 0.0 <= live_fraction <= 1.0:
            raise SimError("live_fraction must be between 0 and 1")
        created = []
        index = self._next_index.get(prefix, 1)
        for _ in range(count):
            while f"{prefix}_{index}" in self.by_slug:
                index += 1
            streamer = SimStreamer(f"{prefix}_{index}", self._new_id(), self._new_id(), self._new_id())
            index += 1
            self._add(streamer)
            if self._rng.random() < live_fraction:
                self.start_stream(self.by_slug[streamer.slug], None)
            created.append(streamer)
        self._next_index[prefix] = index
        return created

    def get(self, slug: str) -> StreamerState:
        """The state of `slug`; SimError if there is no such streamer."""
        state = self.by_slug.get(slug) if isinstance(slug, str) else None
        if state is None:
            raise SimError(f"unknown streamer slug {slug!r}")
        return state

    def random_state(self) -> StreamerState:
        """A uniformly chosen streamer; SimError when there are none."""
        if not self.states:
            raise SimError("no streamers: create some first")
        return self.states[self._rng.randrange(len(self.states))]

    def unknown_channel_id(self) -> int:
        """A channel id no simulated streamer has (for frames nobody should act on)."""
        return self._fresh_id()

    def start_stream(self, state: StreamerState, title: str | None) -> None:
        """Mark live with a fresh livestream id, like every new broadcast on Kick."""
        self._next_livestream_id += self._rng.randrange(1, 40)
        state.live = True
        state.livestream_id = self._next_livestream_id
        state.title = title if title is not None else f"{state.streamer.slug} live #{state.livestream_id % 1000}"
        state.started_wall = time.time()
        state.viewer_count = self._rng.randrange(1, 5000)
        streamer = state.streamer
        stream_uuid = str(uuid.uuid5(STREAM_UUID_NAMESPACE, f"{streamer.user_id}:{state.livestream_id}"))
        state.broadcast = Broadcast(
            streamer.slug, streamer.user_id, streamer.channel_id, state.livestream_id, stream_uuid, state.started_wall
        )
        self.broadcasts.append(state.broadcast)
        self.live_count += 1

    def end_stream(self, state: StreamerState) -> None:
        """Mark offline; livestream_id keeps naming the stream that just ended."""
        state.live = False
        state.viewer_count = 0
        if state.broadcast is not None:
            state.broadcast.ended_wall = time.time()
        self.live_count -= 1

    def record(
        self,
        state: StreamerState,
        previous_status: str,
        event: str,
        sent: tuple[float, float],
        recipients: int,
        channels: tuple[str, ...],
    ) -> Transition:
        """Append a transition to the truth log in the order changes were made."""
        streamer = state.streamer
        transition = Transition(
            seq=len(self.truth) + 1,
            slug=streamer.slug,
            channel_id=streamer.channel_id,
            user_id=streamer.user_id,
            status=ONLINE if state.live else OFFLINE,
            previous_status=previous_status,
            livestream_id=state.livestream_id or 0,
            event=event,
            title=state.title,
            sent_wall=sent[0],
            sent_mono=sent[1],
            delivered=recipients > 0,
            channels=channels,
            stream_uuid=state.broadcast.stream_uuid if state.broadcast else "",
            started_wall=state.broadcast.started_wall if state.broadcast else 0.0,
        )
        self.truth.append(transition)
        return transition

    def _new_id(self) -> int:
        """An id unique across channel, user and chatroom ids, so a mix-up never works by luck."""
        new_id = self._fresh_id()
        self._used_ids.add(new_id)
        return new_id

    def _fresh_id(self) -> int:
        candidate = self._rng.randrange(*ID_RANGE)
        while candidate in self._used_ids:
            candidate = self._rng.randrange(*ID_RANGE)
        return candidate

    def _add(self, streamer: SimStreamer) -> None:
        state = StreamerState(streamer)
        self.states.append(state)
        self.by_slug[streamer.slug] = state
        self.by_user_id[streamer.user_id] = state
        self.by_channel_id[streamer.channel_id] = state
        self.by_chatroom_id[streamer.chatroom_id] = state



def truth_jsonl(transitions: list[Transition]) -> bytes:
    """Transitions as JSON lines, one object per line in seq order."""
    return b"".join(orjson.dumps(transition.to_json()) + b"\n" for transition in transitions)


def export_truth(transitions: list[Transition], path: str | os.PathLike[str]) -> int:
    """Write transitions to `path` as JSON lines; returns how many."""
    with open(path, "wb") as out:
        out.write(truth_jsonl(transitions))
    return len(transitions)
