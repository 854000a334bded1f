"""The subscription sync as a planner duty: one process of a whole deployment at a time.

Kick's subscriptions belong to the app, not to a host: with per-shard units or several
hosts, every planner runs this duty, and the advisory lock of `kick_monitor.duty` lets one
of them do a round at a time. A round is also skipped when the deployment's last sync
(`kick_monitor.webhook_sync`, whoever ran it) saw the same streamer list less than
`webhook_sync_interval` ago, so N process trees cost one sync per interval, and a wake-up
for a change that does not touch user ids (a channel id learnt) costs one query.

When it runs: at start, when woken (the planner wakes it on every streamer NOTIFY), and
every `webhook_sync_interval`; a round that stopped early (Kick unavailable, out of
time) is retried after `RETRY_AFTER`. Only when webhooks are wanted
(`webhook_subscribe`: on, or auto with this host's receiver on) and the API has
credentials — without them it says so once and stays idle.

The limit case is reported once (ERROR) with how many streamers are left without
webhooks, again only when that number changes, and once more when it is over.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import psycopg2.extensions

from .config import Settings
from .duty import Duty
from .kick_api import KickApiError, KickAuthError
from .metric_deltas import CounterDeltas
from .preload import release_free_memory
from .webhook_plan import STATES, SyncResult, error_kinds, fingerprint
from .webhook_store import count_states, last_run, load_desired, record_run
from .webhook_subscriptions import sync_subscriptions

log = logging.getLogger("kick_monitor.webhooks")

SYNC_LOCK_KEY = 0x4B4D5748  # advisory lock "KMWH": one subscription sync per deployment at a time
ROUND_BUDGET = 120.0  # seconds of creating per round; the rest continues RETRY_AFTER later
RETRY_AFTER = 30.0  # seconds before a round that stopped early is retried
FRESH_FACTOR = 0.9  # another process's sync this recent (× interval) with the same list is enough
STATEMENT_TIMEOUT_MS = 10_000


def receiver_address(settings: Settings) -> tuple[str, int, str]:
    """(host, port, path) of the webhook receiver as configured; port 0 = no receiver here.

    Read defensively: the receiver's settings (`webhook_host`/`_port`/`_path`) are the
    receiver role's; their defaults are repeated here.
    """
    host = str(getattr(settings, "webhook_host", "127.0.0.1") or "127.0.0.1")
    port = int(getattr(settings, "webhook_port", 0) or 0)
    path = str(getattr(settings, "webhook_path", "/webhooks/kick") or "/webhooks/kick")
    return host, port, path


def sync_wanted(settings: Settings) -> tuple[bool, str]:
    """Whether this process tree keeps subscriptions in sync, and why (for logs and status)."""
    mode = settings.webhook_subscribe
    if mode != "auto":
        return mode == "on", f"KICK_MONITOR_WEBHOOK_SUBSCRIBE={mode}"
    _, port, _ = receiver_address(settings)
    if port:
        return True, f"auto: this host runs the webhook receiver (port {port})"
    return False, "auto: no webhook receiver on this host (KICK_MONITOR_WEBHOOK_PORT=0)"


class WebhookSync(Duty):
    """Keeps Kick's webhook subscriptions equal to the streamer list (`sync_subscriptions`)."""

    name = "webhook-sync"
    lock_key = SYNC_LOCK_KEY
    keep_connection = False  # rounds are minutes apart

    def __init__(
        self, connect: Callable[[], psycopg2.extensions.connection], settings: Callable[[], Settings],
        make_client: Callable[[], Any], telemetry: Any,
    ) -> None:
        super().__init__(connect)
        self._settings = settings
        self._make_client = make_client
        self._telemetry = telemetry
        self._client: Any = None
        self._replace_client = False
        self._deltas = CounterDeltas()
        self._said_idle = ""  # why it is idle, said once per reason
        self._limit_said: int | None = None  # streamers left without webhooks when the limit was last said
        self._again_soon = False
        self._failure_said = ""  # the last failure of a whole round, said once
        self._problem_said = ""  # the last problem of a round that ran, said once
        self.last: SyncResult | None = None  # the last round's result (tests, logs)
        self._rounds = 0  # rounds this process ran under the lock (skipped ones included)

    @property
    def every(self) -> float:  # type: ignore[override]
        return RETRY_AFTER if self._again_soon else self._settings().webhook_sync_interval

    def settings_changed(self) -> None:
        """A SIGHUP changed settings: the next round uses a new client and the new switch."""
        self._replace_client = True
        self.wake()

    def enabled(self) -> bool:
        settings = self._settings()
        wanted, why = sync_wanted(settings)
        idle = "" if wanted else f"webhook subscriptions are not synced here ({why})"
        if wanted and not settings.has_api_credentials:
            idle = ("webhook subscriptions are not synced: no Kick API credentials (KICK_MONITOR_CLIENT_ID and"
                    " _CLIENT_SECRET); the receiver still accepts signed deliveries")
        if idle != self._said_idle:
            if idle:
                log.log(logging.WARNING if wanted else logging.INFO, "%s", idle)
            self._said_idle = idle
        return not idle

    def prepare(self, conn: psycopg2.extensions.connection) -> None:
        with conn.cursor() as cur:
            cur.execute("SET statement_timeout = %s", (STATEMENT_TIMEOUT_MS,))

    def run_round(self) -> Any:
        rounds = self._rounds
        result = super().run_round()
        if self._rounds == rounds:  # another process syncs now: show the deployment's state anyway
            self._export_states()
        return result

    def round(self, conn: psycopg2.extensions.connection) -> SyncResult | None:
        self._rounds += 1
        settings = self._settings()
        desired = load_desired(conn)
        previous = last_run(conn)
        conn.rollback()
        if previous is not None:
            age, outcome, digest = previous
            if digest == fingerprint(desired) and outcome in ("ok", "limit_reached", "refused") \
                    and age < FRESH_FACTOR * settings.webhook_sync_interval:
                self._again_soon = False
                self._telemetry.WEBHOOK_SYNCS.labels(outcome="skipped").inc()
                self._export_states(conn)
                return None  # the deployment synced this list lately (maybe another process)
        try:
            result = sync_subscriptions(conn, self._api(), desired=desired,
                                        deadline=time.monotonic() + ROUND_BUDGET, should_stop=lambda: self.stopping)
        except KickApiError as exc:  # listing failed or the credentials were refused: nothing was changed
            conn.rollback()
            kind = "auth" if isinstance(exc, KickAuthError) else "list"
            self._again_soon = kind != "auth"  # a refused secret waits for a SIGHUP or the interval
            failed = SyncResult(streamers=len(desired), listed=False, errors=[str(exc)[:300]])
            record_run(conn, failed, fingerprint(desired), time.time())
            conn.commit()
            self._telemetry.WEBHOOK_SYNCS.labels(outcome="failed").inc()
            self._telemetry.WEBHOOK_SYNC_ERRORS.labels(kind=kind).inc()
            if str(exc) != self._failure_said:  # the same failure every interval is said once
                log.warning("webhook subscription sync failed, nothing changed: %s", exc)
                self._failure_said = str(exc)
            return failed
        finally:
            self._advance_api_metrics()
        if self._failure_said:
            log.info("webhook subscription sync works again")
            self._failure_said = ""
        self.last = result
        self._again_soon = not result.complete
        self._report(result)
        self._telemetry.WEBHOOK_SYNCS.labels(outcome=result.outcome).inc()
        for kind in error_kinds(result):
            self._telemetry.WEBHOOK_SYNC_ERRORS.labels(kind=kind).inc()
        self._export_states(conn)
        release_free_memory()  # Kick's list and the plan were a burst as big as the streamer list
        return result

    def finish(self) -> None:
        if self._client is not None:
            self._client.close()

    # -- helpers ------------------------------------------------------------------------
    def _advance_api_metrics(self) -> None:
        if self._telemetry.enabled and self._client is not None:
            self._deltas.advance_api(self._telemetry, self._client.stats.snapshot())

    def _report(self, result: SyncResult) -> None:
        if result.limit_reached:
            if self._limit_said != result.left_without:
                log.error("%s", result.limit_message())
                self._limit_said = result.left_without
        elif self._limit_said is not None:
            log.warning("webhook subscriptions: the limit no longer stops the sync (%s)", result.summary())
            self._limit_said = None
        if result.created or result.deleted or result.failed:
            log.info("webhook subscriptions synced: %s", result.summary())
        others = [e for e in result.errors if not result.limit_reached or "limit" not in e.lower()]
        if others and others[0] != self._problem_said:  # the same refusal every interval is said once
            self._problem_said = others[0]
            log.warning("webhook subscription sync: %s%s", others[0],
                        f" (and {len(others) - 1} more problems)" if len(others) > 1 else "")

    def _export_states(self, conn: psycopg2.extensions.connection | None = None) -> None:
        """Subscriptions by state into the gauge, from the table (what the deployment's last sync left)."""
        if not self._telemetry.enabled:
            return
        own = conn is None
        try:
            if own:
                conn = self._connect()
            assert conn is not None
            counts = count_states(conn)
            conn.rollback()
        except psycopg2.Error as exc:
            log.debug("webhook subscription counts unavailable: %s", exc)
            return
        finally:
            if own and conn is not None:
                conn.close()
        for state in STATES:
            self._telemetry.WEBHOOK_SUBSCRIPTIONS.labels(state=state).set(counts.get(state, 0))

    def _api(self) -> Any:
        if self._client is None or self._replace_client:
            old, self._replace_client = self._client, False
            self._client = self._make_client()
            if old is not None:
                old.close()
        return self._client
