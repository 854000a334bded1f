"""Webhook subscriptions, the pure part: what a sync should do, and what it did.

`plan_sync` compares what should exist (every streamer with a Kick user id, both
`MANAGED_EVENTS`) with the app's list from Kick and what the last sync recorded; no
database, no HTTP, so every rule is a unit test (tests/unit/test_webhook_plan.py).
`SyncResult` is the outcome one sync reports (`kick_monitor.webhook_subscriptions`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .kick_api import EventSubscription

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
