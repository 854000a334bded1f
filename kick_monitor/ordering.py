"""Ordering changes per streamer without trusting any wall clock (issue 14).

A change is ranked by `(generation, seq)`:
- `generation` comes from the PostgreSQL sequence `kick_monitor.assignment_generation`,
  taken each time streamers are handed to a worker (at spawn, with a `Subscribe`). It
  grows across processes, restarts and hosts, so a new owner always outranks an old one.
- `seq` is taken by the worker when it creates the change: the host's monotonic clock in
  ns, bumped to stay strictly increasing. It never steps back when the wall clock does,
  and it is comparable across the worker processes of one host, so a worker respawned
  without a fresh generation (database down at the time) still outranks its predecessor.
Wall-clock `received_at` is kept for latency and display only. The full rule, with the
cross-source rule for webhooks, is in docs/architecture.md ("Ordering of changes").

Also here: the clock sanity check at the writer's start and the offset it exports.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime

import psycopg2.extensions

log = logging.getLogger("kick_monitor.ordering")

CLOCK_TOLERANCE = 1.0  # seconds the local clock may trail the database's before we say so


def allocate_generation(conn: psycopg2.extensions.connection) -> int:
    """A fresh assignment generation, higher than every one handed out before (commits).

    psycopg2 errors reach the caller, which decides: keeping the previous generation is
    safe on one host, since `seq` is monotonic across its processes.
    """
    with conn.cursor() as cur:
        cur.execute("SELECT nextval('kick_monitor.assignment_generation')")
        row = cur.fetchone()
    conn.commit()
    assert row is not None
    return int(row[0])


class MonotonicSeq:
    """Strictly increasing change sequence numbers from the host's monotonic clock (ns)."""

    def __init__(self) -> None:
        self._last = 0

    def next(self) -> int:
        value = max(time.monotonic_ns(), self._last + 1)
        self._last = value
        return value


@dataclass(frozen=True, slots=True)
class ClockReading:
    """The local wall clock against the database's, measured once.

    `offset` is the database's now() minus local time (positive: we are behind);
    `behind_newest` is how far local time trails the newest time already recorded
    (`last_event_at` written by us or an earlier run, `recorded_at` by the database),
    0 if it does not.
    """

    offset: float
    behind_newest: float


def _epoch(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


def read_offset(conn: psycopg2.extensions.connection) -> float:
    """Database now() minus local time, in seconds (midpoint of the round trip)."""
    before = time.time()
    with conn.cursor() as cur:
        cur.execute("SELECT extract(epoch FROM clock_timestamp())::float8")
        row = cur.fetchone()
    after = time.time()
    conn.rollback()
    assert row is not None
    return float(row[0]) - (before + after) / 2


def read_clock(conn: psycopg2.extensions.connection) -> ClockReading:
    """Measure the offset and compare with the newest recorded times (two index-cheap reads)."""
    before = time.time()
    with conn.cursor() as cur:
        cur.execute(
            "SELECT clock_timestamp(),"
            " (SELECT max(last_event_at) FROM kick_monitor.streamers),"
            " (SELECT recorded_at FROM kick_monitor.status_events ORDER BY id DESC LIMIT 1)"
        )
        row = cur.fetchone()
    after = time.time()
    conn.rollback()
    assert row is not None
    local = (before + after) / 2
    db_now = _epoch(row[0])
    assert db_now is not None
    newest = max(t for t in (db_now, _epoch(row[1]), _epoch(row[2])) if t is not None)
    return ClockReading(offset=db_now - local, behind_newest=max(0.0, newest - local))


def check_clock(conn: psycopg2.extensions.connection) -> ClockReading:
    """At start: warn once if the local clock trails the database or what is recorded.

    Ordering does not depend on it (see the module docstring); the warning is for the
    operator, since `received_at` and `last_event_at` shown to users come from this clock.
    """
    reading = read_clock(conn)
    if reading.behind_newest > CLOCK_TOLERANCE:
        log.warning(
            "the local clock is %.1fs behind the database or the newest recorded change"
            " (database now() minus local time: %+.1fs); ordering does not depend on it,"
            " but received times will look out of order until the clock is right",
            reading.behind_newest, reading.offset,
        )
    return reading
