"""One Kick API rate budget per Kick app, shared by every process of a deployment.

Kick limits requests per *app* (client id), not per process, and does not publish the
limit. With a token bucket per process, 20 workers would send 20 times the configured
rate. So the bucket lives in PostgreSQL, which every process (on one host or several)
already reaches: one row per app holds the current rate, the tokens, when they were last
refilled, and how long a 429's Retry-After pauses everyone.

Why PostgreSQL and not a per-host file with fcntl locks: the database is the one thing all
hosts share, its clock is the only common clock, a row lock dies with its transaction (a
SIGKILLed holder never leaves the budget locked), and one grant costs one short statement
(~0.2 ms on a unix socket). A request takes one token with one atomic `UPDATE … RETURNING`,
so the whole deployment costs about one statement per API request (5 req/s → ~5
statements/s). Tokens are *reserved*: a caller is told how long to wait for its token,
so callers queue in order without polling; a reservation is never made more than
`HORIZON` seconds ahead (beyond it the caller sleeps and asks again), so a 429 soon
reaches everyone and a dead process strands at most that much of the budget.

Adaptive, because the limit is unpublished: the budget starts at the configured rate, a
429 cuts it multiplicatively (×0.5, once per pause) and pauses every caller for the
Retry-After, and it recovers additively (`base_rate / RECOVERY_SECONDS` per second).

If the database is unreachable, the process falls back to a local bucket at
`rate / fallback_share` (its share if all processes fell back at once) and tries the
database again after `RETRY_DB`: never more than the budget, never a hard stop.

The table comes with migration 3 (`kick_monitor/migrations.py`); each app's row is
created on first use. It holds no history, only the live budget: losing it loses nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import time
from collections.abc import Callable

import psycopg2
import psycopg2.extensions

from kick_monitor.ratelimit import TokenBucket

log = logging.getLogger(__name__)

HORIZON = 1.0  # seconds: the furthest ahead a token is reserved
CUT = 0.5  # multiplicative decrease on a 429
RECOVERY_SECONDS = 300.0  # additive increase: from 0 back to the configured rate in this long
MIN_RATE_SHARE = 0.05  # never below 5 % of the configured rate
RETRY_DB = 10.0  # seconds before a process on its local fallback tries the database again

INSERT = """
INSERT INTO kick_monitor.api_budget (app, base_rate, rate, burst, tokens, refilled_at)
VALUES (%(app)s, %(base)s, %(base)s, %(burst)s, %(burst)s, clock_timestamp())
ON CONFLICT (app) DO NOTHING
"""

# Reserve one token. `cur` locks the row (the newest version, even after a concurrent
# grant), `calc` refills it at the current rate (recovered additively since the last
# grant, never during a pause), and the UPDATE takes the token only when it is due
# within HORIZON seconds. A refill moment in the future is a pause (a 429's Retry-After).
GRANT = """
WITH cur AS (
    SELECT app, tokens, refilled_at, paused_until, clock_timestamp() AS t,
           LEAST(%(base)s, rate + %(recover)s * GREATEST(0, EXTRACT(EPOCH FROM
               clock_timestamp() - GREATEST(refilled_at, paused_until)))) AS rate_now
    FROM kick_monitor.api_budget WHERE app = %(app)s FOR UPDATE
), calc AS (
    SELECT app, t, rate_now, GREATEST(refilled_at, t) AS from_t,
           LEAST(%(burst)s, tokens + rate_now * GREATEST(0, EXTRACT(EPOCH FROM t - refilled_at))) AS avail
    FROM cur
), due AS (
    SELECT *, GREATEST(0, EXTRACT(EPOCH FROM from_t - t)) + GREATEST(0, 1 - avail) / rate_now AS wait
    FROM calc
)
UPDATE kick_monitor.api_budget b SET
    base_rate = %(base)s, burst = %(burst)s, rate = due.rate_now, refilled_at = due.from_t,
    tokens = CASE WHEN due.wait <= %(horizon)s THEN due.avail - 1 ELSE due.avail END
FROM due WHERE b.app = due.app
RETURNING due.wait <= %(horizon)s, due.wait::float8, due.rate_now::float8
"""

# A 429: pause everyone for Retry-After; cut the rate once per pause (several callers see
# the same 429 burst); drop any saved-up burst.
RATE_LIMITED = """
UPDATE kick_monitor.api_budget SET
    rate = CASE WHEN paused_until <= clock_timestamp() THEN GREATEST(%(floor)s, rate * %(cut)s) ELSE rate END,
    paused_until = GREATEST(paused_until, clock_timestamp() + make_interval(secs => %(wait)s)),
    refilled_at = GREATEST(refilled_at, clock_timestamp() + make_interval(secs => %(wait)s)),
    tokens = LEAST(tokens, 0),
    rate_limited_total = rate_limited_total + 1
WHERE app = %(app)s
RETURNING rate::float8
"""


def app_key(client_id: str | None) -> str:
    """The budget's row key: a digest of the client id (one budget per Kick app)."""
    return hashlib.sha256((client_id or "").encode()).hexdigest()[:16]


class SharedBudget:
    """A rate budget in PostgreSQL; the same interface as `TokenBucket` (acquire, defer, waited).

    Thread-safe (one lock around the connection). The connection is opened lazily by the
    first `acquire()`, i.e. in the thread and process that uses the client, and closed
    by `close()`.
    """

    def __init__(
        self,
        database_url: str,
        client_id: str | None,
        rate: float,
        burst: int,
        *,
        fallback_share: int = 1,
        sleep: Callable[[float], None] | None = None,
        connect: Callable[[str], psycopg2.extensions.connection] | None = None,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"rate must be > 0 and burst >= 1 (got rate={rate}, burst={burst})")
        self._url = database_url
        self.app = app_key(client_id)
        self.rate = float(rate)  # the configured (base) rate
        self.burst = int(burst)
        self.current_rate = float(rate)  # as the database last said
        self.waited = 0.0
        self._closed = threading.Event()
        self._sleep = sleep or self._interruptible_sleep
        self._connect = connect or _connect
        self._lock = threading.Lock()
        self._conn: psycopg2.extensions.connection | None = None
        self._fallback = TokenBucket(rate / max(1, fallback_share), 1, sleep=self._sleep)
        self._db_retry_at = 0.0
        self._fallback_logged = False

    @property
    def params(self) -> dict[str, object]:
        return {
            "app": self.app, "base": self.rate, "burst": float(self.burst), "horizon": HORIZON,
            "recover": self.rate / RECOVERY_SECONDS, "floor": self.rate * MIN_RATE_SHARE, "cut": CUT,
        }

    def acquire(self) -> float:
        """Block until this process may send one request; returns the seconds waited."""
        waited = 0.0
        while True:
            grant = self._grant()
            if grant is None:  # no database: the local fallback paces us
                waited += self._fallback.acquire()
                break
            granted, wait = grant
            if wait > 0:
                self._sleep(min(wait, HORIZON))
                waited += min(wait, HORIZON)
            if granted:
                break
        self.waited += waited
        return waited

    def defer(self, seconds: float) -> None:
        """A 429: pause every caller of the app for `seconds` and cut the shared rate."""
        with self._lock:
            conn = self._connection()
            if conn is None:
                self._fallback.defer(seconds)
                return
            try:
                with conn.cursor() as cur:
                    cur.execute(RATE_LIMITED, {**self.params, "wait": max(0.0, seconds)})
                    row = cur.fetchone()
                conn.commit()
            except psycopg2.Error as exc:
                self._lost(exc)
                self._fallback.defer(seconds)
                return
        if row is not None:
            self.current_rate = float(row[0])
            log.warning("Kick API rate limited: every caller pauses %.1f s; shared rate now %.2f/s",
                        seconds, self.current_rate)

    def close(self) -> None:
        """Close the connection; a caller waiting for a token gets KickApiUnavailable."""
        self._closed.set()
        with self._lock:
            if self._conn is not None:
                with contextlib.suppress(psycopg2.Error):
                    self._conn.close()
                self._conn = None

    # -- internals ----------------------------------------------------------------------
    def _interruptible_sleep(self, seconds: float) -> None:
        if self._closed.wait(seconds):
            from kick_monitor.kick_api import KickApiUnavailable

            raise KickApiUnavailable("Kick API client closed")

    def _grant(self) -> tuple[bool, float] | None:
        """(granted, seconds to wait) from the database; None while it is unreachable."""
        with self._lock:
            conn = self._connection()
            if conn is None:
                return None
            try:
                with conn.cursor() as cur:
                    cur.execute(GRANT, self.params)
                    row = cur.fetchone()
                    if row is None:  # the row vanished (table recreated): put it back
                        cur.execute(INSERT, self.params)
                conn.commit()
            except psycopg2.Error as exc:
                self._lost(exc)
                return None
        if row is None:
            return False, 0.0
        self.current_rate = float(row[2])
        return bool(row[0]), max(0.0, float(row[1]))

    def _connection(self) -> psycopg2.extensions.connection | None:
        if self._conn is not None:
            return self._conn
        if time.monotonic() < self._db_retry_at:
            return None
        from kick_monitor.database import DatabaseUnavailable

        conn = None
        try:
            conn = self._connect(self._url)
            with conn.cursor() as cur:
                cur.execute(INSERT, self.params)
            conn.commit()
        except (DatabaseUnavailable, psycopg2.Error) as exc:
            if conn is not None:
                with contextlib.suppress(psycopg2.Error):
                    conn.close()
            self._lost(exc)
            return None
        if self._fallback_logged:
            log.info("shared Kick API budget: database reachable again")
            self._fallback_logged = False
        self._conn = conn
        return conn

    def _lost(self, exc: BaseException) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg2.Error):
                self._conn.close()
            self._conn = None
        self._db_retry_at = time.monotonic() + RETRY_DB
        if not self._fallback_logged:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            log.warning("shared Kick API budget unavailable (%s); pacing this process alone at %.2f/s",
                        first, self._fallback.rate)
            self._fallback_logged = True


def _connect(url: str) -> psycopg2.extensions.connection:
    from kick_monitor.database import connect

    return connect(url, application_name="kick-monitor api budget")
