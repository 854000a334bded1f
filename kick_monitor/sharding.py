"""Stable assignment of streamers to shards: rendezvous (highest random weight) hashing.

Each streamer goes to the shard whose hash of ``(streamer_id, shard)`` is highest. Adding
or removing other streamers never moves a streamer, and changing the shard count from N
to N+1 moves only the ~1/(N+1) that the new shard wins — so a reload disturbs as few
Pusher connections as possible. The hash is keyed on the streamer's own row id (issue 13:
a streamer is monitored from its user id before any channel id is known, and learning the
channel id later must not move it), never on Python's per-process ``hash()``, so every
process and every host computes the same plan.

>>> plan = plan_shards(streamers, 4)     # {0: [...], 1: [...], 2: [...], 3: [...]}
>>> waiting = unresolved(streamers)      # neither user id nor channel id: not monitorable
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Protocol, TypeVar

from .config import Settings


class Monitorable(Protocol):
    """A streamer as sharding sees it: its row id, and the Kick ids known so far."""

    @property
    def streamer_id(self) -> int: ...

    @property
    def channel_id(self) -> int | None: ...

    @property
    def kick_user_id(self) -> int | None: ...


T = TypeVar("T", bound=Monitorable)


def shard_weight(key: int, shard: int) -> int:
    """The rendezvous weight of one (streamer, shard) pair: 64 well-mixed bits."""
    data = key.to_bytes(8, "big", signed=True) + shard.to_bytes(4, "big")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def shard_for(key: int, shard_count: int) -> int:
    """The shard (0-based) that owns the streamer with row id `key` among `shard_count` shards."""
    if shard_count < 1:
        raise ValueError(f"shard_count must be at least 1, got {shard_count}")
    return max(range(shard_count), key=lambda shard: shard_weight(key, shard))


def is_monitorable(streamer: Monitorable) -> bool:
    """A user id (the API reports on it) or a channel id (Pusher) is enough to watch a streamer."""
    return streamer.channel_id is not None or streamer.kick_user_id is not None


def plan_shards(streamers: Iterable[T], shard_count: int) -> dict[int, list[T]]:
    """Every shard index mapped to its monitorable streamers (in input order), by streamer id.

    Every index from 0 to `shard_count - 1` is present, even when its list is empty.
    Streamers with neither id are left out (`unresolved`).
    """
    plan: dict[int, list[T]] = {shard: [] for shard in range(shard_count)}
    for streamer in streamers:
        if is_monitorable(streamer):
            plan[shard_for(streamer.streamer_id, shard_count)].append(streamer)
    return plan


def unresolved(streamers: Iterable[T]) -> list[T]:
    """Streamers with neither a user id nor a channel id: not monitored until one is resolved."""
    return [streamer for streamer in streamers if not is_monitorable(streamer)]


def subscriptions_per_streamer(settings: Settings) -> int:
    """Pusher channels one streamer needs: `channel.{id}`, `channel_{id}` or both."""
    from .events import channel_names

    return len(channel_names(0, settings.lifecycle_channels))


def shard_count_for(settings: Settings, pusher_streamers: int) -> int:
    """Shards to run: the configured count, or enough to keep every connection under its cap.

    `pusher_streamers` counts streamers with a channel id (those without take no channel)."""
    return settings.resolve_shard_count(pusher_streamers * subscriptions_per_streamer(settings))


def check_shard_selection(settings: Settings, shard_count: int) -> None:
    """ValueError unless `shard_index` (if set) names one of `shard_count` fixed shards.

    A process that runs one shard must know the total: with an automatic count, adding
    streamers would silently change which streamers its index means.
    """
    index = settings.shard_index
    if index is None:
        return
    if not settings.shard_count:
        raise ValueError("KICK_MONITOR_SHARD_INDEX needs KICK_MONITOR_SHARD_COUNT (the total number of shards)")
    if index >= shard_count:
        raise ValueError(f"KICK_MONITOR_SHARD_INDEX={index} is outside 0..{shard_count - 1}")
