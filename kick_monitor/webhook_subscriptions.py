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

The pure rules are in `kick_monitor.webhook_plan`, the tables in `kick_monitor.webhook_store`.

>>> result = sync_subscriptions(conn, client)          # client: a KickApiClient with credentials
>>> result.summary()
'2000 subscribed (100 created, 100 of them re-created), 100 deleted'
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import psycopg2.extensions

from .kick_api import (
    KickApiClient,
    KickApiError,
    KickApiUnavailable,
    KickAuthError,
    KickSubscriptionLimitError,
    is_limit_message,
)
from .webhook_plan import (
    FAILED,
    LIMIT_REASON,
    MANAGED_EVENTS,
    MAX_REFUSALS_IN_A_ROW,
    METHOD,
    MISSING,
    SUBSCRIBED,
    Key,
    Recorded,
    SyncPlan,
    SyncResult,
    fingerprint,
    plan_sync,
)
from .webhook_store import load_desired, load_recorded, record_run, store_states


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
