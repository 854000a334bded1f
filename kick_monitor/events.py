"""Kick frames in, `StatusChange`s out: frame parsing and per-channel live status.

The hot path is split in two so that the ~99 % of frames that are chat and goal noise cost
one orjson call and two dict lookups (shared/PERFORMANCE.md):

1. `parse_frame` decodes the outer Pusher frame once; given `wanted` (the worker's session
   passes LIFECYCLE_EVENTS) it counts and drops other app events by name right there,
   else it returns an `AppEvent` whose `data` is left as it came (a JSON *string*).
2. `StatusTracker.apply` rejects non-lifecycle events by name (if not filtered already),
   maps the channel name to a known channel id with one dict lookup, and only then decodes
   `data` a second time and validates the payload.

Nothing here raises on bad input: malformed frames are counted by kind in `EventStats` and
logged once per kind, with context in `extra` fields.

Example::

    tracker = StatusTracker(refs, shard=0)
    names = tracker.channel_names()          # subscribe these
    ev = parse_frame(raw, received_at=time.time(), received_mono=time.monotonic(),
                     stats=tracker.stats)
    if ev is not None:
        result = tracker.apply(ev)           # StatusChange | TitleUpdate | None
"""

from __future__ import annotations

import logging
from collections.abc import Container, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson

from kick_monitor.messages import Source, Status, StatusChange, StreamerRef
from kick_monitor.ordering import MonotonicSeq

LOG = logging.getLogger("kick_monitor.events")

STREAMER_IS_LIVE = "App\\Events\\StreamerIsLive"
STOP_STREAM_BROADCAST = "App\\Events\\StopStreamBroadcast"
LIVESTREAM_UPDATED = "App\\Events\\LivestreamUpdated"
# The next two were seen only in client handlers, never in captured traffic.
LIVESTREAM_ENDED = "App\\Events\\LivestreamEnded"
LIVESTREAM_CANCELLED = "App\\Events\\LivestreamCancelled"

DEFAULT_MAX_FRAME_BYTES = 1 << 20
MAX_ID = (1 << 63) - 1  # ids end up in PostgreSQL bigint columns
MAX_COUNTED_NAMES = 200  # distinct ignored event names kept; the rest count as OTHER
MAX_NAME_LENGTH = 120  # longer names are never used as counter keys
OTHER = "(other)"
PROTOCOL_PREFIXES = ("pusher:", "pusher_internal:")  # frames for the connection itself


@dataclass(slots=True)
class AppEvent:
    """One decoded outer frame; `data` is still raw (usually a JSON string).

    `received_at` (time.time()) and `received_mono` (time.monotonic()) are taken when the
    frame was read off the socket; `raw_size` is its length in bytes.
    """

    event: str
    channel: str | None
    data: object
    raw_size: int
    received_at: float
    received_mono: float


@dataclass(frozen=True, slots=True)
class TitleUpdate:
    """A new title for a stream already known online: not a status change.

    The worker decides whether to persist it; `change` is ready to send if it does.
    """

    change: StatusChange


@dataclass(frozen=True, slots=True)
class _Lifecycle:
    """How one lifecycle event name is read."""

    status: Status
    livestream_required: bool  # the payload must carry livestream.id
    channel_required: bool  # else the channel name's id is used


_LIFECYCLE: dict[str, _Lifecycle] = {
    STREAMER_IS_LIVE: _Lifecycle("online", True, True),
    STOP_STREAM_BROADCAST: _Lifecycle("offline", True, True),
    LIVESTREAM_UPDATED: _Lifecycle("online", True, False),
    # Shapes unknown (never captured): accept whatever ids come, fall back to the name.
    LIVESTREAM_ENDED: _Lifecycle("offline", False, False),
    LIVESTREAM_CANCELLED: _Lifecycle("offline", False, False),
}
LIFECYCLE_EVENTS = frozenset(_LIFECYCLE)


def _clip(value: object, limit: int = MAX_NAME_LENGTH) -> str | None:
    """A log-safe rendering of hostile input: never more than `limit` characters."""
    if value is None:
        return None
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _json_error_kind(exc: ValueError, default: str) -> str:
    """orjson reports bad UTF-8 (incl. lone surrogates) as a decode error: tell them apart."""
    text = str(exc)
    return "invalid_utf8" if "UTF-8" in text or "surrogate" in text else default


class EventStats:
    """Counters for frames that produced no change, bounded against hostile streams.

    `malformed` counts by kind (`oversize`, `bad_json`, `invalid_utf8`, `bad_frame`,
    `bad_data_json`, `bad_type`, `missing_field`, `channel_mismatch`, and the soft kinds
    `bad_title`/`bad_timestamp` whose event still counts); each kind is logged once.
    `ignored` counts non-lifecycle events by name, at most `max_names` names.
    """

    def __init__(self, shard: int = 0, *, max_names: int = MAX_COUNTED_NAMES) -> None:
        self.shard = shard
        self.malformed: dict[str, int] = {}
        self.ignored: dict[str, int] = {}
        self.unknown_channel = 0
        self.duplicates = 0
        self.stale = 0
        self.changes = 0
        self.title_updates = 0
        self._max_names = max_names
        self._logged: set[str] = set()

    def malformed_frame(
        self,
        kind: str,
        *,
        channel: object = None,
        event: object = None,
        detail: str = "",
    ) -> None:
        """Count one malformed frame; log the first of each kind with its context."""
        self.malformed[kind] = self.malformed.get(kind, 0) + 1
        if kind in self._logged:
            return
        self._logged.add(kind)
        # The kind is in the message template on purpose: the log's flood filter keys on the
        # template, and one shared template let the first kind hide every other kind for a
        # minute (and so for good, as each kind is logged only once). Kinds are a fixed set
        # of names in this module, so the templates stay few.
        LOG.warning(
            f"malformed frame of kind {kind} (logged once per kind, then only counted)",
            extra={
                "kind": kind,
                "shard": self.shard,
                "channel": _clip(channel),
                "event": _clip(event),
                "detail": _clip(detail, 300),
            },
        )

    def stranger(self, channel: object, event: object) -> None:
        """Count a lifecycle event for a channel we do not watch; log the first one."""
        self.unknown_channel += 1
        if self.unknown_channel == 1:
            LOG.warning(
                "lifecycle event for a channel we do not watch (logged once, then only counted)",
                extra={"kind": "unknown_channel", "shard": self.shard, "channel": _clip(channel),
                       "event": _clip(event)},
            )

    def ignore(self, event: str) -> None:
        """Count one ignored event by name without letting the key set grow unbounded."""
        ignored = self.ignored
        if event in ignored:
            ignored[event] += 1
        elif len(ignored) < self._max_names and len(event) <= MAX_NAME_LENGTH:
            ignored[event] = 1
        else:
            ignored[OTHER] = ignored.get(OTHER, 0) + 1


def parse_frame(
    raw: bytes | str,
    *,
    received_at: float,
    received_mono: float,
    stats: EventStats,
    max_bytes: int = DEFAULT_MAX_FRAME_BYTES,
    wanted: Container[str] | None = None,
) -> AppEvent | None:
    """Decode the outer frame once; None (counted) if it is not a usable Pusher frame.

    With `wanted`, app events named otherwise are counted as ignored and dropped here,
    before an `AppEvent` is built (protocol frames always pass).
    """
    size = len(raw)
    if size > max_bytes:
        stats.malformed_frame("oversize", detail=f"{size} > {max_bytes} bytes")
        return None
    try:
        frame = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        stats.malformed_frame(_json_error_kind(exc, "bad_json"), detail=str(exc))
        return None
    if type(frame) is not dict:
        stats.malformed_frame("bad_frame", detail=f"frame is {type(frame).__name__}")
        return None
    event = frame.get("event")
    channel = frame.get("channel")
    if type(event) is not str or (channel is not None and type(channel) is not str):
        stats.malformed_frame(
            "bad_frame", channel=channel, event=event, detail="event/channel type"
        )
        return None
    if (
        wanted is not None
        and event not in wanted
        and not event.startswith(PROTOCOL_PREFIXES)
    ):
        stats.ignore(event)
        return None
    return AppEvent(event, channel, frame.get("data"), size, received_at, received_mono)


_CHANNEL_PREFIXES = ("channel.", "channel_")  # both the same length
_MAX_ID_DIGITS = len(str(MAX_ID))


def channel_id_of(name: str) -> int | None:
    """The channel id a lifecycle channel's name carries (`channel_names`' inverse), None for any
    other name. Only the canonical form counts (ASCII digits, no leading zero), so exactly the names
    `channel_names` builds map back to an id."""
    if not name.startswith(_CHANNEL_PREFIXES):
        return None
    digits = name[len(_CHANNEL_PREFIXES[0]):]
    if not (0 < len(digits) <= _MAX_ID_DIGITS and digits.isascii() and digits.isdigit()) or digits[0] == "0":
        return None
    return int(digits)


def channel_names(channel_id: int, which: str = "both") -> tuple[str, ...]:
    """The Pusher channels Kick may publish a channel's lifecycle events on: the one place
    these names are built. `which` is the `lifecycle_channels` setting: both, dot or underscore."""
    dot, underscore = f"channel.{channel_id}", f"channel_{channel_id}"
    if which == "dot":
        return (dot,)
    if which == "underscore":
        return (underscore,)
    return dot, underscore


def _valid_id(value: object) -> bool:
    """A positive bigint; bool is an int subclass and floats are not ids."""
    return type(value) is int and 0 < value <= MAX_ID


def _epoch(text: str) -> float | None:
    """Kick's timestamps ("...000000Z", "2023-06-28 20:48:51") as epoch seconds; naive = UTC."""
    try:
        moment = datetime.fromisoformat(text)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return moment.timestamp()
    except (ValueError, OverflowError, OSError):
        return None


@dataclass(slots=True)
class _ChannelState:
    status: Status
    livestream_id: int | None
    title: str | None = None
    generation: int = 0
    channel_id: int | None = None  # None: monitored without Pusher (API only)
    started_at: float | None = None  # Kick's start of the broadcast we believe is on
    ended_livestream_id: int | None = None  # the last broadcast seen ending: an online naming it is stale
    last_event_mono: float = 0.0  # see StatusTracker.last_event_mono


class _Malformed(Exception):
    """Internal: the payload cannot be used; carries the kind to count."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


class StatusTracker:
    """Each known streamer's last status and livestream id; turns events into changes.

    Keyed by the streamer's row id (`StreamerRef.streamer_id`): a streamer without a
    channel id is tracked too (the API reports on it), it only has no Pusher names until
    `add` sees it again with a channel id.

    De-duplication rules (per channel):
    - online(L) when already online with livestream L: duplicate (this is how the same
      event on `channel.X` and `channel_X` yields one change). Online with a *different*
      or unknown livestream id is a change: a new broadcast whose offline we missed.
    - online(L) when offline after livestream L ended: stale (a livestream id is one
      broadcast; once it ended it does not come back), counted, no change.
    - offline when already offline: duplicate, unless it names a livestream other than the
      one we know, or we know none (a whole broadcast may have begun and ended unseen: a
      change; the writer decides whether to infer its start).
    - LivestreamUpdated on a stream known online with the same id: a `TitleUpdate` if the
      title changed, else a duplicate; otherwise it is an online change.
    - an online event whose payload says `"is_live": false` changes nothing (counted as
      ignored under "<event> (is_live=false)").
    `change_id` is f"p:{streamer}:{status}:{livestream or '-'}:{received_ns}" ("a:" for the
    API), where received_ns is the receive time in ns, bumped to stay strictly increasing
    within this tracker: unique per worker, and fixed once the change object exists.
    Every change carries its channel's assignment generation and a fresh `seq`
    (kick_monitor.ordering): the order the writer keeps, whatever the wall clock does.
    """

    def __init__(
        self,
        streamers: Iterable[StreamerRef] = (),
        *,
        shard: int = 0,
        stats: EventStats | None = None,
    ) -> None:
        self.shard = shard
        self.stats = stats if stats is not None else EventStats(shard)
        self._states: dict[int, _ChannelState] = {}
        # channel id -> streamer id: an event's channel name is parsed back to the id (channel_id_of)
        # rather than kept as two name strings per channel (measured: 0.8 MB a worker of 5,000 streamers)
        self._by_channel: dict[int, int] = {}
        self._last_ns = 0
        self._seq = MonotonicSeq()
        self.add(streamers)

    def __len__(self) -> int:
        return len(self._states)

    def __contains__(self, streamer_id: object) -> bool:
        return streamer_id in self._states

    def add(self, streamers: Iterable[StreamerRef]) -> list[str]:
        """Start tracking; returns the channel names to subscribe.

        A streamer already tracked keeps its state; if it comes with a channel id it did
        not have (the resolver found it), only its names are returned, to subscribe now.
        """
        names: list[str] = []
        for ref in streamers:
            state = self._states.get(ref.streamer_id)
            if state is None:
                state = self._states[ref.streamer_id] = _ChannelState(
                    ref.status, ref.livestream_id, generation=ref.generation, started_at=ref.started_at,
                    ended_livestream_id=ref.livestream_id if ref.status == "offline" else None,
                )
            elif ref.channel_id is None or ref.channel_id == state.channel_id:
                continue
            names.extend(self._name_channel(ref.streamer_id, state, ref.channel_id))
        return names

    def _name_channel(self, streamer_id: int, state: _ChannelState, channel_id: int | None) -> list[str]:
        """Point the streamer's Pusher names at `channel_id`; the new names (old ones dropped)."""
        if state.channel_id is not None:
            self._by_channel.pop(state.channel_id, None)
        state.channel_id = channel_id
        if channel_id is None:
            return []
        self._by_channel[channel_id] = streamer_id
        return list(channel_names(channel_id))

    def remove(self, streamer_ids: Iterable[int]) -> list[str]:
        """Stop tracking; returns the channel names to unsubscribe."""
        names: list[str] = []
        for streamer_id in streamer_ids:
            state = self._states.pop(streamer_id, None)
            if state is None:
                continue
            if state.channel_id is not None:
                del self._by_channel[state.channel_id]
                names.extend(channel_names(state.channel_id))
        return names

    def last_event_mono(self, streamer_id: int) -> float:
        """Monotonic receive time of the streamer's last valid lifecycle event, duplicates included
        (0.0 if none): an API answer asked for before it is older than what the event said. Kept in
        the streamer's state rather than a dict of its own (a 5,000-entry dict is ~0.15 MB)."""
        state = self._states.get(streamer_id)
        return 0.0 if state is None else state.last_event_mono

    def channel_of(self, streamer_id: int) -> int | None:
        """The streamer's channel id (None: not tracked, or monitored without Pusher)."""
        state = self._states.get(streamer_id)
        return None if state is None else state.channel_id

    def started_at(self, streamer_id: int) -> float | None:
        """Kick's start time of the broadcast we believe is on, when a source gave it."""
        state = self._states.get(streamer_id)
        return None if state is None or state.status != "online" else state.started_at

    def channel_names(self) -> list[str]:
        """Every channel name of every tracked channel."""
        return [name for channel_id in self._by_channel for name in channel_names(channel_id)]

    def status(self, streamer_id: int) -> tuple[Status, int | None] | None:
        """(status, livestream id) as last known, or None if not tracked."""
        state = self._states.get(streamer_id)
        return None if state is None else (state.status, state.livestream_id)

    def apply(self, ev: AppEvent) -> StatusChange | TitleUpdate | None:
        """The change one event makes, if any; never raises on bad payloads."""
        spec = _LIFECYCLE.get(ev.event)
        if spec is None:
            self.stats.ignore(ev.event)
            return None
        channel = channel_id_of(ev.channel) if ev.channel is not None else None
        streamer_id = self._by_channel.get(channel) if channel is not None else None
        if streamer_id is None:
            self.stats.stranger(ev.channel, ev.event)
            return None
        channel_id = self._states[streamer_id].channel_id
        assert channel_id is not None  # only streamers with a channel id have names
        try:
            livestream_id, title, occurred_at, live = self._read_payload(
                ev, spec, channel_id
            )
        except _Malformed as bad:
            self.stats.malformed_frame(
                bad.kind, channel=ev.channel, event=ev.event, detail=bad.detail
            )
            return None
        if not live:
            self.stats.ignore(ev.event + " (is_live=false)")
            return None
        self._states[streamer_id].last_event_mono = ev.received_mono
        return self._transition(
            streamer_id,
            spec.status,
            "pusher",
            ev.event,
            livestream_id,
            title,
            occurred_at,
            ev.received_at,
            ev.received_mono,
        )

    def set_status(
        self,
        streamer_id: int,
        status: Status,
        livestream_id: int | None,
        *,
        title: str | None = None,
        occurred_at: float | None = None,
        received_at: float,
        received_mono: float,
        event: str = "api",
        asked_at: float | None = None,
    ) -> StatusChange | None:
        """Record what the reconciler learned from the API (source "api"), same rules as events.

        Online while we believe online is a change only when it is another broadcast
        (livestream id differs, or the caller saw a later start time: see
        `kick_monitor.live_status.diff_by_streamer`). `asked_at`: when the API was asked
        (wall clock), so the writer can tell the verdict is older than a webhook."""
        if streamer_id not in self._states:
            return None
        result = self._transition(
            streamer_id,
            status,
            "api",
            event,
            livestream_id,
            title,
            occurred_at,
            received_at,
            received_mono,
            asked_at,
        )
        return result if isinstance(result, StatusChange) else None

    def confirm(
        self, streamer_id: int, *, received_at: float, received_mono: float, event: str = "reconcile",
        asked_at: float | None = None,
    ) -> StatusChange | None:
        """The channel's current status as a change (source "api"), leaving the state as it is.

        For an API verdict that agrees with what we know: sent anyway, it is newer than any
        older change still on its way to the database (a spool being replayed), so the row
        ends at this status. The writer records no history for it unless the row differed.
        None for an untracked channel or an unknown status.
        """
        state = self._states.get(streamer_id)
        if state is None or state.status == "unknown":
            return None
        livestream_id = state.livestream_id if state.status == "online" else None
        return self._change(
            streamer_id, state.status, "api", event, livestream_id, None, None, received_at, received_mono, asked_at
        )

    def _read_payload(
        self, ev: AppEvent, spec: _Lifecycle, channel_id: int
    ) -> tuple[int | None, str | None, float | None, bool]:
        """Validate a lifecycle payload: (livestream id, title, occurred_at, is_live)."""
        data = ev.data
        if type(data) is str:
            try:
                data = orjson.loads(data)
            except orjson.JSONDecodeError as exc:
                raise _Malformed(
                    _json_error_kind(exc, "bad_data_json"), str(exc)
                ) from None
        if type(data) is not dict:
            raise _Malformed("bad_type", f"data is {type(data).__name__}")
        stream = data.get("livestream")
        if stream is None:
            if spec.livestream_required:
                raise _Malformed("missing_field", "livestream")
            stream = {}
        elif type(stream) is not dict:
            raise _Malformed("bad_type", "livestream is not an object")

        livestream_id = stream.get("id")
        if livestream_id is None:
            if spec.livestream_required:
                raise _Malformed("missing_field", "livestream.id")
        elif not _valid_id(livestream_id):
            raise _Malformed("bad_type", f"livestream.id {_clip(livestream_id, 40)}")

        nested = stream.get("channel")
        if nested is not None and type(nested) is not dict:
            raise _Malformed("bad_type", "livestream.channel is not an object")
        nested_id = nested.get("id") if nested is not None else None
        claimed = [c for c in (stream.get("channel_id"), nested_id) if c is not None]
        if not claimed and spec.channel_required:
            raise _Malformed(
                "missing_field", "livestream.channel_id / livestream.channel.id"
            )
        for claim in claimed:
            if not _valid_id(claim):
                raise _Malformed("bad_type", f"channel id {_clip(claim, 40)}")
            if claim != channel_id:
                raise _Malformed(
                    "channel_mismatch", f"payload {claim} on channel {channel_id}"
                )

        if spec.status != "online":
            return livestream_id, None, None, True
        title = stream.get("session_title")
        if title is not None and type(title) is not str:
            self.stats.malformed_frame("bad_title", channel=ev.channel, event=ev.event)
            title = None
        created = stream.get("created_at")
        occurred_at = _epoch(created) if type(created) is str else None
        if created is not None and occurred_at is None:
            self.stats.malformed_frame(
                "bad_timestamp",
                channel=ev.channel,
                event=ev.event,
                detail=_clip(created) or "",
            )
        return livestream_id, title, occurred_at, stream.get("is_live") is not False

    def _transition(
        self,
        streamer_id: int,
        status: Status,
        source: Source,
        event: str,
        livestream_id: int | None,
        title: str | None,
        occurred_at: float | None,
        received_at: float,
        received_mono: float,
        asked_at: float | None = None,
    ) -> StatusChange | TitleUpdate | None:
        """Apply the de-duplication rules (class docstring) and update the state."""
        state = self._states[streamer_id]
        title_update = False
        if status == "online":
            same_stream = (
                livestream_id is not None and livestream_id == state.livestream_id
            )
            if (same_stream and state.status == "offline") or (
                    livestream_id is not None and livestream_id == state.ended_livestream_id):
                self.stats.stale += 1
                return None
            if same_stream and state.status == "online":
                if event != LIVESTREAM_UPDATED or title is None or title == state.title:
                    self.stats.duplicates += 1
                    return None
                title_update = True
        elif status == state.status and (livestream_id is None or livestream_id == state.livestream_id):
            self.stats.duplicates += 1
            return None
        # (offline again with another livestream id: a whole broadcast ended unseen; the
        # writer records its inferred start)
        if status == "online" and not same_stream:
            # another broadcast: what we knew of the previous one does not carry over — its id
            # neither, also after an end (an API start names no livestream: keeping the ended id
            # made the next `confirm` name the new broadcast with it, and its end an inferred end
            # of the old one — soak r4)
            state.started_at = occurred_at
            if livestream_id is None:
                state.livestream_id = None
        elif status == "online" and occurred_at is not None and state.started_at is None:
            state.started_at = occurred_at
        if status == "offline" and state.status == "online" and state.livestream_id is not None:
            state.ended_livestream_id = state.livestream_id
        state.status = status
        if livestream_id is not None:
            state.livestream_id = livestream_id
        if status == "offline" and livestream_id is not None:
            state.ended_livestream_id = livestream_id
        if title is not None:
            state.title = title
        change = self._change(
            streamer_id,
            status,
            source,
            event,
            livestream_id,
            title,
            occurred_at,
            received_at,
            received_mono,
            asked_at,
        )
        if title_update:
            self.stats.title_updates += 1
            return TitleUpdate(change)
        self.stats.changes += 1
        return change

    def _change(
        self,
        streamer_id: int,
        status: Status,
        source: Source,
        event: str,
        livestream_id: int | None,
        title: str | None,
        occurred_at: float | None,
        received_at: float,
        received_mono: float,
        asked_at: float | None = None,
    ) -> StatusChange:
        received_ns = max(int(received_at * 1e9), self._last_ns + 1)
        self._last_ns = received_ns
        prefix = "p" if source == "pusher" else "a"
        stream = "-" if livestream_id is None else livestream_id
        state = self._states[streamer_id]
        return StatusChange(
            change_id=f"{prefix}:{streamer_id}:{status}:{stream}:{received_ns}",
            channel_id=state.channel_id,
            status=status,
            source=source,
            event=event,
            livestream_id=livestream_id,
            title=title,
            occurred_at=occurred_at,
            received_at=received_at,
            received_mono=received_mono,
            shard=self.shard,
            generation=state.generation,
            seq=self._seq.next(),
            streamer_id=streamer_id,
            asked_at=asked_at,
        )
