"""Deciding what one batch of status changes does, in Python, before anything is written (issue 18).

The writer sees every change, so it orders each streamer's changes by `(generation, seq,
received_at, change_id)` here and works out — from the streamer rows it read (locked) at the
start of the transaction — which changes are newer than the row, which are transitions, which
broadcasts they start, touch or end (inferred ones included), which history rows to add and
the row's final state. PostgreSQL then only runs simple set-based writes (kick_monitor.status_store)
instead of the window functions, sorts and per-change CTE steps of the one-statement design
(measured: its CPU per change −6 to −26 % in W, the writer's +10–14 µs; docs/performance.md).

The rules are those of docs/architecture.md ("Ordering of changes"):
- "newer wins" by `(generation, seq)`; `received_at` breaks ties between changes without an
  order (0/0: spooled by an older release); an equal or older change is dropped;
- a change's previous status/livestream/start is the one before it in that order (the row's for
  the first), so online→offline in one batch is two history rows;
- online while online about another broadcast (another livestream id, or a start later than the
  known one by more than the tolerance) is the inferred end of the open one plus a new one (S4);
  an end naming a broadcast nobody saw start is its inferred start (plus the inferred end of
  the open one);
- webhook changes (issue 16) carry no generation: they are placed by the broadcast their
  `started_at` names (see `_StreamerPlanner._apply_webhook`), never by `(generation, seq)`, and never lower the
  row's order;
- a Pusher change of an earlier assignment generation than the row's (`is_old_lease`: the previous
  lease holder of the shard spooled it and it is replayed after the new owner wrote, issue 17) is a
  genuine observation: placed by its broadcast like a webhook (`_StreamerPlanner._apply_old_lease`),
  never by `(generation, seq)`, never lowering the row's order;
- an API verdict asked before a webhook changed the row's latest broadcast is stale and dropped
  (`is_stale`): ordered after the webhook by `(generation, seq)`, it would undo it.
Broadcast rows are described as spans (`Span`); placing a span on a row (by Pusher's livestream id
or its start within the tolerance) happens in SQL, where the existing rows are.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

from .messages import StatusChange

METADATA_EVENT = "livestream.metadata.updated"
INFERRED_EVENTS = {"ended": "inferred_end", "started": "inferred_start"}
# Seconds by which an API verdict must have been asked after a webhook's arrival to stand against it:
# the API may answer from just before the change, and the receiver's and worker's clocks may differ.
STALE_MARGIN = 1.0
START_SEEN_KEYS = {"pusher": "ps", "api": "aps", "webhook": "ws"}
END_SEEN_KEYS = {"pusher": "pe", "api": "ae", "webhook": "we"}


def micros(seconds: float | None) -> int | None:
    """Epoch seconds as PostgreSQL stores them (whole microseconds), for exact comparisons."""
    return None if seconds is None else round(seconds * 1_000_000)


@dataclass(slots=True)  # not frozen: a frozen dataclass costs ~1 µs more to build, 500 times a batch
class StreamerRow:
    """The streamer row as read (and locked) at the start of the batch's transaction.

    `last_*` describe its latest broadcast by start (None: it has none). `last_webhook_at`: when
    a webhook was the first to report that broadcast's start or end (our clock; None: never).
    """

    id: int
    username: str
    channel_id: int | None
    status: str
    generation: int
    seq: int
    last_event_us: int | None
    livestream_id: int | None
    last_livestream_id: int | None
    started_at: float | None
    broadcast_id: int | None
    last_id: int | None = None
    last_started_at: float | None = None
    last_ended: bool | None = None
    last_has_livestream: bool | None = None
    last_read: bool = True  # False: the latest broadcast was not read (`last_*` say nothing)
    last_ended_at: float | None = None
    last_webhook_at: float | None = None


Record = dict[str, object]
"""A row to write, as the write statement reads it (kick_monitor.status_store): short keys, and
no key for a NULL (json_to_recordset reads a missing key as NULL; every key costs parsing).

History rows (`status_events`): i change_id, d streamer_id, c channel_id, s status, p previous_status,
o source, e event, l livestream_id, t title, a occurred_at, r received_at, g/q order_generation/seq,
f inferred, k the key of the span (broadcast) it belongs to.
Row updates (`streamers`): d id, s status, l livestream_id, ll last_livestream_id, t title (online: the
new one, absent keeps it), k the span key of its open broadcast, kb keep the open broadcast, st its
start, ks keep the start, ch last_status_change, so last_seen_online, ev last_event_at (absent: keep),
g/q order_generation/seq.
"""


@dataclass(slots=True)
class Span:
    """What a batch says about one broadcast; `key` is unique in the batch.

    Placed in SQL: `fixed_id` is the row it is (the open or last broadcast), else, if `match`,
    the streamer's latest broadcast with the same livestream id (both known) or a start within
    the tolerance; else a new row if `insert`, else nothing is written.
    """

    key: int
    streamer_id: int
    fixed_id: int | None
    match: bool
    insert: bool
    started_at: float | None = None
    start_source: str | None = None
    start_title: str | None = None
    start_inferred: bool | None = None
    last_title: str | None = None
    category: str | None = None
    livestream_id: int | None = None
    ended_at: float | None = None
    end_source: str | None = None
    end_inferred: bool | None = None
    start_seen: dict[str, float] | None = None  # each source's first report (received_at)
    end_seen: dict[str, float] | None = None

    def start(self, at: float | None, source: str, title: str | None, inferred: bool) -> None:
        if self.start_source is None:
            self.started_at, self.start_source, self.start_title = at, source, title
        self.start_inferred = bool(self.start_inferred) or inferred

    def touch(self, change: StatusChange, *, seen: bool = True) -> None:
        """A report that the broadcast is on (its start or a confirmation): title, category, first seen."""
        if change.title is not None:
            self.last_title = change.title
        if change.category is not None:
            self.category = change.category
        if seen:
            self.seen_start(change.source, change.received_at)

    def seen_start(self, source: str, at: float) -> None:
        if self.start_seen is None:
            self.start_seen = {source: at}
        elif at < self.start_seen.get(source, at + 1):
            self.start_seen[source] = at

    def end(self, at: float | None, source: str, inferred: bool, received_at: float) -> None:
        if self.end_source is None:
            self.ended_at, self.end_source, self.end_inferred = at, source, inferred
        if self.end_seen is None:
            self.end_seen = {source: received_at}
        elif received_at < self.end_seen.get(source, received_at + 1):
            self.end_seen[source] = received_at

    def name(self, livestream_id: int | None) -> None:
        if self.livestream_id is None and livestream_id is not None:
            self.livestream_id = livestream_id

    def record(self) -> Record:
        """The span as the write statement reads it: k key, d streamer, f fixed row id, m match,
        n insert, st/ss/stt/si start (time, source, title, inferred), lt last title, cat category,
        l livestream id, en/es/ei end, ps/aps/ws and pe/ae/we each source's first start/end report."""
        record: Record = {"k": self.key, "d": self.streamer_id}
        if self.fixed_id is not None:
            record["f"] = self.fixed_id
        if self.match:
            record["m"] = True
        if self.insert:
            record["n"] = True
        if self.start_source is not None:
            record["st"], record["ss"] = self.started_at, self.start_source
            if self.start_title is not None:
                record["stt"] = self.start_title
        if self.start_inferred:
            record["si"] = True
        if self.last_title is not None:
            record["lt"] = self.last_title
        if self.category is not None:
            record["cat"] = self.category
        if self.livestream_id is not None:
            record["l"] = self.livestream_id
        if self.end_source is not None:
            record["en"], record["es"] = self.ended_at, self.end_source
            if self.end_inferred:
                record["ei"] = True
        if self.start_seen:
            for source, at in self.start_seen.items():
                record[START_SEEN_KEYS[source]] = at
        if self.end_seen:
            for source, at in self.end_seen.items():
                record[END_SEEN_KEYS[source]] = at
        return record


@dataclass(slots=True)
class Plan:
    """Everything one batch writes; `usernames` of the streamers with history rows (notifications)."""

    spans: list[Span] = field(default_factory=list)
    history: list[Record] = field(default_factory=list)
    rows: list[Record] = field(default_factory=list)
    usernames: dict[int, str] = field(default_factory=dict)


def order_key(change: StatusChange) -> tuple[int, int, int, str]:
    return (change.generation, change.seq, micros(change.received_at) or 0, change.change_id)


def is_newer(change: StatusChange, row: StreamerRow) -> bool:
    """"Newer wins": `(generation, seq, received_at)` against the row's (never a wall clock alone)."""
    if (change.generation, change.seq) != (row.generation, row.seq):
        return (change.generation, change.seq) > (row.generation, row.seq)
    received = micros(change.received_at) or 0
    return row.last_event_us is None or received > row.last_event_us


def is_stale(change: StatusChange, row: StreamerRow, tolerance: float) -> bool:
    """An API verdict whose question was asked before a webhook changed the row's latest broadcast
    (started or ended it first), within `STALE_MARGIN`: dropped, as the worker drops one older than
    a Pusher frame — ordered after the webhook by `(generation, seq)`, it would undo it (a false end,
    or an ended broadcast back). Not when that webhook is older than the row's last worker change
    (the workers' order already followed it), nor for a start later than that broadcast's (news the
    webhook cannot have undone). The next verdict, asked after the webhook, decides."""
    webhook_at = row.last_webhook_at
    if change.asked_at is None or webhook_at is None or change.source != "api":
        return False
    if row.last_event_us is not None and (micros(webhook_at) or 0) <= row.last_event_us:
        return False
    if (change.status == "online" and change.occurred_at is not None and row.last_started_at is not None
            and change.occurred_at > row.last_started_at + tolerance):
        return False
    return change.asked_at < webhook_at + STALE_MARGIN


def is_old_lease(change: StatusChange, row: StreamerRow) -> bool:
    """A Pusher change of an earlier assignment generation than the row's: observed while an
    earlier lease of its shard was held (spooled, replayed after the new owner wrote). A genuine
    observation, placed by its broadcast (`_StreamerPlanner._apply_old_lease`), never dropped."""
    return change.source == "pusher" and 0 < change.generation < row.generation


class LastBroadcastNeeded(Exception):
    """The plan needs the latest broadcast of rows read without it: read them again with it."""

    def __init__(self, streamer_ids: frozenset[int]) -> None:
        super().__init__(sorted(streamer_ids))
        self.streamer_ids = streamer_ids


def plan_batch(
    changes: Iterable[StatusChange], rows: dict[int, StreamerRow], tolerance: float
) -> Plan:
    """Plan a batch: `changes` keyed by `streamer_id` (resolved), `rows` by id; unknown ids are dropped."""
    by_streamer: dict[int, list[StatusChange]] = {}
    for change in changes:
        if change.streamer_id in rows:
            by_streamer.setdefault(change.streamer_id, []).append(change)
    plan = Plan()
    for streamer_id in sorted(by_streamer):
        _StreamerPlanner(rows[streamer_id], tolerance, plan).run(by_streamer[streamer_id])
    return plan


def _at(change: StatusChange) -> float:
    return change.occurred_at if change.occurred_at is not None else change.received_at


class _StreamerPlanner:
    """One streamer's changes, in order, against its row: the running state of the SQL it replaces."""

    def __init__(self, row: StreamerRow, tolerance: float, plan: Plan) -> None:
        self.row, self.tolerance, self.plan = row, tolerance, plan
        self.status = row.status
        self.previous_livestream = row.livestream_id if row.status == "online" else row.last_livestream_id
        self.previous_started = row.started_at
        self.segment = self._new_span(row.broadcast_id, match=False, insert=False)
        self.first_segment = self.segment
        self.moved = False  # a later segment than the row's open broadcast exists
        self.newest: StatusChange | None = None
        self.changed_at: float | None = None
        self.online_at: float | None = None
        self.title: str | None = None
        self.livestream_id = row.livestream_id
        self.last_livestream_id = row.last_livestream_id
        self.broadcast_started: float | None = row.started_at
        self.last_side: Span | None = None  # the row's last (ended) broadcast, when a webhook names it
        self.earlier: list[Span] = []  # earlier broadcasts webhooks named
        self.stepped: tuple[int, int] | None = None  # the order an old lease's history rows take (issue 17)

    # -- spans and history -----------------------------------------------------------------
    def _new_span(self, fixed_id: int | None, *, match: bool, insert: bool) -> Span:
        span = Span(len(self.plan.spans), self.row.id, fixed_id, match, insert)
        self.plan.spans.append(span)
        return span

    def _history(
        self, change: StatusChange, span: Span | None, *, status: str, previous: str, inferred: str | None = None,
        livestream_id: int | None = None, occurred_at: float | None = None, order: tuple[int, int] | None = None,
    ) -> None:
        """`inferred`: None for the change itself, else "ended"/"started" (a transition no source
        reported, with `livestream_id`/`occurred_at` of its own). `order`: the (generation, seq)
        the row is stamped with when not the change's own."""
        generation, seq = (change.generation, change.seq) if order is None else order
        record: Record = {
            "d": self.row.id, "s": status, "p": previous, "o": change.source, "r": change.received_at,
            "g": generation, "q": seq,
        }
        if inferred is None:
            record["i"], record["e"] = change.change_id, change.event
            livestream_id, occurred_at = change.livestream_id, change.occurred_at
            if change.title is not None:
                record["t"] = change.title
        else:
            record["i"], record["e"], record["f"] = f"{change.change_id}:{inferred}", INFERRED_EVENTS[inferred], True
        if livestream_id is not None:
            record["l"] = livestream_id
        if occurred_at is not None:
            record["a"] = occurred_at
        if change.channel_id is not None:
            record["c"] = change.channel_id
        if span is not None:
            record["k"] = span.key
        self.plan.history.append(record)
        self.plan.usernames[self.row.id] = self.row.username

    def _open_segment(self) -> Span:
        self.segment = self._new_span(None, match=True, insert=True)
        self.moved = True
        return self.segment

    def _changed(self, change: StatusChange) -> None:
        self.changed_at = change.received_at if self.changed_at is None else max(self.changed_at, change.received_at)

    def _seen_online(self, change: StatusChange) -> None:
        self.online_at = change.received_at if self.online_at is None else max(self.online_at, change.received_at)

    # -- the ordered changes of workers --------------------------------------------------------
    def run(self, changes: list[StatusChange]) -> None:
        row, tolerance = self.row, self.tolerance
        if len(changes) == 1 and changes[0].source != "webhook":  # the common case
            change = changes[0]
            fresh = change.asked_at is None or not is_stale(change, row, tolerance)
            ordered = changes if fresh and is_newer(change, row) else []
        else:
            ordered = sorted((c for c in changes if c.source != "webhook" and is_newer(c, row)
                              and (c.asked_at is None or not is_stale(c, row, tolerance))), key=order_key)
        for index, change in enumerate(ordered):
            if self._names_an_ended_broadcast(change) or self._confirms_another_livestream(change):  # soaks r4, r5
                ordered = [*ordered[:index], replace(change, livestream_id=None), *ordered[index + 1:]]
                change = ordered[index]
            self._apply(change)
        if ordered:
            self.newest = ordered[-1]
            self._settle(ordered[-1])
        webhooks = [c for c in changes if c.source == "webhook"]
        if len(webhooks) > 1:  # by the broadcast they are about, a start before its end
            webhooks.sort(key=lambda c: (c.started_at or c.occurred_at or 0.0, c.status == "offline", c.received_at))
        for change in webhooks:
            self._apply_webhook(change)
        old_lease = sorted((c for c in changes if is_old_lease(c, row)), key=order_key)
        if old_lease:
            self._apply_old_leases(old_lease)
        if ordered or webhooks or old_lease:
            self.plan.rows.append(self._row_update())

    # -- soak r4: an online naming an ended livestream ------------------------------------------
    def _names_an_ended_broadcast(self, change: StatusChange) -> bool:
        """An online naming the row's last livestream while the open broadcast has no id (the API started
        it) names an ended broadcast: a livestream id is one broadcast. A worker of an older release
        sends one in its `confirm` after an API start; named with it, the open broadcast's real end
        became a second end of the old one (an inferred end). Its id is dropped, the change kept."""
        return (change.status == "online" and self.status == "online" and self.previous_livestream is None
                and change.livestream_id is not None and change.livestream_id == self.row.last_livestream_id)

    def _confirms_another_livestream(self, change: StatusChange) -> bool:
        """An API online without a start time (a worker's `confirm`: what it believes, restated after
        the API agreed it is live) naming another livestream than the row's open broadcast: the id is
        the worker's belief, not an observation — a respawned worker's list can predate the broadcast
        the row has since recorded (soak r5: it named the streamer's previous, ended livestream, and
        the row's broadcast got an inferred end and the ended one a second start). The API agreed the
        streamer is live: a touch of the open broadcast, its id dropped, the change kept."""
        return (change.source == "api" and change.status == "online" and change.occurred_at is None
                and self.status == "online" and self.previous_livestream is not None
                and change.livestream_id is not None and change.livestream_id != self.previous_livestream)

    def _apply(self, change: StatusChange) -> None:
        previous, previous_livestream = self.status, self.previous_livestream
        online, offline = change.status == "online", change.status == "offline"
        is_transition = change.status != previous
        new_broadcast = False
        if online and previous == "online":
            if change.livestream_id is not None and previous_livestream is not None:
                new_broadcast = change.livestream_id != previous_livestream
            elif change.occurred_at is not None and self.previous_started is not None:
                new_broadcast = change.occurred_at > self.previous_started + self.tolerance
        unseen = False
        if offline and change.livestream_id is not None:
            if previous_livestream is not None:
                unseen = change.livestream_id != previous_livestream
            elif previous != "online":
                if not self.row.last_read:
                    raise LastBroadcastNeeded(frozenset({self.row.id}))
                unseen = not self._late_end_of_last(change)
        at = _at(change)
        if is_transition or new_broadcast or unseen:
            self._changed(change)
        if online:
            self._seen_online(change)
        if new_broadcast or (unseen and previous == "online"):  # the open broadcast's end, implied
            self.segment.end(at, change.source, True, change.received_at)
            self._history(change, self.segment, status="offline", previous="online", inferred="ended",
                          livestream_id=previous_livestream, occurred_at=at,
                          order=(change.generation, change.seq - 2))
        if (is_transition and online) or new_broadcast or unseen:
            span = self._open_segment()
            span.start(at, change.source, change.title, unseen)
            if unseen:
                span.name(change.livestream_id)
                self._history(change, span, status="online", previous="offline", inferred="started",
                              livestream_id=change.livestream_id, order=(change.generation, change.seq - 1))
            else:
                span.touch(change)
                span.name(change.livestream_id)
                self._history(change, span, status="online",
                              previous="offline" if new_broadcast else previous)
        elif online:  # the same broadcast again: title, sources
            self.segment.touch(change)
            self.segment.name(change.livestream_id)
        if (is_transition and offline) or unseen:
            self.segment.end(at, change.source, False, change.received_at)
            self.segment.name(change.livestream_id)
            self._history(change, self.segment, status="offline", previous="online" if unseen else previous)
        elif offline and change.livestream_id is not None and change.livestream_id == previous_livestream:
            self._seen_end(change, at)
        # what the next change compares with
        self.status = change.status
        self.previous_livestream = change.livestream_id
        if online and change.occurred_at is not None:
            self.previous_started = (
                change.occurred_at if self.previous_started is None else max(self.previous_started, change.occurred_at)
            )

    def _seen_end(self, change: StatusChange, at: float) -> None:
        """An end of the broadcast the row already shows ended (another source, a webhook, was
        first): only this source's seen time, on the broadcast with that livestream id."""
        if self.segment.end_source is not None:  # ended earlier in this batch: that span
            self.segment.end(at, change.source, False, change.received_at)
            return
        side = self._new_span(None, match=True, insert=False)
        side.name(change.livestream_id)
        side.end(at, change.source, False, change.received_at)

    def _late_end_of_last(self, change: StatusChange) -> bool:
        """Whether an end naming a livestream, on a row that knows none and is not online, is
        the late end of the latest broadcast: only one without an id either (the API saw it),
        still open or ended no more than the tolerance before this end arrived. An end long
        after that broadcast ended is of another one nobody saw start (its start frame was not
        delivered: the soak's lost transition of issue 18)."""
        row = self.row
        if row.last_id is None or row.last_has_livestream:
            return False
        return row.last_ended_at is None or change.received_at <= row.last_ended_at + self.tolerance

    def _settle(self, newest: StatusChange) -> None:
        """The row's broadcast columns after the ordered changes (what the SQL it replaces set)."""
        last = self.segment
        if newest.status != "online":
            self.livestream_id = None
        elif self.moved:
            self.livestream_id = last.livestream_id if last.livestream_id is not None else newest.livestream_id
        elif newest.livestream_id is not None:
            self.livestream_id = newest.livestream_id
        if newest.livestream_id is not None:
            self.last_livestream_id = newest.livestream_id
        elif self.moved and last.livestream_id is not None:
            self.last_livestream_id = last.livestream_id
        if newest.status == "online" and newest.title is not None:
            self.title = newest.title
        self.status = newest.status
        if self.moved:
            self.broadcast_started = last.started_at

    def _row_update(self) -> Record:
        generation, seq = self.order
        record: Record = {"d": self.row.id, "s": self.status, "g": generation, "q": seq}
        if self.status == "online":
            if self.moved:
                record["k"], record["st"] = self.segment.key, self.broadcast_started
            else:
                record["kb"] = record["ks"] = True
            if self.livestream_id is not None:
                record["l"] = self.livestream_id
            if self.title is not None:
                record["t"] = self.title
        for key, value in (("ll", self.last_livestream_id), ("ch", self.changed_at), ("so", self.online_at)):
            if value is not None:
                record[key] = value
        if self.newest is not None:
            record["ev"] = self.newest.received_at
        return record

    # -- webhooks (issue 16) ---------------------------------------------------------------
    @property
    def order(self) -> tuple[int, int]:
        """The row's (generation, seq) now: what a webhook's history rows are stamped with."""
        if self.stepped is not None:
            return self.stepped
        newest = self.newest
        return (self.row.generation, self.row.seq) if newest is None else (newest.generation, newest.seq)

    def _current(self) -> tuple[Span, float | None, bool] | None:
        """The row's broadcast now (its span, start, whether open); None if no broadcast is known."""
        if self.status == "online":
            return self.segment, (self.segment.started_at if self.moved else self.broadcast_started), True
        if self.moved:
            return self.segment, self.segment.started_at, False
        if self.first_segment.end_source is not None:  # the row's open broadcast ended in this batch
            return self.first_segment, self.row.started_at, False
        if self.row.last_id is None:
            return None
        if self.last_side is None:
            self.last_side = self._new_span(self.row.last_id, match=False, insert=False)
        return self.last_side, self.row.last_started_at, not self.row.last_ended

    def _relation(self, started: float | None, current_start: float | None) -> str:
        if started is None or current_start is None:
            return "same"
        if abs(started - current_start) <= self.tolerance:
            return "same"
        return "later" if started > current_start else "earlier"

    def _apply_webhook(self, change: StatusChange) -> None:
        """Kick's webhook, placed by the broadcast its `started_at` names (docs/architecture.md,
        "Across sources"): about a later broadcast than the row's, it applies (a new one; an end
        of one nobody saw start is its inferred start too); about the row's, online while online
        touches it, an end ends it, a start of an ended one only records its seen time; about an
        earlier one, only its seen times (and its end if never seen). The row's (generation, seq)
        stays, so a worker's later frames compare as before.
        """
        if change.status not in ("online", "offline"):
            if change.event == METADATA_EVENT and self.status == "online":
                self.segment.touch(change, seen=False)
                if change.title is not None:
                    self.title = change.title
            return
        online = change.status == "online"
        started = change.started_at if change.started_at is not None else (change.occurred_at if online else None)
        current = self._current()
        if current is None:
            self._webhook_later(change, started, None)
            return
        span, current_start, is_open = current
        relation = self._relation(started, current_start)
        if relation == "later":
            self._webhook_later(change, started, span)
        elif relation == "same" and online:
            if is_open and self.status == "online":
                span.touch(change)
                self._seen_online(change)
                if change.title is not None:
                    self.title = change.title
            else:
                span.seen_start(change.source, change.received_at)
        elif relation == "same":
            span.end(_at(change), change.source, False, change.received_at)  # its time only if never seen
            if self.status == "online":
                self._changed(change)
                self._history(change, span, status="offline", previous="online", order=self.order)
                self.status, self.livestream_id = "offline", None
        else:  # an earlier broadcast: its seen times; one nobody saw at all is recorded as such
            side = self._earlier(started)
            side.insert = side.insert or not online
            if online:
                side.seen_start(change.source, change.received_at)
            else:
                side.end(_at(change), change.source, False, change.received_at)

    # -- Pusher changes of an earlier lease (issue 17) -----------------------------------------
    def _current_livestream(self) -> int | None:
        """The livestream id of the row's broadcast now (as `_current` names it), if known."""
        if self.status == "online":
            return self.livestream_id if self.livestream_id is not None else self.segment.livestream_id
        if self.moved:
            return self.segment.livestream_id
        if self.first_segment.end_source is not None:
            return self.row.livestream_id
        return self.row.last_livestream_id

    def _current_known(self) -> bool:
        """Whether `_current` can tell the row's broadcast (an offline row's latest one must be read)."""
        return self.status == "online" or self.moved or self.first_segment.end_source is not None or self.row.last_read

    def _apply_old_leases(self, changes: list[StatusChange]) -> None:
        """An earlier lease's changes, in their order. They were all observed before the row's own
        order was written (a later generation is handed out only after the lease moved), so they
        never leave an offline row online: a broadcast they start that the batch does not end had
        ended by then (its inferred end, at the row's last event) — unless they were received after
        that event (a paused node's buffered frames, read when it woke: news, left open). Their history rows are stamped
        one `seq` above the row's order, and so is the row: in the writer's order (generation, seq,
        received_at) they follow the row's history, whose chain they continue, and precede the new
        owner's next change (its `seq`, a later nanosecond, is larger still)."""
        was_online, changed_at, recorded = self.status == "online", self.changed_at, len(self.plan.history)
        generation, seq = self.order
        self.stepped = (generation, seq + 1)  # after the row's history in the writer's order, before anything newer
        for change in changes:
            self._apply_old_lease(change)
        if len(self.plan.history) == recorded:
            self.stepped = None  # nothing recorded: the row's order stays as it is
        if was_online or self.status != "online":
            return
        last = changes[-1]
        row_event = None if self.row.last_event_us is None else self.row.last_event_us / 1_000_000
        if row_event is None or last.received_at >= row_event:
            # Read after the row's last event: frames a paused node found buffered when it woke, not a
            # spool of its lease. The broadcast is news to the row; the new owner sees it too (or has).
            return
        at = row_event
        self.segment.end(at, last.source, True, last.received_at)
        self._history(last, self.segment, status="offline", previous="online", inferred="ended",
                      livestream_id=self.livestream_id, occurred_at=at, order=self.order)
        self.status, self.livestream_id, self.changed_at = "offline", None, changed_at

    def _apply_old_lease(self, change: StatusChange) -> None:
        """A Pusher change observed under a lease that has moved on since (replayed from a spool
        after the new owner wrote): a genuine observation, placed by its broadcast the way a webhook
        is (`_apply_webhook`) instead of losing by `(generation, seq)`. The broadcast is told by its
        livestream id, else by its start within the tolerance: about a later broadcast than the
        row's, it starts (or, an end, starts and ends) it — an offline row stays offline
        (`_apply_old_leases`); about the row's own, online touches it
        (open) or records its Pusher seen time (ended), an end ends it; about an earlier one, only
        its seen times. The row's (generation, seq) stays: the new owner's next change compares as
        before, and the row never moves backwards.
        """
        online = change.status == "online"
        started = change.occurred_at if online else None
        livestream = change.livestream_id
        known = self._current_livestream()
        if livestream is not None and known is not None and livestream == known:
            relation = "same"
        elif livestream is None and not online:  # an end naming no broadcast: never the end of an open one
            relation = "elsewhere" if self.status == "online" else "same"
        elif not self._current_known():
            if known is None:
                raise LastBroadcastNeeded(frozenset({self.row.id}))  # read the row's latest broadcast
            # Another broadcast than the offline row's last one, whose start was not read (the read
            # asked for covers rows that name no livestream only): one the new owner never saw — it
            # saw the row's last one and nothing since, or it would name this one — so a later one.
            relation = "later"
        elif (current := self._current()) is None:
            relation = "later"
        else:
            relation = self._relation(started, current[1])
            if relation == "same" and livestream is not None and known is not None:
                relation = "later" if started is not None and current[1] is not None and started > current[1] \
                    else "elsewhere"  # two livestream ids, starts within the tolerance or unknown
            elif relation == "same" and not online and current[1] is not None and _at(change) < current[1]:
                # An end seen before the row's broadcast started (the API's start, no livestream id to
                # compare): the end of an earlier one, not of this one (cluster test, PostgreSQL down
                # longer than the TTL: a spooled end took the new owner's online back)
                relation = "elsewhere"
        if relation == "later":
            self._old_lease_later(change, started)
        elif relation == "same":
            self._old_lease_same(change)
        else:  # an earlier broadcast, or an end of one that is not the open one: its seen times if recorded
            side = self._new_span(None, match=True, insert=False)
            side.name(livestream)
            if online:
                side.start(started, change.source, None, False)  # matched by start when it has no id
                side.seen_start(change.source, change.received_at)
            else:
                side.end(_at(change), change.source, False, change.received_at)

    def _old_lease_same(self, change: StatusChange) -> None:
        current = self._current()
        if current is None:  # known only by livestream id (an offline row whose last broadcast was not read)
            span = self._new_span(None, match=True, insert=False)
            span.name(change.livestream_id)
            is_open = False
        else:
            span, _, is_open = current
        if change.status == "online":
            if is_open and self.status == "online":
                span.touch(change)
                span.name(change.livestream_id)
                self._seen_online(change)
            else:
                span.seen_start(change.source, change.received_at)
            return
        span.end(_at(change), change.source, False, change.received_at)  # its time only if never seen
        if self.status == "online":
            self._changed(change)
            self._history(change, span, status="offline", previous="online", order=self.order)
            self.status, self.livestream_id = "offline", None

    def _old_lease_later(self, change: StatusChange, started: float | None) -> None:
        current = self._current()
        self._webhook_later(change, started, None if current is None else current[0])
        self.segment.name(change.livestream_id)
        if change.livestream_id is not None:
            self.last_livestream_id = change.livestream_id
            if self.status == "online":
                self.livestream_id = change.livestream_id

    def _earlier(self, started: float | None) -> Span:
        """The span of an earlier broadcast a webhook names: one per broadcast in a batch (two spans
        placed on one row would leave only the last one's times)."""
        for span in self.earlier:
            if started is None or span.started_at is None or abs(span.started_at - started) <= self.tolerance:
                return span
        span = self._new_span(None, match=True, insert=False)
        span.start(started, "webhook", None, True)
        self.earlier.append(span)
        return span

    def _webhook_later(self, change: StatusChange, started: float | None, span: Span | None) -> None:
        """A webhook about a broadcast that started after the row's: a new broadcast."""
        online = change.status == "online"
        start_at = started if started is not None else _at(change)
        self._changed(change)
        if self.status == "online" and span is not None:  # the open broadcast ended unseen
            span.end(start_at, change.source, True, change.received_at)
            self._history(change, span, status="offline", previous="online", inferred="ended",
                          livestream_id=self.livestream_id, occurred_at=start_at, order=self.order)
        new = self._open_segment()
        new.start(start_at, change.source, change.title, not online)
        if online:
            new.touch(change)
            self._history(change, new, status="online", previous="offline" if span is not None else self.status,
                          order=self.order)
            self._seen_online(change)
            self.status, self.livestream_id, self.broadcast_started = "online", None, start_at
            if change.title is not None:
                self.title = change.title
            return
        self._history(change, new, status="online", previous="offline", inferred="started", order=self.order)
        new.end(_at(change), change.source, False, change.received_at)
        self._history(change, new, status="offline", previous="online", order=self.order)
        self.status, self.livestream_id = "offline", None


def last_broadcast_wanted(changes: Sequence[StatusChange]) -> tuple[set[int], list[int]]:
    """Rows whose latest broadcast the plan may need: those with an end naming a livestream (used
    only if the row knows none), and (always) those with a webhook change or an API verdict that
    says when it was asked (`is_stale`)."""
    ends = {c.streamer_id for c in changes if c.status == "offline" and c.livestream_id is not None}
    always = sorted({c.streamer_id for c in changes if c.source == "webhook" or c.asked_at is not None})
    return ends, always


def affected_ids(changes: Sequence[StatusChange]) -> tuple[list[int], list[int]]:
    """Row ids to read, and channel ids of changes spooled by an older release (no row id)."""
    ids = sorted({c.streamer_id for c in changes if c.streamer_id})
    channels = sorted({c.channel_id for c in changes if not c.streamer_id and c.channel_id is not None})
    return ids, channels
