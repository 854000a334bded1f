"""Retention: every table that grows forever in 24/7 operation is pruned, in small batches, off the hot path.

The history (`status_events`) is kept `history_retention` long (400 days by default; `0`/`off`
keeps it forever). Pruning is a planner duty on a helper thread with its own connection, under
a PostgreSQL advisory lock so that one process of a deployment prunes at a time.

Why it cannot block the writer: each batch is one short `DELETE` of at most `PRUNE_BATCH` rows
chosen by a primary-key range (`id < min(id) + PRUNE_BATCH`), so it touches a bounded slice of
the oldest rows — rows the writer never updates (it only inserts new history) — and commits
at once; `lock_timeout` makes it give up rather than queue behind anything; a pause between
batches leaves the server to the writer. The range is chosen by key rather than by
`recorded_at` because no index serves `recorded_at` (adding one would cost every insert), and
`id` grows with `recorded_at` (both are assigned at insert by the one writer). When the oldest
row is younger than the cutoff, a round is over after one index probe.

The other tables that grow in 24/7 operation have a rule each (`rules_for`), with a fixed
bound — nobody needs to choose it:

- `notify_deliveries` rows in a final state (sent, skipped, failed, uncertain) untouched for
  `DELIVERY_KEEP` (30 days). Never announced twice because of it: the notifier creates
  deliveries only for a broadcast it has not handled (no `notify_broadcasts` row), and an
  offline delivery only once per handled end.
- `broadcasts` that ended longer ago than the history retention (the history they summarise is
  gone too), except a streamer's current one; then `notify_broadcasts` rows whose broadcast is
  gone (the notifier discovers from `broadcasts`, so a gone one cannot come back).
- `cluster_nodes` not renewed for `NODE_KEEP` (7 days): trees that ended without forgetting
  themselves (a container's host name is new at every start); their leases expired long ago.

Webhook message ids are history `change_id`s (`webhook:<id>`): pruned with the history. The
other tables are one row per streamer, target, shard, duty or app.

Rules with a `where` (rows that must stay can sit among the old ones: a pending delivery, an
open broadcast) delete `id IN (SELECT … ORDER BY key LIMIT batch)`: the oldest matching rows,
found in key order, so a row that must stay never stops the round.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import psycopg2
import psycopg2.extensions
from psycopg2 import sql

from .config import parse_retention
from .duty import Duty

log = logging.getLogger("kick_monitor.retention")

PRUNE_BATCH = 1000  # rows per DELETE: a few ms of server time
PRUNE_PAUSE = 0.2  # seconds between batches: the writer gets the server in between
PRUNE_EVERY = 600.0  # seconds between rounds (history ages by days; no hurry)
PRUNE_LOCK_KEY = 0x4B4D5052  # advisory lock: one pruner per deployment at a time
LOCK_TIMEOUT_MS = 200  # never queue behind another lock: skip the batch, retry next round
STATEMENT_TIMEOUT_MS = 10_000
DELIVERY_KEEP = 30 * 86400.0  # seconds a delivered (or given up) notification stays for `notify list` and audits
NODE_KEEP = 7 * 86400.0  # seconds a cluster node that stopped renewing stays visible in `cluster status`
FINAL_DELIVERY = "state IN ('sent', 'skipped', 'failed', 'uncertain')"


@dataclass(frozen=True)
class PruneRule:
    """Rows of `table` whose `time_column` is older than `keep` seconds go, `key` order; with `where`,
    only the rows that also match it (a constant SQL condition of ours, never user input)."""

    name: str
    table: str  # schema-qualified
    key: str  # the primary key (grows with time when there is no `where`)
    time_column: str
    keep: float
    where: str = ""


def rules_for(history_retention: str) -> list[PruneRule]:
    """The prune rules: the history's (and its broadcasts') as the setting asks, the fixed ones always."""
    rules: list[PruneRule] = []
    keep = parse_retention(history_retention)
    if keep is not None:
        rules.append(PruneRule("history", "kick_monitor.status_events", "id", "recorded_at", keep))
        rules.append(PruneRule(
            "broadcasts", "kick_monitor.broadcasts", "id", "ended_at", keep,
            "NOT EXISTS (SELECT 1 FROM kick_monitor.streamers s WHERE s.broadcast_id = broadcasts.id)"))
    rules.append(PruneRule("notify deliveries", "kick_monitor.notify_deliveries", "id", "updated_at", DELIVERY_KEEP,
                           FINAL_DELIVERY))
    rules.append(PruneRule(
        "notify broadcasts", "kick_monitor.notify_broadcasts", "broadcast_id", "handled_at", 86400.0,
        "NOT EXISTS (SELECT 1 FROM kick_monitor.broadcasts b WHERE b.id = notify_broadcasts.broadcast_id)"))
    rules.append(PruneRule("cluster nodes", "kick_monitor.cluster_nodes", "name", "renewed_at", NODE_KEEP,
                           "true"))
    return rules


def _delete_statement(rule: PruneRule) -> sql.Composed:
    schema, table = rule.table.split(".", 1)
    target = sql.Identifier(schema, table)
    key, column = sql.Identifier(rule.key), sql.Identifier(rule.time_column)
    if rule.where:
        return sql.SQL(
            "DELETE FROM {target} WHERE {key} IN (SELECT {key} FROM {target}"
            " WHERE {column} < now() - make_interval(secs => %(keep)s) AND ({where}) ORDER BY {key} LIMIT %(batch)s)"
        ).format(target=target, key=key, column=column, where=sql.SQL(rule.where))
    return sql.SQL(
        "DELETE FROM {target} WHERE {key} < (SELECT min({key}) FROM {target}) + %(batch)s"
        " AND {column} < now() - make_interval(secs => %(keep)s)"
    ).format(target=target, key=key, column=column)


def prune_batch(conn: psycopg2.extensions.connection, rule: PruneRule, batch: int = PRUNE_BATCH) -> int:
    """Delete one bounded slice of `rule`'s oldest expired rows and commit; rows deleted."""
    with conn.cursor() as cur:
        cur.execute(_delete_statement(rule), {"batch": batch, "keep": rule.keep})
        deleted = cur.rowcount
    conn.commit()
    return max(0, deleted)


def prune(
    conn: psycopg2.extensions.connection, rules: Sequence[PruneRule], *, batch: int = PRUNE_BATCH,
    pause: float = PRUNE_PAUSE, should_stop: Callable[[], bool] = lambda: False,
) -> dict[str, int]:
    """Prune every rule until nothing expired is left (or `should_stop`); rows deleted per rule."""
    deleted: dict[str, int] = {}
    for rule in rules:
        total = 0
        while not should_stop():
            count = prune_batch(conn, rule, batch)
            total += count
            if count == 0:
                break
            time.sleep(pause)
        deleted[rule.name] = total
    return deleted


class Pruner(Duty):
    """The planner's retention duty: one process of a deployment prunes at a time (`Duty`)."""

    name = "pruner"
    lock_key = PRUNE_LOCK_KEY
    keep_connection = False  # rounds are ten minutes apart: no idle session in between

    def __init__(self, connect: Callable[[], psycopg2.extensions.connection], history_retention: str, *,
                 every: float = PRUNE_EVERY, batch: int = PRUNE_BATCH, pause: float = PRUNE_PAUSE) -> None:
        super().__init__(connect)
        self.rules = rules_for(history_retention)
        self.every, self.batch, self.pause = every, batch, pause
        self.deleted: dict[str, int] = {}  # totals since start, for tests and logs

    def set_retention(self, history_retention: str) -> None:
        """A SIGHUP changed the retention: the next round uses it (and runs now)."""
        self.rules = rules_for(history_retention)
        self.wake()

    def enabled(self) -> bool:
        return bool(self.rules)

    def prepare(self, conn: psycopg2.extensions.connection) -> None:
        with conn.cursor() as cur:
            cur.execute("SET lock_timeout = %s", (LOCK_TIMEOUT_MS,))
            cur.execute("SET statement_timeout = %s", (STATEMENT_TIMEOUT_MS,))

    def round(self, conn: psycopg2.extensions.connection) -> dict[str, int]:
        deleted = prune(conn, self.rules, batch=self.batch, pause=self.pause, should_stop=lambda: self.stopping)
        for name, count in deleted.items():
            self.deleted[name] = self.deleted.get(name, 0) + count
            if count:
                log.info("pruned %d %s rows past their retention", count, name)
        return deleted
