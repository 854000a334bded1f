"""Reconciliation: checking what we believe against Kick's official API.

The Pusher socket is the fast path but it misses events (one capture saw 168 go-lives for
58 offlines), so each worker regularly asks the API for its shard's live status and
repairs where it disagrees.

    live = Reconciler(client).fetch_live_status(refs)     # {channel_id: LiveInfo}
    for channel_id, info in diff_live_status(known, live): ...
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kick_monitor.kick_api import (
    ChannelInfo,
    KickApiClient,
    KickApiError,
    KickApiUnavailable,
    KickAuthError,
    KickBlockedError,
    chunks,
)
from kick_monitor.messages import Status, StreamerRef

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LiveInfo:
    """What the API says about one channel; `observed_mono` is when the answer arrived.

    A socket event newer than `observed_mono` beats this answer: the worker should drop
    an API verdict older than the last frame it saw for the channel.
    """

    is_live: bool
    title: str | None
    livestream_id: int | None
    started_at: float | None
    observed_mono: float = 0.0


@dataclass(frozen=True, slots=True)
class ReconcileReport:
    """How the last `fetch_live_status` went (for logs and metrics)."""

    asked: int
    answered: int
    failed_batches: int
    error: str | None
    seconds: float


class Reconciler:
    """Asks the official API for the live status of many streamers at once.

    Safe on a background thread: it keeps no state the caller shares except
    `last_report`, which is replaced whole (an atomic assignment). Pass it an immutable
    snapshot of the streamers (a tuple of frozen StreamerRef), not a list the main loop
    mutates; it returns a new dict.
    """

    def __init__(self, client: KickApiClient) -> None:
        self.client = client
        self.last_report: ReconcileReport | None = None

    @property
    def enabled(self) -> bool:
        """Reconciliation needs the official API, hence credentials."""
        return self.client.has_credentials

    def fetch_live_status(self, streamers: Sequence[StreamerRef]) -> dict[int, LiveInfo]:
        """Live status by channel id for the streamers Kick answered about.

        Asks by slug (`username`, case-insensitive); streamers the answer leaves out but
        whose Kick user id is known are asked again by user id (a renamed channel).
        Streamers still absent are left out (unknown), never reported offline. A failed
        batch is skipped; once Kick is unavailable no further batch is tried. Auth and
        Cloudflare errors are raised. `livestream_id` stays None: the official API does
        not tell it.
        """
        if not self.enabled:
            return {}
        started = time.monotonic()
        tally = _Tally()
        result: dict[int, LiveInfo] = {}
        by_slug: dict[str, list[StreamerRef]] = {}
        for ref in streamers:
            by_slug.setdefault(ref.username.strip().lower(), []).append(ref)
        for wanted, answer in self._batches(self.client.channels_by_slug, list(by_slug), tally):
            for info in answer:
                slug = info.slug.lower()
                if slug in wanted:  # a confused answer's extra channels are ignored
                    _record(result, by_slug[slug], info)
        by_user: dict[int, list[StreamerRef]] = {}
        for ref in streamers:
            if ref.channel_id not in result and ref.kick_user_id is not None:
                by_user.setdefault(ref.kick_user_id, []).append(ref)
        for wanted, answer in self._batches(self.client.channels_by_user_id, list(by_user), tally):
            for info in answer:
                if info.broadcaster_user_id in wanted:
                    refs = by_user[info.broadcaster_user_id]
                    log.info("reconcile: %s is now called %s on Kick", refs[0].username, info.slug)
                    _record(result, refs, info)
        self.last_report = ReconcileReport(
            len(streamers), len(result), tally.failed, tally.error, time.monotonic() - started
        )
        return result

    def _batches(
        self, query: Callable[[Sequence[Any]], list[ChannelInfo]], keys: Sequence[Any],
        tally: _Tally,
    ) -> Iterator[tuple[set[Any], list[ChannelInfo]]]:
        """(keys asked, answer) per batch, skipping batches that failed."""
        for batch in chunks(keys, self.client.batch_size):
            if tally.down:
                return
            try:
                answer = query(batch)
            except (KickAuthError, KickBlockedError):
                raise
            except KickApiError as exc:
                tally.failed += 1
                tally.error = str(exc)
                tally.down = isinstance(exc, KickApiUnavailable)
                log.warning("reconcile: a batch of %d failed: %s", len(batch), exc)
                continue
            yield set(batch), answer


@dataclass(slots=True)
class _Tally:
    """Failures of one `fetch_live_status` run (local to the run, never shared)."""

    failed: int = 0
    error: str | None = None
    down: bool = False


def _record(result: dict[int, LiveInfo], refs: Sequence[StreamerRef], info: ChannelInfo) -> None:
    live = LiveInfo(
        is_live=info.is_live,
        title=info.stream_title if info.is_live else None,
        livestream_id=None,
        started_at=info.started_at,
        observed_mono=time.monotonic(),
    )
    for ref in refs:
        if ref.channel_id is not None:  # issue 13: callers key by row id through live_status
            result[ref.channel_id] = live


def diff_live_status(
    known: Mapping[int, tuple[Status, int | None]], live: Mapping[int, LiveInfo]
) -> list[tuple[int, LiveInfo]]:
    """Channels where the API disagrees with what we know, ordered by channel id.

    Only channels in both maps count: a channel the API did not answer about is unknown,
    not offline. A known "unknown" always counts (the API settles it). Live vs known
    online disagrees only when both livestream ids are known and differ (a whole
    offline/online cycle was missed).
    """
    changes: list[tuple[int, LiveInfo]] = []
    for channel_id in sorted(live.keys() & known.keys()):
        info = live[channel_id]
        status, livestream_id = known[channel_id]
        if info.is_live:
            stale = (
                status == "online"
                and info.livestream_id is not None
                and livestream_id is not None
                and info.livestream_id != livestream_id
            )
            if status != "online" or stale:
                changes.append((channel_id, info))
        elif status != "offline":
            changes.append((channel_id, info))
    return changes
