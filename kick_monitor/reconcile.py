"""Reconciliation: checking what we believe against Kick's official API.

The Pusher socket is the fast path but it misses events (one capture saw 168 go-lives for
58 offlines), so each worker regularly asks the API for its shard's live status and
repairs where it disagrees.

    live = Reconciler(client).fetch_live_status(refs)     # {channel_id: LiveInfo}
    by_user = Reconciler(client).fetch_live_status_by_user(user_ids)   # {user_id: LiveInfo}
    for asked_mono, piece in Reconciler(client).answers_by_streamer(refs): ...   # one request at a time
    for channel_id, info in diff_live_status(known, live): ...
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
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
from kick_monitor.messages import LiveInfo, Status, StreamerRef

log = logging.getLogger(__name__)

__all__ = ["LiveInfo", "ReconcileReport", "Reconciler", "diff_live_status"]  # LiveInfo: kick_monitor.messages


@dataclass(frozen=True, slots=True)
class ReconcileReport:
    """How the last `fetch_live_status` went (for logs and metrics)."""

    asked: int
    answered: int
    failed_batches: int
    error: str | None
    seconds: float
    inconsistent: int = 0  # answers re-asked in smaller pieces


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

        Streamers with a Kick user id are asked by user id (`fetch_live_status_by_user`: a
        renamed channel keeps its user id); the rest by slug (`username`, case-insensitive).
        Streamers absent from an answer are left out (unknown), never reported offline, and
        so are streamers without a channel id (see `fetch_live_status_by_user` for those).
        A failed batch is skipped; once Kick is unavailable no further batch is tried. Auth
        and Cloudflare errors are raised. `livestream_id` stays None: the official API does
        not tell it.
        """
        if not self.enabled:
            return {}
        started = time.monotonic()
        tally = _Tally()
        result: dict[int, LiveInfo] = {}
        by_user, by_slug = _group(streamers)
        for _, answer in self._ask_all(self.client.channels_by_user_id, list(by_user), _user_key, tally):
            for info in answer:
                refs = by_user[info.broadcaster_user_id]
                if info.slug.lower() != refs[0].username.strip().lower():
                    log.info("reconcile: %s is now called %s on Kick", refs[0].username, info.slug)
                _record(result, refs, info)
        for _, answer in self._ask_all(self.client.channels_by_slug, list(by_slug), _slug_key, tally):
            for info in answer:
                _record(result, by_slug[info.slug.lower()], info)
        self.last_report = ReconcileReport(
            len(streamers), len(result), tally.failed, tally.error, time.monotonic() - started, tally.inconsistent
        )
        return result

    def fetch_live_status_by_user(self, user_ids: Iterable[int]) -> dict[int, LiveInfo]:
        """Live status by broadcaster user id, for streamers monitored without a channel id.

        The same rules as `fetch_live_status`: absent means unknown, inconsistent answers
        are asked again in smaller pieces, a failed batch is skipped.
        """
        if not self.enabled:
            return {}
        started = time.monotonic()
        tally = _Tally()
        wanted = list(dict.fromkeys(user_ids))
        result = {
            info.broadcaster_user_id: _live_info(info)
            for _, answer in self._ask_all(self.client.channels_by_user_id, wanted, _user_key, tally)
            for info in answer
        }
        self.last_report = ReconcileReport(
            len(wanted), len(result), tally.failed, tally.error, time.monotonic() - started, tally.inconsistent
        )
        return result

    def answers_by_streamer(self, streamers: Sequence[StreamerRef]) -> Iterator[tuple[float, dict[int, LiveInfo]]]:
        """Live status keyed by streamer row id, one API request's answer at a time, each with the
        monotonic time just before it was asked (a frame read after that is newer than the answer).

        What a worker reconciles with: it applies the answers as they come, so after a reconnect
        most streamers are repaired after the first requests rather than after the whole pass,
        which the shared API budget spreads over seconds to minutes (docs/performance.md, S4).
        Streamers with a Kick user id are asked by it (`fetch_live_status_by_user`), the rest by
        slug; otherwise the rules of `fetch_live_status`: absent = unknown, inconsistent answers
        re-asked in halves, a failed batch skipped, none tried once Kick is unavailable, auth and
        Cloudflare errors raised. `last_report` covers the whole pass once the iterator is done.
        """
        if not self.enabled:
            return
        started = time.monotonic()
        tally = _Tally()
        answered = 0
        by_user, by_slug = _group(streamers)
        asks: tuple[tuple[Callable[[Sequence[Any]], list[ChannelInfo]], Mapping[Any, list[StreamerRef]],
                          Callable[[ChannelInfo], Any]], ...] = (
            (self.client.channels_by_user_id, by_user, _user_key), (self.client.channels_by_slug, by_slug, _slug_key))
        for query, owners, key_of in asks:
            for asked, answer in self._ask_all(query, list(owners), key_of, tally):
                piece = {ref.streamer_id: live for info in answer
                         for live in (_live_info(info),) for ref in owners[key_of(info)]}
                answered += len(piece)
                yield asked, piece
        self.last_report = ReconcileReport(
            len(streamers), answered, tally.failed, tally.error, time.monotonic() - started, tally.inconsistent
        )

    def _ask_all(
        self, query: Callable[[Sequence[Any]], list[ChannelInfo]], keys: Sequence[Any],
        key_of: Callable[[ChannelInfo], Any], tally: _Tally,
    ) -> Iterator[tuple[float, list[ChannelInfo]]]:
        """The consistent answer of each batch of `keys` as it comes, with the monotonic time before
        it was asked (the API budget's wait included: earlier is the safe side); batches that failed
        are skipped."""
        for batch in chunks(keys, self.client.batch_size):
            if tally.down:
                return
            asked = time.monotonic()
            try:
                answer = self._ask(query, list(batch), key_of, tally)
            except (KickAuthError, KickBlockedError):
                raise
            except KickApiError as exc:
                tally.failed += 1
                tally.error = str(exc)
                tally.down = isinstance(exc, KickApiUnavailable)
                log.warning("reconcile: a batch of %d failed: %s", len(batch), exc)
                continue
            yield asked, answer

    def _ask(
        self, query: Callable[[Sequence[Any]], list[ChannelInfo]], batch: list[Any],
        key_of: Callable[[ChannelInfo], Any], tally: _Tally,
    ) -> list[ChannelInfo]:
        """One batch; an answer naming ids not asked for, or one id twice, is re-asked in halves.

        Such an answer is confused, so none of it is trusted; a single id still answered
        inconsistently stays unknown.
        """
        answer = query(batch)
        keys = [key_of(info) for info in answer]
        asked = set(batch)
        if len(set(keys)) == len(keys) and asked.issuperset(keys):
            return answer
        tally.inconsistent += 1
        if len(batch) == 1:
            log.warning("reconcile: inconsistent answer about %s; left unknown", batch[0])
            return []
        log.info("reconcile: inconsistent answer for a batch of %d; asking again in halves", len(batch))
        middle = len(batch) // 2
        return self._ask(query, batch[:middle], key_of, tally) + self._ask(query, batch[middle:], key_of, tally)


def _group(streamers: Iterable[StreamerRef]) -> tuple[dict[int, list[StreamerRef]], dict[str, list[StreamerRef]]]:
    """Streamers by the key they are asked by: their Kick user id, else their slug (lower case)."""
    by_user: dict[int, list[StreamerRef]] = {}
    by_slug: dict[str, list[StreamerRef]] = {}
    for ref in streamers:
        if ref.kick_user_id is not None:
            by_user.setdefault(ref.kick_user_id, []).append(ref)
        else:
            by_slug.setdefault(ref.username.strip().lower(), []).append(ref)
    return by_user, by_slug


def _user_key(info: ChannelInfo) -> int:
    return info.broadcaster_user_id


def _slug_key(info: ChannelInfo) -> str:
    return info.slug.lower()


@dataclass(slots=True)
class _Tally:
    """Failures of one `fetch_live_status` run (local to the run, never shared)."""

    failed: int = 0
    error: str | None = None
    down: bool = False
    inconsistent: int = 0


def _live_info(info: ChannelInfo) -> LiveInfo:
    return LiveInfo(
        is_live=info.is_live,
        title=info.stream_title if info.is_live else None,
        livestream_id=None,
        started_at=info.started_at,
        observed_mono=time.monotonic(),
    )


def _record(result: dict[int, LiveInfo], refs: Sequence[StreamerRef], info: ChannelInfo) -> None:
    live = _live_info(info)
    for ref in refs:
        if ref.channel_id is not None:  # streamers without one are reported by user id only
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
