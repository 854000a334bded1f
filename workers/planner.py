"""The planner role: the streamer list, the shard plan, and which worker watches what.

The supervisor only supervises; everything that talks to PostgreSQL about the list lives
here, in its own process, so a slow database or a slow Kick API can delay a list update
but never the reaping, killing and respawning of processes.

- Reads every monitorable streamer (`kick_monitor.streamers.load_monitorable`: user id or
  channel id known), plans them onto the tree's shards by streamer id with
  `kick_monitor.sharding.plan_shards` (the same function `--dry-run` prints), and serves
  each shard's list to its worker over the assignment channel (`kick_monitor.assignment`):
  the whole list on every Hello, then differences — including a streamer whose channel id
  became known, sent again in a `Subscribe` so the worker joins its Pusher channels.
- Wakes on `LISTEN kick_monitor_streamers` (debounced), on every `reload_interval`, and on a
  worker's Hello (a respawned worker gets statuses as fresh as the database has them).
  Notifications sent while the LISTEN connection was down are gone, so every reconnect
  reloads fully.
- Id resolution of streamers added by slug runs on a helper thread with its own
  connection (this process never forks, so a thread is safe here), time-boxed per round and
  under a PostgreSQL advisory lock so that one process of a deployment resolves at a time.
  What it stores fires the streamers trigger, which wakes the planner's LISTEN.
- With `streamers_source` set, the list comes from the application's own table: the planner
  syncs it (`kick_monitor.source_sync`) before loading, at start, on every `reload_interval`
  and when `streamers_source_channel` is notified. A failing source is reported and the
  previous list stays in force.
- Retention (`kick_monitor.retention.Pruner`): history older than `history_retention` is
  deleted in small batches on another helper thread, under an advisory lock (one pruner per
  deployment), never in the way of the writer.
- API reconciliation for every worker of the tree (`kick_monitor.reconcile_service`): a worker
  asks for a pass over the assignment channel; one helper thread with the tree's one API client
  asks Kick, round-robin across the workers that asked, and each answer goes back to its worker,
  which applies it (a worker is the sequencer of its shard). Asks wait for the first load, as
  Hellos do, so a pass is never asked about an empty plan.
- Webhook subscriptions (`kick_monitor.webhook_sync.WebhookSync`, issue 16): a third helper
  thread keeps Kick's event subscriptions equal to the streamer list, woken with the
  resolver on every streamer NOTIFY; one process of a deployment at a time.
- Shard leases (issue 17, `kick_monitor.lease_keeper`): a worker gets its shard's streamers
  only while this node holds the shard's lease; a lost or given-back lease unsubscribes the
  worker at once, a claimed one hands the shard over after a fresh reload (statuses as the
  previous owner left them) under a fresh assignment generation. The loop wakes on the lease
  thread's pipe, so a claim reaches the worker within milliseconds; a shard given back is let
  go (its lease freed) as soon as its worker reports it unsubscribed; the node takes part only
  once its workers are on Pusher (`LeaseKeeper.ready`).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

import psycopg2
import psycopg2.extensions
from psycopg2 import sql

from kick_monitor.assignment import AssignmentServer
from kick_monitor.config import PUSHER_OFF
from kick_monitor.database import DatabaseUnavailable, connect, take_notifications
from kick_monitor.duty import Duty
from kick_monitor.lease_keeper import LeaseKeeper
from kick_monitor.leases import Node
from kick_monitor.messages import Assign, ReconcileDone, ReconcileRequest, StreamerRef, Subscribe, Unsubscribe
from kick_monitor.metric_deltas import CounterDeltas
from kick_monitor.migrations import STREAMERS_CHANNEL
from kick_monitor.ordering import allocate_generation
from kick_monitor.preload import limit_malloc_arenas, release_free_memory
from kick_monitor.reconcile_service import ReconcileService
from kick_monitor.resolver import resolve_pending
from kick_monitor.retention import Pruner
from kick_monitor.role import Role, RoleContext
from kick_monitor.sharding import plan_shards
from kick_monitor.source_sync import SourceError, sync_source
from kick_monitor.streamers import count_by_status, load_monitorable
from kick_monitor.webhook_sync import WebhookSync

log = logging.getLogger("kick_monitor.planner")

RELOAD_DEBOUNCE = 0.2  # coalesce a burst of streamer notifications into one reload
FRESH_FOR_HELLO = 1.0  # a Hello is answered from a list at most this old
STATEMENT_TIMEOUT_MS = 5000  # our queries are tiny; one stuck on a lock gives up and is retried
RETRY_MIN, RETRY_MAX = 0.5, 10.0
RESOLVE_BUDGET = 20.0  # seconds of Kick API lookups per round (5,000 slugs at 25 a request ≈ 200 requests)
RESOLVE_EVERY = 30.0  # seconds between rounds when nothing wakes the resolver
RESOLVE_LOCK_KEY = 0x4B4D5245  # advisory lock: one resolver per deployment at a time
# Settings the API client is built from: a change rebuilds the reconciliation client.
API_SETTINGS = frozenset({
    "api_base_url", "oauth_token_url", "web_api_base_url", "client_id", "client_secret",
    "api_batch_size", "api_rate", "api_burst", "api_timeout", "web_api_backoff",
})
API_EXPORT_EVERY = 1.0  # seconds between exports of the reconciliation client's counters
WORKERS_GONE_WAIT = 5.0  # at stop: how long the planner waits for its workers before freeing the leases


class Planner(Role):
    """Runs in the forked planner process; see the module docstring."""

    kind = "planner"

    def __init__(self, ctx: RoleContext) -> None:
        super().__init__(ctx)
        assert ctx.listener is not None, "the supervisor binds the planner's socket"
        self.server = AssignmentServer(ctx.listener)
        self.conn: psycopg2.extensions.connection | None = None
        self.listen_conn: psycopg2.extensions.connection | None = None
        self.plan: dict[int, dict[int, StreamerRef]] = {shard: {} for shard in ctx.shards}
        self.loaded_at = float("-inf")
        self.reload_at: float | None = 0.0  # load at once
        self.next_full_reload = 0.0
        self.retry_delay = RETRY_MIN
        self.reload_failed = False
        self.hellos: list[tuple[int, int]] = []  # (connection id, shard) waiting for their Assign
        self.sync_due = self.settings.streamers_source is not None  # sync the source at the next reload
        self.source_problem = ""  # the last source failure reported (reported again only when it changes)
        self.resolver = IdResolver(self)
        # --- issue 17 (cluster): this node's shard leases ---
        from kick_monitor import __version__

        self.planned: dict[int, dict[int, StreamerRef]] = {}  # the last load's plan, leased or not
        self.leased: dict[int, int] = {}  # shard -> lease epoch the workers were set up for
        # shard given back -> (it had streamers, its worker's state when we unsubscribed it)
        self.letting_go: dict[int, tuple[bool, Any]] = {}
        node = Node.this("all" if ctx.tree == "all" else str(ctx.shards[0]), __version__, coordinator_pid=self.ppid)
        self.leases = LeaseKeeper(
            lambda: connect(ctx.database_url, application_name=f"kick-monitor leases {node.name}"),
            node, ctx.shards, ctx.shard_count, self.settings.lease_ttl, self.telemetry,
        )
        # --- end issue 17 ---
        self.pruner = Pruner(
            lambda: connect(self.ctx.database_url, application_name="kick-monitor pruner"),
            self.settings.history_retention,
        )
        self.webhook_sync = self.make_webhook_sync()  # issue 16: Kick webhook subscriptions
        self.reconcile_asks: list[tuple[int, ReconcileRequest]] = []  # waiting for the first load
        self.reconcile_deltas = CounterDeltas()
        self.reconciliation = ReconcileService(self.make_api_client)
        self.next_api_export = 0.0

    def boot(self) -> None:
        limit_malloc_arenas()  # before the helper threads: one arena, not one a thread (kick_monitor.preload)
        self.leases.start()
        self.resolver.start()
        self.reconciliation.start()
        if not self.settings.has_api_credentials:
            log.info("no Kick API credentials: running Pusher-only, without reconciliation")
        self.pruner.start()
        self.webhook_sync.start()

    # -- the loop ---------------------------------------------------------------------
    def step(self) -> None:
        now = time.monotonic()
        timeout = 0.5
        if self.reload_at is not None:
            timeout = max(0.0, min(timeout, self.reload_at - now))
        # the first load waits for the first lease round (one load, not one before and one after it)
        first_load_waits = self.loaded_at == float("-inf") and not self.leases.settled.is_set()
        if first_load_waits:
            timeout = max(timeout, 0.01)
        rlist: list[Any] = [*self.server.filenos(), self.leases.changed_read, self.reconciliation.wake_read]
        if self.listen_conn is not None:
            rlist.append(self.listen_conn)
        readable, writable = self.wait(rlist, self.server.writers(), timeout)
        if self.leases.changed_read in readable:
            self.leases.take_changes()
        if self.listen_conn is not None and self.listen_conn in readable:
            self.read_notifications()
        now = time.monotonic()
        for conn_id, shard in self.server.serve(readable, writable):
            self.hellos.append((conn_id, shard))
            if now - self.loaded_at > FRESH_FOR_HELLO:
                self.schedule_reload(now)
        for conn_id in self.server.take_closed():
            self.reconciliation.cancel(conn_id)
        self.reconcile_asks += self.server.take_requests()
        if self.reconciliation.wake_read in readable:
            for conn_id, reply in self.reconciliation.take():
                self.server.send(conn_id, reply)
        if now >= self.next_full_reload:
            self.schedule_reload(now)
        self.follow_leases(now)
        self.leases.worker_states = {s: (w.connected, w.watching) for s, w in self.server.states.items()}
        self.let_go_unsubscribed()
        if not self.leases.ready.is_set() and self.workers_ready():
            self.leases.ready.set()
        if self.reload_at is not None and now >= self.reload_at and not first_load_waits:
            self.reload(now)
        self.answer_hellos()
        self.answer_reconcile_asks()
        if self.telemetry.enabled and now >= self.next_api_export:
            self.export_api_stats(now)

    def finish(self) -> int:
        # Clean stop of the tree: free the leases once our workers (and their Pusher subscriptions)
        # are gone, so the next owner never overlaps them. Workers still connected after the wait:
        # only the planner restarts; the leases stay for the next planner.
        self.leases.stop(release=self.wait_for_workers(min(self.settings.drain_timeout, WORKERS_GONE_WAIT)))
        self.resolver.stop()
        self.reconciliation.stop()
        self.pruner.stop()
        self.webhook_sync.stop()
        self.server.close()
        self.close_database()
        return 0

    def reconfigure(self, changed: set[str]) -> None:
        if "reload_interval" in changed:
            self.next_full_reload = min(self.next_full_reload, time.monotonic() + self.settings.reload_interval)
        if "history_retention" in changed:
            self.pruner.set_retention(self.settings.history_retention)
        self.resolver.settings_changed()
        self.webhook_sync.settings_changed()
        if changed & API_SETTINGS:
            self.reconciliation.settings_changed()

    def make_api_client(self) -> Any:
        """The tree's API client for reconciliation; draws from the deployment's shared rate budget."""
        from kick_monitor.kick_api import client_from_settings

        return client_from_settings(self.settings, self.ctx.database_url)

    def export_api_stats(self, now: float) -> None:
        """The reconciliation client's running totals as metric increments, once a second (as a worker
        exported its own client's before round 15)."""
        self.next_api_export = now + API_EXPORT_EVERY
        snapshot = self.reconciliation.api_stats()
        if snapshot is not None:
            self.reconcile_deltas.advance_api(self.telemetry, snapshot)

    def make_webhook_sync(self) -> WebhookSync:
        """The subscription sync duty (kick_monitor/webhook_sync.py): its own connection and API client."""
        from kick_monitor.kick_api import client_from_settings

        url = self.ctx.database_url
        return WebhookSync(
            lambda: connect(url, application_name="kick-monitor webhook sync"), lambda: self.settings,
            lambda: client_from_settings(self.settings, url), self.telemetry,
        )

    # -- the list and the plan -------------------------------------------------------------
    def schedule_reload(self, at: float) -> None:
        self.reload_at = at if self.reload_at is None else min(self.reload_at, at)

    def reload(self, now: float) -> None:
        """Re-read the list and tell only the affected workers what changed."""
        if now >= self.next_full_reload:
            self.sync_due = self.settings.streamers_source is not None
        self.reload_at = None
        self.next_full_reload = now + self.settings.reload_interval
        try:
            if self.conn is None:
                self.open_database()
            assert self.conn is not None
            if self.sync_due:
                self.sync_source()
            streamers = load_monitorable(self.conn, self.held_ref)  # unchanged rows: the refs held now
            counts = count_by_status(self.conn)
        except (DatabaseUnavailable, psycopg2.Error) as exc:
            log.warning("cannot load the streamer list (%s); retrying in %.1fs", _first_line(exc), self.retry_delay)
            self.close_database()
            self.reload_failed = True
            self.reload_at = now + self.retry_delay
            self.retry_delay = min(RETRY_MAX, self.retry_delay * 2)
            return
        self.retry_delay = RETRY_MIN
        self.reload_failed = False
        self.loaded_at = time.monotonic()
        for status, count in counts.items():
            self.telemetry.STREAMERS.labels(status=status).set(count)
        planned = plan_shards(streamers, self.ctx.shard_count)
        self.planned = {shard: {ref.streamer_id: ref for ref in planned.get(shard, [])} for shard in self.plan}
        for shard in self.plan:
            self.update_shard(shard, self.wanted(shard))
            if shard in self.leased:
                self.planned[shard] = self.plan[shard]  # one copy of the refs (memory), not the load's too
        del streamers, planned
        release_free_memory()  # the list read from the database was a burst as big as the plan

    def held_ref(self, streamer_id: int) -> StreamerRef | None:
        """The ref a worker of ours has now for this streamer, if any (reused by the next load when unchanged)."""
        for refs in self.plan.values():
            ref = refs.get(streamer_id)
            if ref is not None:
                return ref
        return None

    # -- shard leases (issue 17) ------------------------------------------------------------
    def wait_for_workers(self, seconds: float) -> bool:
        """Serve the assignment socket until every worker has left Pusher (said so, or disconnected
        from us); False if some stayed (only the planner restarts: the next one keeps the leases)."""
        deadline = time.monotonic() + seconds
        while not self.workers_gone() and time.monotonic() < deadline:
            self.beat()
            readable, writable = self.wait(self.server.filenos(), self.server.writers(), 0.05)
            self.server.serve(readable, writable)
        return self.workers_gone()

    def workers_gone(self) -> bool:
        """No worker of ours listens: each has disconnected, or told us it left Pusher and watches nothing."""
        states = self.server.states
        return all(shard in states and not states[shard].connected and states[shard].watching == 0
                   for shard in self.server.connected_shards())

    def wanted(self, shard: int) -> dict[int, StreamerRef]:
        """The shard's streamers while this node holds its lease; nothing otherwise."""
        return dict(self.planned.get(shard, {})) if shard in self.leased else {}

    def follow_leases(self, now: float) -> None:
        """Unsubscribe a shard whose lease ended at once; take over a claimed one after a fresh load.

        A new epoch is a new hand-over even for a shard we held before (we lapsed and claimed
        it again): its worker starts over with a fresh generation and fresh statuses.
        """
        current = self.leases.current(now)
        for shard in self.plan:
            epoch = current.get(shard)
            if self.leased.get(shard) == epoch:
                continue
            if shard in self.leased:
                del self.leased[shard]
                had = bool(self.plan[shard])
                self.update_shard(shard, {})
                if shard in self.leases.releasing():  # given back: freed once the worker has unsubscribed
                    self.letting_go[shard] = (had, self.server.states.get(shard))
                log.info("shard %d: lease ended, stopped listening", shard, extra={"shard": shard})
            if epoch is not None:
                self.leased[shard] = epoch
                log.info("shard %d: lease claimed (epoch %d)", shard, epoch, extra={"shard": shard})
                if now - self.loaded_at > FRESH_FOR_HELLO:
                    self.schedule_reload(now)  # statuses as fresh as the database has them, then Subscribe
                else:
                    self.update_shard(shard, self.wanted(shard))
                    self.planned[shard] = self.plan[shard]  # one copy of the refs, as after a reload (memory)

    def let_go_unsubscribed(self) -> None:
        """Free the lease of a shard given back once its worker told us it watches nothing (it sent
        its Pusher unsubscribes before saying so): the next owner subscribes within milliseconds,
        never before. A worker that says nothing: the keeper frees it after `HANDOVER_PAUSE`."""
        if not self.letting_go:
            return
        releasing = self.leases.releasing()
        for shard, (had, before) in list(self.letting_go.items()):
            state = self.server.states.get(shard)
            if shard not in releasing:
                del self.letting_go[shard]  # freed already (the pause ran out), or lost
            elif not had or (state is not None and state is not before and state.watching == 0):
                del self.letting_go[shard]
                self.leases.let_go(shard)

    def workers_ready(self) -> bool:
        """Every worker of this tree is connected to Pusher (or Pusher is off): the node may take shards."""
        if self.settings.pusher_url == PUSHER_OFF:
            return True
        states = self.server.states
        return all(shard in states and states[shard].connected for shard in self.ctx.shards)

    def sync_source(self) -> None:
        """Make the list equal to the application's source; on a bad source keep the list as it is."""
        assert self.conn is not None and self.settings.streamers_source is not None
        try:
            result = sync_source(self.conn, self.settings.streamers_source)
        except SourceError as exc:
            self.telemetry.SOURCE_SYNCS.labels(outcome="failed").inc()
            if str(exc) != self.source_problem:
                log.error("streamer source not applied, the previous list stays: %s", exc)
                self.source_problem = str(exc)
            self.sync_due = False  # retried at the next reload interval or NOTIFY
            return
        self.sync_due = False
        if result is None:
            self.telemetry.SOURCE_SYNCS.labels(outcome="skipped").inc()
            return  # another process tree syncs now; its changes reach us through the trigger
        self.telemetry.SOURCE_SYNCS.labels(outcome="ok").inc()
        self.telemetry.SOURCE_ROWS.set(result.rows)
        if self.source_problem:
            log.info("streamer source works again (%d rows)", result.rows)
            self.source_problem = ""
        if result.plan:
            log.info("streamer source synced: %d rows, %s", result.rows, result.plan.summary())

    def update_shard(self, shard: int, wanted: dict[int, StreamerRef]) -> None:
        """Send the shard's worker what changed: streamers gone, new, or with a new channel id."""
        current = self.plan[shard]
        rechanneled: list[StreamerRef] = []
        for sid, held in current.items():  # a streamer that stays keeps its assignment generation
            ref = wanted.get(sid)
            if ref is not None and ref is not held:  # the load returns the held ref itself when unchanged
                fresh = replace(ref, generation=held.generation)
                # the long-lived object where nothing changed: the fresh copy dies young, so a reload
                # of 100k streamers does not leave the planner's heap fragmented (docs/performance.md)
                wanted[sid] = held if fresh == held else fresh
                if fresh.channel_id != held.channel_id:
                    rechanneled.append(fresh)
        added = self.stamp(ref for sid, ref in wanted.items() if sid not in current)
        wanted.update((ref.streamer_id, ref) for ref in added)
        removed = tuple(sid for sid in current if sid not in wanted)
        self.plan[shard] = wanted
        if removed:
            self.server.send_to_shard(shard, Unsubscribe(removed))
        if added or rechanneled:
            self.server.send_to_shard(shard, Subscribe((*added, *rechanneled)))
        if added or removed or rechanneled:
            log.info("shard %d: +%d -%d streamers, %d with a new channel id", shard, len(added), len(removed),
                     len(rechanneled), extra={"shard": shard})

    def answer_hellos(self) -> None:
        """Every worker that said Hello gets its whole shard, once the list is fresh enough.

        Never before the first successful load: an empty Assign would make a worker drop
        every streamer it watches. While the database is down, the last list serves.
        """
        if not self.hellos or self.loaded_at == float("-inf"):
            return
        if not self.leases.settled.is_set():
            return  # a respawned planner answers once it knows its leases, not with an empty list first
        if self.reload_at is not None and not self.reload_failed:
            return  # a reload is due first
        for conn_id, shard in self.hellos:
            members = self.plan.get(shard)
            if members is None:
                log.warning("a worker said it runs shard %d, which this tree does not run", shard)
                continue
            handed = self.stamp(members.values())  # a hand-over: the worker's changes outrank its predecessor's
            self.plan[shard] = {ref.streamer_id: ref for ref in handed}
            if shard in self.leased:
                self.planned[shard] = self.plan[shard]  # one copy of the refs, as after a reload (memory)
            self.server.send(conn_id, Assign(handed))
        self.hellos.clear()

    def answer_reconcile_asks(self) -> None:
        """Hand each worker's reconciliation pass to the reconcile thread, with the refs of its shard
        as the worker was sent them; only once Hellos are answered (a planner just restarted has no
        plan yet, and an empty pass would end at once with nothing asked). Ids no longer planned for
        the shard are left out: the worker is being told to drop them."""
        if not self.reconcile_asks or self.hellos or self.loaded_at == float("-inf"):
            return
        for conn_id, request in self.reconcile_asks:
            shard = self.server.shard_of(conn_id)
            members = self.plan.get(request.shard)
            if shard != request.shard or members is None:
                why = f"shard {request.shard} is not this tree's"
                self.server.send(conn_id, ReconcileDone(request.pass_id, "error", why))
                continue
            refs = tuple(ref for sid in request.streamer_ids if (ref := members.get(sid)) is not None)
            self.reconciliation.submit(conn_id, request, refs)
        self.reconcile_asks.clear()

    def stamp(self, refs: Iterable[StreamerRef]) -> tuple[StreamerRef, ...]:
        """Streamers handed over now get a fresh assignment generation (docs/architecture.md, ordering).

        A connection found dead (PostgreSQL restarted) is replaced and the allocation tried once
        more: the lease was just claimed on the lease keeper's live connection, and an old generation
        would make every change of the new owner lose to the previous owner's (another node's). Only
        with the database really gone does the previous generation stay: safe on one host, where
        `seq` is the host's monotonic clock and so keeps rising across the worker's restarts.
        """
        refs = tuple(refs)
        if not refs:
            return refs
        for attempt in (1, 2):  # a connection left dead by a PostgreSQL restart: once more on a new one
            try:
                if self.conn is None:
                    self.open_database()
                assert self.conn is not None
                generation = allocate_generation(self.conn)
                break
            except (DatabaseUnavailable, psycopg2.Error) as exc:
                self.close_database()
                if attempt == 2:
                    log.warning("no new assignment generation (%s); keeping the previous one", _first_line(exc))
                    return refs
        return tuple(replace(ref, generation=generation) for ref in refs)

    # -- database ------------------------------------------------------------------------
    def open_database(self) -> None:
        conn = connect(self.ctx.database_url, application_name=f"kick-monitor planner {self.ctx.tree}")
        try:
            with conn.cursor() as cur:
                cur.execute("SET statement_timeout = %s", (STATEMENT_TIMEOUT_MS,))
            conn.commit()
        except psycopg2.Error as exc:
            conn.close()
            raise DatabaseUnavailable(f"database session lost at once: {_first_line(exc)}") from None
        self.conn = conn
        self.sync_due = self.settings.streamers_source is not None  # NOTIFYs missed while down
        try:
            listen = connect(self.ctx.database_url, application_name="kick-monitor listen", autocommit=True)
            with listen.cursor() as cur:
                cur.execute(sql.SQL("LISTEN {}").format(sql.Identifier(STREAMERS_CHANNEL)))
                if self.settings.streamers_source and self.settings.streamers_source_channel:
                    cur.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.settings.streamers_source_channel)))
            self.listen_conn = listen
        except (DatabaseUnavailable, psycopg2.Error) as exc:
            log.warning("cannot LISTEN for streamer changes (%s); relying on periodic reloads", _first_line(exc))

    def close_database(self) -> None:
        for conn in (self.conn, self.listen_conn):
            if conn is not None:
                with contextlib.suppress(psycopg2.Error):
                    conn.close()
        self.conn = None
        self.listen_conn = None

    def read_notifications(self) -> None:
        assert self.listen_conn is not None
        try:
            received = take_notifications(self.listen_conn)
        except psycopg2.Error as exc:
            log.warning("lost the LISTEN connection: %s", _first_line(exc))
            self.close_database()
            self.schedule_reload(time.monotonic() + RETRY_MIN)
            return
        if received:
            channels = {notify.channel for notify in received}
            if self.settings.streamers_source and self.settings.streamers_source_channel in channels:
                self.sync_due = True
            self.schedule_reload(time.monotonic() + RELOAD_DEBOUNCE)
            self.resolver.wake()
            self.webhook_sync.wake()  # streamers added or removed: subscribe / unsubscribe them


class IdResolver(Duty):
    """Gives streamers added by slug their ids: a duty of the planner (`kick_monitor.duty`)."""

    name = "id-resolver"
    lock_key = RESOLVE_LOCK_KEY
    every = RESOLVE_EVERY

    def __init__(self, planner: Planner) -> None:
        super().__init__(lambda: connect(planner.ctx.database_url, application_name="kick-monitor resolver"))
        self.planner = planner
        self._client: Any = None
        self._replace_client = False
        self._deltas = CounterDeltas()  # the API client's running totals, exported as increments

    def settings_changed(self) -> None:
        """API settings changed on SIGHUP: the next round builds a new client with them."""
        self._replace_client = True
        self.wake()

    def round(self, conn: psycopg2.extensions.connection) -> int:
        resolved = resolve_pending(conn, self._api(), budget=RESOLVE_BUDGET)
        if resolved:
            log.info("resolved ids of %d streamers", resolved)
        if self.planner.telemetry.enabled:
            self._deltas.advance_api(self.planner.telemetry, self._api().stats.snapshot())
        return resolved

    def finish(self) -> None:
        if self._client is not None:
            self._client.close()

    def _api(self) -> Any:
        """The API client; draws from the deployment's shared rate budget (kick_monitor.api_budget)."""
        if self._client is None or self._replace_client:
            from kick_monitor.kick_api import client_from_settings

            old, self._replace_client = self._client, False
            self._client = client_from_settings(self.planner.settings, self.planner.ctx.database_url)
            self._client.carry_state(old)  # a blocked web API stays backed off across a SIGHUP
            if old is not None:
                old.close()
        return self._client


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
