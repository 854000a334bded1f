"""Stable assignment of streamers to shards: rendezvous (highest random weight) hashing.

Each streamer goes to the shard whose hash of ``(channel_id, shard)`` is highest. Adding
or removing other streamers never moves a streamer, and changing the shard count from N
to N+1 moves only the ~1/(N+1) that the new shard wins — so a reload disturbs as few
Pusher connections as possible. The hash is keyed on the channel id (Kick's stable
numeric id), never on Python's per-process ``hash()``, so every process and every host
computes the same plan.

>>> plan = plan_shards(streamers, 4)     # {0: [...], 1: [...], 2: [...], 3: [...]}
>>> waiting = unresolved(streamers)      # no channel id yet: not subscribable
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Protocol, TypeVar

from .config import Settings


class HasChannelId(Protocol):
    """Anything with a Kick channel id (None while the id is not resolved yet)."""

    @property
    def channel_id(self) -> int | None: ...


T = TypeVar("T", bound=HasChannelId)


def shard_weight(channel_id: int, shard: int) -> int:
    """The rendezvous weight of one (channel, shard) pair: 64 well-mixed bits."""
    key = channel_id.to_bytes(8, "big", signed=True) + shard.to_bytes(4, "big")
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big")


def shard_for(channel_id: int, shard_count: int) -> int:
    """The shard (0-based) that owns `channel_id` among `shard_count` shards."""
    if shard_count < 1:
        raise ValueError(f"shard_count must be at least 1, got {shard_count}")
    return max(range(shard_count), key=lambda shard: shard_weight(channel_id, shard))


def plan_shards(streamers: Iterable[T], shard_count: int) -> dict[int, list[T]]:
    """Every shard index mapped to its streamers (in input order); unresolved ones are left out.

    Every index from 0 to `shard_count - 1` is present, even when its list is empty.
    """
    plan: dict[int, list[T]] = {shard: [] for shard in range(shard_count)}
    for streamer in streamers:
        if streamer.channel_id is not None:
            plan[shard_for(streamer.channel_id, shard_count)].append(streamer)
    return plan


def unresolved(streamers: Iterable[T]) -> list[T]:
    """Streamers without a channel id: they cannot be subscribed until the id is resolved."""
    return [streamer for streamer in streamers if streamer.channel_id is None]


def subscriptions_per_streamer(settings: Settings) -> int:
    """Pusher channels one streamer needs: `channel.{id}`, `channel_{id}` or both."""
    from .events import channel_names

    return len(channel_names(0, settings.lifecycle_channels))


def shard_count_for(settings: Settings, resolved_streamers: int) -> int:
    """Shards to run: the configured count, or enough to keep every connection under its cap."""
    return settings.resolve_shard_count(resolved_streamers * subscriptions_per_streamer(settings))


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
