"""Kick webhook subscriptions kept equal to the streamer list: plan, apply, record.

Kick sends an app's webhook deliveries only for what the app subscribed to, per
broadcaster user id, and drops subscriptions by itself (an event failing for over a day;
webhooks switched off in the developer settings). So the list of subscriptions is not
"set once": a sync compares what should exist with what Kick lists and repairs the
difference, at start, when streamers are added or removed, and every
`webhook_sync_interval`.

What should exist: for every streamer with a Kick user id, `livestream.status.updated`
and `livestream.metadata.updated`, version 1, method webhook (`MANAGED_EVENTS`). What is
done with the app's list (`plan_sync`, a pure function):
- ours and wanted: kept (one per broadcaster and event; duplicates deleted);
- missing: created, one request per broadcaster carrying both events (the API takes one
  broadcaster per request); a subscription recorded as made but no longer listed was
  dropped by Kick, and is counted as re-created;
- one of our events for a user id nobody monitors (a removed streamer), or of another
  version: deleted. Other events are never touched (the app may use them for other
  things); deliveries go to the one URL of the app, so its status events are ours.

Requests go through the API client, so they draw from the deployment's one rate budget
and retry like every call. "Subscription limit reached" is not retried: creating stops
for the round, the streamers left without webhooks are recorded as `failed` with the
reason (they stay on Pusher and reconciliation), and the caller reports it once. A run
of refusals of new subscriptions that are not the limit also stops creating until the next
sync (`MAX_REFUSALS_IN_A_ROW`): an API that refuses everything gets a few requests per
sync, not one per streamer. Pairs Kick refused before (an unknown broadcaster) are tried
again once per sync, after all the others, under the same rule.

The outcome is recorded per (streamer, event) in `kick_monitor.webhook_subscriptions`
(state `subscribed` / `missing` / `failed`, the subscription id, the last error) and per
run in `kick_monitor.webhook_sync` (one row: when, outcome, the list's fingerprint), for
`kick-monitor webhooks status` and the metrics. `WebhookSync` (`kick_monitor.webhook_sync`)
runs it as a planner duty, one process of a deployment at a time.

>>> result = sync_subscriptions(conn, client)          # client: a KickApiClient with credentials
>>> result.summary()
'2000 subscribed (100 created, 100 of them re-created), 100 deleted'
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import psycopg2.extensions
import psycopg2.extras

from .kick_api import (
    EventSubscription,
    KickApiClient,
    KickApiError,
    KickApiUnavailable,
    KickAuthError,
    KickSubscriptionLimitError,
    is_limit_message,
)

log = logging.getLogger("kick_monitor.webhooks")

STATUS_EVENT = "livestream.status.updated"
METADATA_EVENT = "livestream.metadata.updated"
MANAGED_EVENTS: dict[str, int] = {STATUS_EVENT: 1, METADATA_EVENT: 1}  # name -> version
METHOD = "webhook"
SUBSCRIBED, MISSING, FAILED = "subscribed", "missing", "failed"
STATES = (SUBSCRIBED, MISSING, FAILED)
MAX_REFUSALS_IN_A_ROW = 5  # refusals other than the limit that end a round's creating
LIMIT_REASON = "Kick's event subscription limit is reached"

Key = tuple[int, str]  # (streamer id, event name)


# ---------------------------------------------------------------- the plan (pure)


@dataclass(frozen=True, slots=True)
class Recorded:
    """What the table says about one (streamer, event) after the last sync."""

    subscription_id: str | None
    state: str
    error: str | None = None


@dataclass(frozen=True)
class SyncPlan:
    """What one sync does: `create` events per streamer, `delete` subscription ids."""

    present: dict[Key, str]  # wanted and listed by Kick: the subscription id
    create: dict[int, list[str]]  # streamer id -> events to subscribe, in streamer id order
    delete: list[str]  # subscription ids: removed streamers, other versions, duplicates
    dropped: frozenset[Key]  # recorded as subscribed, no longer listed: Kick dropped them


def plan_sync(
    desired: Mapping[int, int],
    remote: Iterable[EventSubscription],
    recorded: Mapping[Key, Recorded] | None = None,
    events: Mapping[str, int] = MANAGED_EVENTS,
) -> SyncPlan:
    """Compare what should exist (`desired`: streamer id -> Kick user id) with Kick's list."""
    streamer_of = {user_id: streamer_id for streamer_id, user_id in desired.items()}
    present: dict[Key, str] = {}
    delete: list[str] = []
    for sub in remote:
        if sub.event not in events or (sub.method or METHOD) != METHOD:
            continue  # not ours to manage
        streamer_id = streamer_of.get(sub.broadcaster_user_id) if sub.broadcaster_user_id is not None else None
        key = (streamer_id, sub.event) if streamer_id is not None else None
        if key is None or sub.version != events[sub.event] or key in present:
            delete.append(sub.id)
        else:
            present[key] = sub.id
    create: dict[int, list[str]] = {}
    for streamer_id in sorted(desired):
        missing = [name for name in events if (streamer_id, name) not in present]
        if missing:
            create[streamer_id] = missing
    dropped = frozenset(
        key for key, row in (recorded or {}).items()
        if row.state == SUBSCRIBED and key[0] in desired and key not in present
    )
    return SyncPlan(present, create, delete, dropped)


def fingerprint(desired: Mapping[int, int]) -> str:
    """A short digest of the wanted (streamer, user id) pairs: "did the list change?"."""
    digest = hashlib.sha256()
    for streamer_id in sorted(desired):
        digest.update(f"{streamer_id}:{desired[streamer_id]};".encode())
    return digest.hexdigest()[:32]


# ---------------------------------------------------------------- the result


@dataclass
class SyncResult:
    """What one sync did and left; `limit_reached` and `left_without` name the limit case."""

    subscribed: int = 0  # (streamer, event) pairs subscribed after the sync
    created: int = 0
    recreated: int = 0  # of `created`: ones Kick had dropped on its own
    deleted: int = 0
    failed: int = 0  # pairs left failed (the limit, or Kick refused them)
    refused: int = 0  # of this round's attempts: pairs Kick refused for another reason than the limit
    missing: int = 0  # pairs not tried this round (Kick unavailable, out of time)
    streamers: int = 0  # streamers with a user id (each wants every managed event)
    left_without: int = 0  # streamers with at least one event not subscribed
    limit_reached: bool = False
    complete: bool = True  # False: stopped early (Kick unavailable, out of time): try again soon
    listed: bool = True  # False: Kick's list could not be read: nothing was changed
    errors: list[str] = field(default_factory=list)  # distinct problems, first ones first

    @property
    def outcome(self) -> str:
        if not self.listed:
            return "failed"
        if self.limit_reached:
            return "limit_reached"
        if not self.complete:
            return "partial"
        return "refused" if self.failed else "ok"

    def summary(self) -> str:
        parts = [f"{self.subscribed} subscribed"]
        if self.created:
            parts[0] += f" ({self.created} created" + (
                f", {self.recreated} of them re-created" if self.recreated else "") + ")"
        if self.deleted:
            parts.append(f"{self.deleted} deleted")
        if self.failed:
            parts.append(f"{self.failed} failed")
        if self.missing:
            parts.append(f"{self.missing} not yet tried")
        return ", ".join(parts)

    def limit_message(self) -> str:
        """The one error the limit case is reported with."""
        return (
            f"{LIMIT_REASON}: {self.left_without} of {self.streamers} streamers are left without webhooks"
            " (they stay on Pusher and reconciliation). Not retried before the next sync; remove streamers"
            " or ask Kick to raise the app's limit"
        )

    def note(self, problem: str) -> None:
        if problem not in self.errors and len(self.errors) < 5:
            self.errors.append(problem)


# ---------------------------------------------------------------- the database


def load_desired(conn: psycopg2.extensions.connection) -> dict[int, int]:
    """Streamer id -> Kick user id for every streamer with a user id (all of them are monitored)."""
    with conn.cursor() as cur:
        cur.execute("SELECT id, kick_user_id FROM kick_monitor.streamers WHERE kick_user_id IS NOT NULL")
        rows = cur.fetchall()
    return {int(streamer_id): int(user_id) for streamer_id, user_id in rows}


def load_recorded(conn: psycopg2.extensions.connection) -> dict[Key, Recorded]:
    with conn.cursor() as cur:
        cur.execute(
            "SELECT streamer_id, event, subscription_id, state, last_error FROM kick_monitor.webhook_subscriptions"
        )
        rows = cur.fetchall()
    return {(int(r[0]), str(r[1])): Recorded(r[2], r[3], r[4]) for r in rows}


def store_states(
    conn: psycopg2.extensions.connection, desired: Mapping[int, int], states: Mapping[Key, Recorded],
    recorded: Mapping[Key, Recorded],
) -> None:
    """Write the pairs whose state changed and forget streamers no longer wanted (no commit)."""
    changed = [
        (sid, event, desired[sid], row.subscription_id, row.state, row.error)
        for (sid, event), row in states.items() if recorded.get((sid, event)) != row
    ]
    gone = sorted({sid for sid, _ in recorded if sid not in desired})
    with conn.cursor() as cur:
        if changed:
            psycopg2.extras.execute_values(
                cur,
                "INSERT INTO kick_monitor.webhook_subscriptions AS w"
                " (streamer_id, event, kick_user_id, subscription_id, state, last_error) VALUES %s"
                " ON CONFLICT (streamer_id, event) DO UPDATE SET kick_user_id = excluded.kick_user_id,"
                " subscription_id = excluded.subscription_id, state = excluded.state,"
                " last_error = excluded.last_error, updated_at = now()",
                changed, page_size=1000,
            )
        if gone:
            cur.execute("DELETE FROM kick_monitor.webhook_subscriptions WHERE streamer_id = ANY(%s)", (gone,))


def record_run(conn: psycopg2.extensions.connection, result: SyncResult, digest: str, started: float) -> None:
    """The one row of `webhook_sync`: when the last sync ran, how it ended, for which list (no commit)."""
    with conn.cursor() as cur:
        cur.execute(
            "INSERT INTO kick_monitor.webhook_sync AS s (id, started_at, finished_at, outcome, error, fingerprint,"
            " created, deleted, recreated)"
            " VALUES (1, to_timestamp(%s), clock_timestamp(), %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (id) DO UPDATE SET started_at = excluded.started_at, finished_at = excluded.finished_at,"
            " outcome = excluded.outcome, error = excluded.error, fingerprint = excluded.fingerprint,"
            " created = excluded.created, deleted = excluded.deleted, recreated = excluded.recreated",
            (started, result.outcome, "; ".join(result.errors)[:1000] or None, digest,
             result.created, result.deleted, result.recreated),
        )


def last_run(conn: psycopg2.extensions.connection) -> tuple[float, str, str | None] | None:
    """(seconds since the last sync finished, its outcome, its fingerprint), or None if none ran."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT extract(epoch FROM clock_timestamp() - finished_at)::float8, outcome, fingerprint"
            " FROM kick_monitor.webhook_sync WHERE id = 1"
        )
        row = cur.fetchone()
    return (float(row[0]), str(row[1]), row[2]) if row else None


def count_states(conn: psycopg2.extensions.connection) -> dict[str, int]:
    """Pairs by state; streamers with a user id not yet in the table count as missing."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT w.state, count(*) FROM kick_monitor.webhook_subscriptions w"
            " JOIN kick_monitor.streamers s ON s.id = w.streamer_id AND s.kick_user_id IS NOT NULL GROUP BY 1"
        )
        counts = {state: 0 for state in STATES}
        counts.update({str(state): int(n) for state, n in cur.fetchall()})
        cur.execute(
            "SELECT count(*) FROM kick_monitor.streamers s WHERE s.kick_user_id IS NOT NULL"
        )
        row = cur.fetchone()
    wanted = int(row[0]) * len(MANAGED_EVENTS) if row else 0
    counts[MISSING] += max(0, wanted - sum(counts.values()))
    return counts


# ---------------------------------------------------------------- the sync


def sync_subscriptions(
    conn: psycopg2.extensions.connection,
    api: KickApiClient,
    *,
    desired: Mapping[int, int] | None = None,
    deadline: float | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> SyncResult:
    """List, plan, delete, create; record the outcome and commit. See the module docstring.

    `deadline` (monotonic) stops starting new creations: the rest stays `missing` and the
    result is not `complete`. KickAuthError (and KickApiError from listing: nothing can be
    planned without the list) propagate; the table is left as it was then.
    """
    started = time.time()
    if desired is None:
        desired = load_desired(conn)
    recorded = load_recorded(conn)
    conn.rollback()  # no transaction stays open across the API calls below
    plan = plan_sync(desired, api.event_subscriptions(), recorded)
    result = SyncResult(streamers=len(desired))
    states: dict[Key, Recorded] = {key: Recorded(sub_id, SUBSCRIBED) for key, sub_id in plan.present.items()}
    if plan.delete:
        try:
            result.deleted = api.delete_event_subscriptions(plan.delete)
        except KickAuthError:
            raise
        except KickApiError as exc:  # not fatal: creating does not depend on it; the next sync retries
            result.note(f"deleting {len(plan.delete)} subscriptions failed: {exc}")
            result.complete = False
    _create(api, desired, plan, states, recorded, result, deadline, should_stop)
    for state in states.values():
        if state.state == SUBSCRIBED:
            result.subscribed += 1
        elif state.state == FAILED:
            result.failed += 1
        else:
            result.missing += 1
    result.left_without = len({sid for (sid, _), row in states.items() if row.state != SUBSCRIBED})
    store_states(conn, desired, states, recorded)
    record_run(conn, result, fingerprint(desired), started)
    conn.commit()
    return result


def _create(
    api: KickApiClient, desired: Mapping[int, int], plan: SyncPlan, states: dict[Key, Recorded],
    recorded: Mapping[Key, Recorded], result: SyncResult, deadline: float | None, should_stop: Callable[[], bool],
) -> None:
    """Create what the plan lacks, one request per streamer, until the limit, a run of refusals,
    an unavailable Kick, the deadline or a stop; what is left is recorded with the reason."""
    stop_reason: Recorded | None = None
    refusals = 0
    group_of_refused = False
    for streamer_id, names, refused_before in _creation_order(plan, recorded):
        if refused_before and not group_of_refused:  # those refused last time: a run of their own
            group_of_refused, refusals = True, 0
            if stop_reason is not None and stop_reason.error and stop_reason.error.startswith("not tried: Kick"):
                stop_reason = None
        out_of_time = deadline is not None and time.monotonic() >= deadline
        if stop_reason is None and (should_stop() or out_of_time):
            stop_reason = Recorded(None, MISSING, "not tried yet: the sync ran out of time")
            result.complete = False
        if stop_reason is not None:
            for name in names:
                states[(streamer_id, name)] = _keep_error(recorded.get((streamer_id, name)), stop_reason)
            continue
        try:
            made = api.create_event_subscriptions(
                desired[streamer_id], [(name, MANAGED_EVENTS[name]) for name in names], METHOD
            )
        except KickSubscriptionLimitError as exc:
            result.limit_reached = True
            result.note(str(exc))
            stop_reason = Recorded(None, FAILED, LIMIT_REASON)
            for name in names:
                states[(streamer_id, name)] = stop_reason
            continue
        except KickAuthError:
            raise
        except KickApiUnavailable as exc:
            result.note(str(exc))
            result.complete = False
            stop_reason = Recorded(None, MISSING, f"Kick unavailable: {exc}"[:300])
            for name in names:
                states[(streamer_id, name)] = stop_reason
            continue
        except KickApiError as exc:
            refusals += 1
            result.refused += len(names)
            result.note(str(exc))
            for name in names:
                states[(streamer_id, name)] = Recorded(None, FAILED, str(exc)[:300])
            if refusals >= MAX_REFUSALS_IN_A_ROW:  # Kick refuses everything new: wait for the next sync
                stop_reason = Recorded(None, MISSING, f"not tried: Kick refused {refusals} in a row ({exc})"[:300])
            continue
        refusals = 0
        by_name = {item.name: item for item in made if item.name}
        for name in names:
            item = by_name.get(name) or (made[0] if len(made) == 1 and len(names) == 1 else None)
            if item is not None and item.subscription_id:
                states[(streamer_id, name)] = Recorded(item.subscription_id, SUBSCRIBED)
                result.created += 1
                result.recreated += (streamer_id, name) in plan.dropped
            elif item is not None and item.error and is_limit_message(item.error):
                result.limit_reached = True
                result.note(f"{name} of user {desired[streamer_id]}: {item.error[:200]}")
                stop_reason = states[(streamer_id, name)] = Recorded(None, FAILED, LIMIT_REASON)
            else:
                why = (item.error if item is not None and item.error else "Kick returned no subscription id")[:300]
                result.refused += 1
                result.note(f"{name} of user {desired[streamer_id]}: {why}")
                states[(streamer_id, name)] = Recorded(None, FAILED, why)


def _creation_order(plan: SyncPlan, recorded: Mapping[Key, Recorded]) -> list[tuple[int, list[str], bool]]:
    """(streamer, events, refused before) to create: new ones first, in streamer id order; those
    Kick refused for another reason than the limit last time (e.g. an unknown broadcaster) last,
    so a few permanent refusals can neither stop nor delay the others."""
    fresh: list[tuple[int, list[str], bool]] = []
    again: list[tuple[int, list[str], bool]] = []
    for streamer_id, names in plan.create.items():
        rows = [recorded.get((streamer_id, name)) for name in names]
        refused = any(row is not None and row.state == FAILED and row.error != LIMIT_REASON for row in rows)
        (again if refused else fresh).append((streamer_id, names, refused))
    return fresh + again


def _keep_error(before: Recorded | None, now: Recorded) -> Recorded:
    """A pair not tried this round keeps its earlier failure (more telling than "not tried")."""
    if before is not None and before.state == FAILED and now.state == MISSING:
        return Recorded(None, FAILED, before.error)
    return now


def error_kinds(result: SyncResult) -> list[str]:
    """Kinds of trouble a round met, for `kick_monitor_webhook_sync_errors_total`."""
    kinds = []
    if result.limit_reached:
        kinds.append("limit")
    if result.refused:
        kinds.append("refused")
    if not result.complete and result.missing:
        kinds.append("incomplete")
    return kinds


def describe_states(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{counts.get(state, 0)} {state}" for state in STATES)


def as_json(result: SyncResult) -> dict[str, Any]:
    return {
        "outcome": result.outcome, "subscribed": result.subscribed, "created": result.created,
        "recreated": result.recreated, "deleted": result.deleted, "failed": result.failed,
        "missing": result.missing, "streamers": result.streamers, "left_without_webhooks": result.left_without,
        "limit_reached": result.limit_reached, "errors": result.errors,
    }
