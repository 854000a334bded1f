"""A shard worker: one synchronous process, one Pusher connection, one shard of streamers.

The main loop is a single `select()` over the Pusher socket, the planner's assignment
channel (which streamers to watch: `kick_monitor.assignment`), the writer connection, the
supervisor's control channel. Frames become typed `StatusChange`s (kick_monitor.events)
and go to the writer through the acknowledged hand-off (kick_monitor.handoff). API
reconciliation is asked of the planner over the assignment channel (it holds the tree's one
Kick API client), so a slow Kick API never delays a frame and a worker runs no HTTP; its
verdicts are applied in the main loop as the answers come (at most once a second), and only
for streamers that saw no frame since asked.

Streamers are keyed by their row id (`StreamerRef.streamer_id`). Those with a channel id
are on Pusher; those without are watched by reconciliation alone (by user id), every
`reconcile_interval_without_pusher`, and join Pusher when the planner sends them again with
a channel id.
"""

from __future__ import annotations

import gc
import logging
import os
import time
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from kick_monitor.assignment import AssignmentClient
from kick_monitor.config import PUSHER_OFF
from kick_monitor.events import LIFECYCLE_EVENTS, EventStats, StatusTracker, TitleUpdate, channel_names
from kick_monitor.exitcodes import EX_CONFIG
from kick_monitor.handoff import ChangeSender, overflow_spool
from kick_monitor.live_status import diff_by_streamer
from kick_monitor.messages import (
    Assign,
    LiveAnswer,
    ReconcileDone,
    ReconcileRequest,
    StatusChange,
    StreamerRef,
    Subscribe,
    Unsubscribe,
    WorkerState,
)
from kick_monitor.metric_deltas import CounterDeltas
from kick_monitor.preload import release_free_memory
from kick_monitor.pusher import PusherFatalError, PusherSession
from kick_monitor.role import HEARTBEAT_EVERY, Role, RoleContext, RoleFatal

log = logging.getLogger("kick_monitor.worker")

REPORT_EVERY = 1.0  # seconds between metric reports
LEAVE_WAIT = 1.0  # at most, at a warm stop: reading what Pusher sent before our unsubscribes
ACK_WAIT = 2.0  # at most, from subscribing streamers until they are reconciled (the server's answers first)
ANSWERS_EVERY = 1.0  # seconds: the API answers of a reconciliation are applied at most this often, and at its end
TRIM_AFTER = 500  # streamers in one message or API answer after which freed memory goes back to the kernel


def trim_after_burst() -> None:
    """A full collection, then the freed heap back to the kernel (`release_free_memory`).

    Only a full collection empties the interpreter's free lists: pickling a batch of changes keeps one
    argument tuple per change alive until the dump ends (StatusChange.__reduce__, memoized), and 2,000
    of them (0.34 MB) then stayed in the tuple free list for good after the first reconciliation
    (measured, tracemalloc). A few ms, after bursts of more than TRIM_AFTER streamers only."""
    gc.collect()
    release_free_memory()


def lower_priority(increment: int) -> None:
    """Run `increment` nicer than the coordinator that forked us (settings.worker_nice): on a busy host
    the scheduler then favours the writer, the one serial stage every change goes through, over the
    workers feeding it (S2's p99 85 -> 69 and 111 -> 84 ms at 5, two interleaved pairs;
    docs/performance.md). Only ever raised, which needs no privilege; a refusal is logged, not fatal."""
    if increment <= 0:
        return
    try:
        os.nice(increment)
    except OSError as exc:
        log.warning("could not lower the worker's CPU priority by %d: %s", increment, exc)


class Reconciliation:
    """Asks the planner for API reconciliation passes and keeps the one asked until it ends.

    The planner holds the tree's one Kick API client (`kick_monitor.reconcile_service`): a worker
    runs no HTTP, no OAuth and no budget connection of its own (docs/performance.md, round 15: those
    copied ~3.5 MB into every worker). It sends the streamer ids to ask about; each request's answer
    comes back as it arrives (after a reconnect most streamers are repaired within the first
    requests, not after a pass the shared API budget spreads over seconds or minutes), and the main
    loop decides. One pass at a time; a pass cut by a planner restart is asked again on reconnection.
    """

    def __init__(self, assignments: AssignmentClient, shard: int) -> None:
        self.assignments = assignments  # holds the pass asked and not ended (`request`)
        self.shard = shard
        self.pass_id = 0

    def running(self) -> bool:
        return self.assignments.request is not None

    def start(self, streamers: tuple[StreamerRef, ...]) -> bool:
        if self.running():
            return False
        self.pass_id += 1
        self.assignments.ask(ReconcileRequest(self.shard, self.pass_id, tuple(ref.streamer_id for ref in streamers)))
        return True

    def take(self, reply: LiveAnswer | ReconcileDone) -> bool:
        """Whether the planner's reply belongs to the pass asked now (not a late one); its end ends it."""
        asked = self.assignments.request
        if asked is None or reply.pass_id != asked.pass_id:
            return False
        if isinstance(reply, ReconcileDone):
            self.assignments.finished(reply.pass_id)
        return True


class ShardWorker(Role):
    """Runs in the forked worker process; see the module docstring."""

    kind = "worker"

    def __init__(self, ctx: RoleContext) -> None:
        super().__init__(ctx)
        assert ctx.shard is not None
        settings, shard = self.settings, ctx.shard
        self.shard = shard
        self.refs: dict[int, StreamerRef] = {}
        self.stats = EventStats(shard)
        self.tracker = StatusTracker((), shard=shard, stats=self.stats)
        self.assignments = AssignmentClient(ctx.planner_address, shard)
        self.sender = ChangeSender(
            ctx.writer_address, sender=f"shard-{shard}", max_unacked=settings.handoff_max_unacked,
            overflow=overflow_spool(settings.data_dir / "spool" / f"worker-{shard}", settings.spool_max_bytes),
        )
        self.session = PusherSession(
            settings.pusher_url,
            activity_timeout=settings.activity_timeout,
            pong_timeout=settings.pong_timeout,
            connect_timeout=settings.connect_timeout,
            shard=shard,
            app_events=LIFECYCLE_EVENTS,  # chat and goal noise is dropped before decoding `data`
            event_stats=self.stats,
        )
        # issue 16: pusher_url=off (webhook-only deployments): the session is closed for good, so it
        # never connects; every streamer counts as unwatched and is reconciled on that interval.
        self.pusher_off = settings.pusher_url == PUSHER_OFF
        if self.pusher_off:
            self.session.close()
        self.reconciliation = Reconciliation(self.assignments, shard)
        # Channels whose status we took from the database rather than saw ourselves: the
        # writer may still hold older changes for them (a spool from before a restart), so
        # the first API verdict for each is committed even where it agrees (see confirm()).
        self.unconfirmed: set[int] = set()
        self.generation = 0
        self.next_reconcile = float("inf")
        self.reconcile_again = False  # one was due while another ran: start it when that ends
        self.repaired_this_pass = 0  # of the running reconciliation, applied as its answers come
        self.answered_this_pass = 0
        self.answered_since_trim = 0  # API answers applied since freed memory was last given back
        self.held_answers: list[LiveAnswer] = []  # API answers not applied yet (ANSWERS_EVERY)
        self.answers_due = float("inf")
        self.answers_applied_at = float("-inf")
        # Streamers without a channel id (no Pusher) are reconciled on their own, shorter, interval.
        self.next_reconcile_unwatched = float("inf")
        self.unwatched_again = False
        # Streamers just subscribed (a hand-over, issue 17): reconciled once the server answered their
        # subscriptions, so the API is asked after our listening began, never before it.
        self.to_reconcile: set[int] = set()
        self.reconcile_by = float("inf")
        # Streamers unsubscribed whose frames may still be on their way: tracked until the session's
        # barrier after the unsubscribes passes (by barrier number), then forgotten (issue 17).
        self.leaving: dict[int, list[int]] = {}
        self.frames = 0
        self.changes_sent = 0
        self._next_report = 0.0
        self._deltas = CounterDeltas()  # running totals already exported as counter increments
        # With metrics on, frames by lifecycle event and changes by (status, source), counted here and
        # exported once a second (`report`): a prometheus_client `labels().inc()` in multiprocess mode
        # costs ~4.4-5.4 µs, paid per frame and per change before (measured), a dict increment ~0.1.
        self.frames_by_event: dict[str, int] = {}
        self.changes_by_kind: dict[tuple[str, str], int] = {}

    # -- the role ------------------------------------------------------------------------
    def boot(self) -> None:
        lower_priority(self.settings.worker_nice)
        self.schedule_unwatched(time.monotonic())  # those need no Pusher connection to be watched
        if self.pusher_off:
            self.next_reconcile_unwatched = time.monotonic() + 1.0
        if self.pusher_off:
            log.info("Pusher is off (pusher_url=off): every streamer is reconciled every %ss",
                     self.settings.reconcile_interval_without_pusher)

    def reconfigure(self, changed: set[str]) -> None:
        if "reconcile_interval" in changed:
            interval = self.settings.reconcile_interval
            self.next_reconcile = time.monotonic() + interval if interval > 0 else float("inf")
        if "reconcile_interval_without_pusher" in changed:
            self.schedule_unwatched(time.monotonic())

    def step(self) -> None:
        """One turn of the loop: wait for anything, then serve each source."""
        now = time.monotonic()
        rlist: list[Any] = []
        ws_fd = self.session.fileno()
        if ws_fd is not None:
            rlist.append(ws_fd)
        sender_fd = self.sender.fileno()
        if sender_fd is not None and self.sender.wants_read(now):  # an ack not yet overdue waits for another wake-up
            rlist.append(sender_fd)
        planner_fd = self.assignments.fileno()
        if planner_fd is not None:
            rlist.append(planner_fd)
        wlist = [sender_fd] if sender_fd is not None and self.sender.wants_write else []
        if planner_fd is not None and self.assignments.wants_write:
            wlist.append(planner_fd)
        timeout = min(
            self.session.next_timeout(now),
            self.sender.next_timeout(now),
            self.assignments.next_timeout(now),
            HEARTBEAT_EVERY,
            max(0.0, self.next_reconcile - now),
            max(0.0, self.next_reconcile_unwatched - now),
            max(0.0, self.reconcile_by - now),
            max(0.0, self.answers_due - now),
        )
        if self.session.has_buffered_data():
            timeout = 0.0
        readable, writable = self.wait(rlist, wlist, timeout)
        now = time.monotonic()
        self.read_pusher(now, ws_fd is not None and ws_fd in readable)
        if self.session.generation != self.generation:
            self.on_connected(now)
        self.sender.service(now, sender_fd in readable if sender_fd else False, bool(sender_fd in writable))
        planner_readable = planner_fd is not None and planner_fd in readable
        for message in self.assignments.service(now, planner_readable):
            if isinstance(message, (LiveAnswer, ReconcileDone)):
                self.take_reconciliation(message, now)
            else:
                self.apply_assignment(message)
        if self.leaving:
            self.forget_left()
        if self.held_answers and now >= self.answers_due:
            self.apply_held_answers(now)
        if self.to_reconcile:
            self.reconcile_subscribed(now)
        if now >= self.next_reconcile or (self.reconcile_again and not self.reconciliation.running()):
            self.start_reconcile(now)
        elif now >= self.next_reconcile_unwatched or (self.unwatched_again and not self.reconciliation.running()):
            self.start_unwatched_reconcile(now)
        if now >= self._next_report:
            self._next_report = now + REPORT_EVERY
            self.report()

    # -- Pusher ------------------------------------------------------------------------
    def read_pusher(self, now: float, readable: bool) -> None:
        try:
            events = self.session.service(now, readable)
        except PusherFatalError as exc:
            self.session.close()
            raise RoleFatal(
                EX_CONFIG,
                f"Pusher refused us for good (code {exc.code}: {exc.message});"
                " check KICK_MONITOR_PUSHER_URL and the app key",
            ) from None
        if not events:
            return
        changes: list[StatusChange] = []
        for ev in events:
            self.frames += 1
            result = self.tracker.apply(ev)
            if isinstance(result, StatusChange):
                changes.append(result)
            elif isinstance(result, TitleUpdate):
                changes.append(result.change)
        if self.telemetry.enabled:
            self._count_frames(events)
        if changes:
            self.send(changes)

    def on_connected(self, now: float) -> None:
        """A new Pusher connection: everything was resubscribed; reconcile what we missed."""
        self.generation = self.session.generation
        self._next_report = 0.0  # tell the planner at once: the node takes shards once on Pusher (issue 17)
        log.info("connected to Pusher", extra={"socket_id": self.session.socket_id})
        self.start_reconcile(now)

    # -- reconciliation -----------------------------------------------------------------
    def start_reconcile(self, now: float) -> None:
        interval = self.settings.reconcile_interval
        self.next_reconcile = now + interval if interval > 0 else float("inf")
        self.reconcile_again = False
        self.schedule_unwatched(now)  # a full one covers them too
        self._reconcile(self._snapshot())

    def schedule_unwatched(self, now: float) -> None:
        interval = self.settings.reconcile_interval_without_pusher
        self.next_reconcile_unwatched = now + interval if interval > 0 else float("inf")
        self.unwatched_again = False

    def start_unwatched_reconcile(self, now: float) -> None:
        """Reconcile only the streamers Pusher cannot tell us about (no channel id)."""
        self.schedule_unwatched(now)
        if self.pusher_off and not self.refs:
            self.next_reconcile_unwatched = now + 1.0  # no Pusher connect to start from: once the shard arrives
        unwatched = tuple(ref for ref in self.refs.values() if ref.channel_id is None or self.pusher_off)
        if unwatched and not self.reconciliation.start(unwatched) and self.reconciliation.running():
            self.unwatched_again = True

    def _reconcile(self, streamers: tuple[StreamerRef, ...]) -> None:
        """Start a reconciliation; if one is running, run a full one right after it.

        The running one may have asked the API before events we have just lost (a reconnect
        during a slow reconciliation): skipping ours would leave them unrepaired until the
        next interval.
        """
        if not self.reconciliation.start(streamers) and self.reconciliation.running():
            self.reconcile_again = True

    def take_reconciliation(self, reply: LiveAnswer | ReconcileDone, now: float) -> None:
        """A reply of the planner to our pass: hold an answer until due (`ANSWERS_EVERY`); at the pass's
        end apply what is held, then end it."""
        if not self.reconciliation.take(reply):
            return
        if isinstance(reply, ReconcileDone):
            self.apply_held_answers(now)
            self.end_reconciliation(reply)
            return
        if not self.held_answers:
            self.answers_due = max(now, self.answers_applied_at + ANSWERS_EVERY)
        self.held_answers.append(reply)

    def apply_held_answers(self, now: float) -> None:
        """The verdicts of every answer held, in one batch to the writer: a batch with an API verdict
        costs the writer a third round trip (the latest broadcast, read again after the locks), so at
        most one such batch a second from each worker rather than one per request."""
        changes: list[StatusChange] = []
        for answer in self.held_answers:
            changes += self.verdicts(answer.asked_mono, answer.live)
            self.answered_since_trim += len(answer.live)
        self.held_answers.clear()
        self.answers_due = float("inf")
        self.answers_applied_at = now
        if changes:
            self.send(changes)
        if self.answered_since_trim > TRIM_AFTER:
            self.trim_during_pass()

    def trim_during_pass(self) -> None:
        """Give back, while a pass runs, what its answers freed. A pass the shared API budget spreads
        over minutes kept ~1.5–2 MB
        resident until its end: most of a respawned worker's life in the soak, read by the slope
        rule as growth. `malloc_trim` only, no collection: at most once a second (ANSWERS_EVERY)."""
        self.answered_since_trim = 0
        release_free_memory()

    def verdicts(self, asked_mono: float, answer: dict[int, Any]) -> list[StatusChange]:
        """One API request's verdicts: repair where the API disagrees, confirm the streamers just
        subscribed; a streamer with a frame read since `asked_mono` keeps what the frame said."""
        self.answered_this_pass += len(answer)
        tracker = self.tracker
        known = {
            sid: (st[0], st[1], tracker.started_at(sid))
            for sid in answer if (st := tracker.status(sid)) is not None
        }
        changes: list[StatusChange] = []
        # When the question was sent, on the wall clock the writer compares webhooks with.
        asked_at = time.time() - (time.monotonic() - asked_mono)
        for streamer_id, info in diff_by_streamer(known, answer, self.settings.broadcast_match_tolerance):
            if tracker.last_event_mono(streamer_id) >= asked_mono:
                # A frame arrived after we asked (even one that changed nothing, e.g. the
                # offline we already believed): it is newer than this answer.
                continue
            change = tracker.set_status(
                streamer_id, "online" if info.is_live else "offline", info.livestream_id,
                title=info.title, occurred_at=info.started_at if info.is_live else None,
                received_at=time.time(), received_mono=time.monotonic(), event="reconcile",
                asked_at=asked_at,
            )
            if change is not None:
                changes.append(change)
        self.repaired_this_pass += len(changes)
        changed = {change.streamer_id for change in changes}
        for streamer_id in sorted(self.unconfirmed & answer.keys()):
            self.unconfirmed.discard(streamer_id)
            if streamer_id in changed or tracker.last_event_mono(streamer_id) >= asked_mono:
                continue  # a newer change of ours is on its way already
            confirmation = tracker.confirm(
                streamer_id, received_at=time.time(), received_mono=time.monotonic(), asked_at=asked_at
            )
            if confirmation is not None:
                changes.append(confirmation)
        self.release_unconfirmed()
        return changes

    def end_reconciliation(self, done: ReconcileDone) -> None:
        """A pass ended: log and count it once (not per request), then give back its burst's memory.
        A pass the planner did not run ("off": no credentials, or refused ones, said once by the
        planner) is not counted."""
        repaired, answered = self.repaired_this_pass, self.answered_this_pass
        self.repaired_this_pass = self.answered_this_pass = self.answered_since_trim = 0
        if repaired:
            log.info("reconciliation repaired %d streamers", repaired)
        if done.outcome == "error":
            log.warning("reconciliation failed: %s", done.error)
            self._count_reconcile("error")
        elif done.outcome == "ok":
            self._count_reconcile("ok")
        if answered > TRIM_AFTER:
            trim_after_burst()  # the API's answers were the bulk of this burst

    # -- the planner's assignments ---------------------------------------------------------
    def apply_assignment(self, message: Assign | Subscribe | Unsubscribe) -> None:
        self._next_report = 0.0  # gauges follow the new list at once
        if isinstance(message, Assign):
            wanted = {ref.streamer_id for ref in message.streamers}
            self.unsubscribe([sid for sid in self.refs if sid not in wanted])
            self.subscribe(message.streamers)
        elif isinstance(message, Subscribe):
            self.subscribe(message.streamers)
        else:
            self.unsubscribe(message.streamer_ids)
        if len(getattr(message, "streamers", ())) > TRIM_AFTER:
            trim_after_burst()  # a big list arrived and was turned into subscriptions

    def subscribe(self, streamers: Iterable[StreamerRef]) -> None:
        """Watch new streamers; join the Pusher channels of any whose channel id is new."""
        which = self.settings.lifecycle_channels
        fresh: list[StreamerRef] = []
        joined: list[str] = []
        left: list[str] = []
        gained: list[StreamerRef] = []
        for ref in streamers:
            held = self.refs.get(ref.streamer_id)
            if held is None:
                fresh.append(ref)
                self.unconfirmed.add(ref.streamer_id)
            elif ref.channel_id == held.channel_id or ref.channel_id is None:
                continue
            else:
                gained.append(ref)
                if held.channel_id is not None:
                    left.extend(channel_names(held.channel_id, which))
            if ref.channel_id is not None:
                joined.extend(channel_names(ref.channel_id, which))
            self.refs[ref.streamer_id] = ref if held is None else replace(held, channel_id=ref.channel_id)
        self.tracker.add(self.refs[sid] for sid in {ref.streamer_id for ref in streamers})
        if left:
            self.session.unsubscribe(left)
        self.session.subscribe(joined)
        if fresh:
            without = sum(1 for ref in fresh if ref.channel_id is None)
            log.info("watching %d more streamers (%d without Pusher)", len(fresh), without)
        if gained:
            log.info("%d streamers got a channel id: on Pusher now", len(gained))
        if fresh or gained:
            # what happened before the subscription took effect comes from the API, asked once it did
            self.to_reconcile.update(ref.streamer_id for ref in (*fresh, *gained))
            self.reconcile_by = min(self.reconcile_by, time.monotonic() + ACK_WAIT)
            self.reconcile_subscribed(time.monotonic())

    def reconcile_subscribed(self, now: float) -> None:
        """Reconcile the streamers just subscribed once the server answered every subscription of the
        connection (at most `ACK_WAIT` later; at once without a connection, which reconciles all on
        connect). Called on every loop turn while some wait: the check is O(1), not per streamer."""
        if self.session.connected and now < self.reconcile_by and self.session.awaiting():
            return
        refs = [self.refs[sid] for sid in self.to_reconcile if sid in self.refs]
        self.to_reconcile.clear()
        self.reconcile_by = float("inf")
        if refs:
            self._reconcile(tuple(refs))

    def unsubscribe(self, streamer_ids: Iterable[int]) -> None:
        """Leave the streamers' channels; frames the server sent before it applied that are still
        read and recorded (the streamers stay tracked until the barrier after the unsubscribes)."""
        gone = [self.refs.pop(sid) for sid in streamer_ids if sid in self.refs]
        for ref in gone:
            self.unconfirmed.discard(ref.streamer_id)
        self.release_unconfirmed()
        self.to_reconcile.difference_update(ref.streamer_id for ref in gone)
        which = self.settings.lifecycle_channels
        names = [n for ref in gone if ref.channel_id is not None for n in channel_names(ref.channel_id, which)]
        self.session.unsubscribe(names)
        if gone:
            self.leaving.setdefault(self.session.barrier(), []).extend(ref.streamer_id for ref in gone)
            self.forget_left()
            log.info("stopped watching %d streamers", len(gone))

    def release_unconfirmed(self) -> None:
        """Give back the table of `unconfirmed` once it is empty: a set emptied by `discard` keeps it
        (measured: 512 KB for a shard of 5,000 streamers, for good); `clear()` frees it."""
        if not self.unconfirmed:
            self.unconfirmed.clear()

    def forget_left(self) -> None:
        """Stop tracking unsubscribed streamers whose barrier passed; tell the planner (it frees a lease
        given back only once we watch nothing of the shard)."""
        for barrier in [b for b in self.leaving if self.session.passed(b)]:
            self.tracker.remove(sid for sid in self.leaving.pop(barrier) if sid not in self.refs)
            self._next_report = 0.0

    def leave_pusher(self, seconds: float) -> None:
        """At a warm stop: unsubscribe everything and read what the server sent before it applied
        that (bounded by `seconds`), then close the connection."""
        self.unsubscribe(list(self.refs))
        deadline = time.monotonic() + seconds
        while self.leaving and time.monotonic() < deadline:
            fd = self.session.fileno()
            if fd is None:
                break
            wait = 0.0 if self.session.has_buffered_data() else max(0.0, deadline - time.monotonic())
            readable, _ = self.wait([fd], [], wait)
            self.read_pusher(time.monotonic(), fd in readable)
            self.forget_left()
        self.session.close()

    # -- writer ---------------------------------------------------------------------------
    def send(self, changes: list[StatusChange]) -> None:
        self.sender.send(changes)
        self.changes_sent += len(changes)
        if self.telemetry.enabled:
            counts = self.changes_by_kind
            for change in changes:
                kind = (change.status, change.source)
                counts[kind] = counts.get(kind, 0) + 1

    def finish(self) -> int:
        """Warm stop: leave Pusher (reading what was sent before), wait until the writer has every
        change, exit 0."""
        self.leave_pusher(LEAVE_WAIT)
        self.assignments.tell_state(WorkerState(self.shard, False, 0))  # the planner may free our lease now
        self.assignments.service(time.monotonic())
        drained = self.sender.wait_drained(self.settings.drain_timeout)
        if not drained:  # handoff helper: what memory holds goes to the overflow spool, sent at the next start
            self.sender.spill_all()
            log.error(
                "stopping with %d changes the writer did not confirm: %d kept on disk for the next start",
                self.sender.unacked_changes, self.sender.disk_changes,
            )
        self.sender.close()
        self.assignments.close()
        self._export_counters(self.telemetry, str(self.shard))
        return 0

    # -- reporting --------------------------------------------------------------------------
    def _snapshot(self) -> tuple[StreamerRef, ...]:
        return tuple(self.refs.values())

    def report(self) -> None:
        """Gauges and running totals, once a second."""
        watching = len(self.refs) + sum(len(ids) for ids in self.leaving.values())  # leaving: still reading
        self.assignments.tell_state(WorkerState(self.shard, bool(self.session.connected), watching))
        m = self.telemetry
        if not m.enabled:
            return
        shard = str(self.shard)
        m.CONNECTION_UP.labels(shard=shard).set(1 if self.session.connected else 0)
        per_streamer = len(channel_names(0, self.settings.lifecycle_channels))
        on_pusher = sum(1 for ref in self.refs.values() if ref.channel_id is not None)
        m.SUBSCRIPTIONS.labels(shard=shard).set(on_pusher * per_streamer)
        m.UNACKED.labels(shard=shard).set(self.sender.unacked_changes)
        m.HEARTBEAT.labels(shard=shard).set(time.time())
        self._export_counters(m, shard)

    def _export_counters(self, m: Any, shard: str) -> None:
        """The session's, the parser's and the API client's running totals, as counter increments.

        Every label value comes from a fixed set in our code (reconnect reasons, malformed
        kinds, API endpoints, HTTP status codes), never from free text off the network.
        """
        deltas = self._deltas
        for reason, total in self.session.stats.reconnects.items():
            deltas.advance(m.RECONNECTS, total, shard=shard, reason=reason)
        deltas.advance(m.SUBSCRIPTION_ERRORS, self.session.stats.subscription_errors, shard=shard)
        for counter, total in ((m.HANDOFF_SPILLED, self.sender.spilled), (m.HANDOFF_DROPPED, self.sender.dropped)):
            counter.labels(shard=shard)  # exported from 0, so an alert on increase() sees the first one
            deltas.advance(counter, total, shard=shard)
        for kind, total in self.stats.malformed.items():
            deltas.advance(m.PARSE_ERRORS, total, shard=shard, kind=kind)
        deltas.advance(m.PARSE_ERRORS, self.stats.unknown_channel, shard=shard, kind="unknown_channel")
        # Events dropped by name before decoding (chat, goals, anything unknown) are frames
        # received too; the "(is_live=false)" pseudo-names were counted under their own name.
        other = sum(n for name, n in self.stats.ignored.items() if not name.endswith("(is_live=false)"))
        deltas.advance(m.FRAMES, other + self.frames_by_event.get("other", 0), shard=shard, event="other")
        for event, total in self.frames_by_event.items():
            if event != "other":
                deltas.advance(m.FRAMES, total, shard=shard, event=event)
        for (status, source), total in self.changes_by_kind.items():
            deltas.advance(m.STATUS_CHANGES, total, shard=shard, status=status, source=source)

    def _count_frames(self, events: list[Any]) -> None:
        # Label by lifecycle name only: event names come from the network, and a label
        # per name would let a hostile stream grow our metrics without bound.
        counts = self.frames_by_event
        for ev in events:
            event = ev.event if ev.event in LIFECYCLE_EVENTS else "other"
            counts[event] = counts.get(event, 0) + 1

    def _count_reconcile(self, outcome: str) -> None:
        self.telemetry.RECONCILIATIONS.labels(shard=str(self.shard), outcome=outcome).inc()
