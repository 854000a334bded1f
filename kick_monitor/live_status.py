"""Where the API's live status disagrees with a worker's, keyed by streamer (issue 13).

A worker reconciles every streamer of its shard, with or without a channel id, so the
answers it reads are keyed by the streamer's row id (`Reconciler.answers_by_streamer`).
`diff_by_streamer` says where the API disagrees, including the S4 case: the API says live
with a start time later than the broadcast we believe is on, so that one ended unseen.
"""

from __future__ import annotations

from collections.abc import Mapping

from kick_monitor.messages import LiveInfo, Status


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
