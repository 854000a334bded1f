"""Live status keyed by streamer, for reconciliation by user id (issue 13).

A worker reconciles every streamer of its shard, with or without a channel id, so the
answer it needs is keyed by the streamer's row id. The API helper's
`Reconciler.fetch_live_status_by_user(user_ids)` answers by broadcaster user id
(/public/v1/channels?broadcaster_user_id=); until a Reconciler has it, today's
`fetch_live_status` (by slug, then user id; keyed by `StreamerRef.channel_id`) is used
through a thin adapter that puts the row id where it reads the channel id.

`diff_by_streamer` says where the API disagrees, including the S4 case: the API says live
with a start time later than the broadcast we believe is on, so that one ended unseen.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from kick_monitor.messages import Status, StreamerRef
from kick_monitor.reconcile import LiveInfo


def live_status_by_streamer(reconciler: Any, streamers: Sequence[StreamerRef]) -> dict[int, LiveInfo]:
    """{streamer_id: LiveInfo} for the streamers Kick answered about (absent = unknown)."""
    result: dict[int, LiveInfo] = {}
    by_user: Callable[[list[int]], Mapping[int, LiveInfo]] | None = getattr(
        reconciler, "fetch_live_status_by_user", None
    )
    rest = list(streamers)
    if by_user is not None:
        owners: dict[int, list[StreamerRef]] = {}
        for ref in streamers:
            if ref.kick_user_id is not None:
                owners.setdefault(ref.kick_user_id, []).append(ref)
        for user_id, info in by_user(list(owners)).items():
            for ref in owners.get(user_id, ()):
                result[ref.streamer_id] = info
        rest = [ref for ref in streamers if ref.kick_user_id is None]
    if rest:
        # today's client keys its answer by `channel_id`: hand it the row id there
        keyed = [replace(ref, channel_id=ref.streamer_id) for ref in rest]
        result.update(reconciler.fetch_live_status(keyed))
    return result


def diff_by_streamer(
    known: Mapping[int, tuple[Status, int | None, float | None]],
    live: Mapping[int, LiveInfo],
    tolerance: float,
) -> list[tuple[int, LiveInfo]]:
    """Streamers where the API disagrees with (status, livestream id, start) we know, by id.

    Only streamers in both maps count: one the API did not answer about is unknown, not
    offline. Live vs known online disagrees when it is another broadcast: both livestream
    ids known and different, or the API's start later than ours by more than `tolerance`
    seconds (the broadcast we knew ended while nobody watched, and a new one began).
    """
    changes: list[tuple[int, LiveInfo]] = []
    for streamer_id in sorted(live.keys() & known.keys()):
        info = live[streamer_id]
        status, livestream_id, started_at = known[streamer_id]
        if info.is_live:
            if status != "online":
                changes.append((streamer_id, info))
            elif info.livestream_id is not None and livestream_id is not None:
                if info.livestream_id != livestream_id:
                    changes.append((streamer_id, info))
            elif info.started_at is not None and started_at is not None and info.started_at > started_at + tolerance:
                changes.append((streamer_id, info))
        elif status != "offline":
            changes.append((streamer_id, info))
    return changes
