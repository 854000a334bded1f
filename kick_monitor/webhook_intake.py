"""Between the receiver's HTTP threads and its loop: hand a change over, wait until it is durable.

An HTTP thread calls `submit(change, timeout)`: the change is queued, the loop is woken
(a pipe it select()s on), and the thread waits until the writer has acknowledged the
change — committed, or in the writer's spool — or `timeout` passes. Only the loop touches
the writer connection (`ChangeSender`); it calls `take()` to collect what was queued and
`acknowledged(changes)` from the sender's ack callback, which releases the waiting threads.

A message id the writer has acknowledged is remembered (`recent`, bounded): Kick's
re-delivery of it is answered at once ("duplicate"), without a round trip. Forgetting one
is harmless: it is sent again and the writer's `ON CONFLICT (change_id)` absorbs it.

A change is handed to the writer once while it is in flight (sent, not yet acknowledged):
Kick's retries of a delivery that timed out (writer restarting) wait for the same copy
instead of piling up more, and `max_in_flight` bounds them, so the sender (which keeps
every unacknowledged change until the writer takes it) never has to drop one.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field

from .messages import StatusChange

RECENT_IDS = 100_000  # acknowledged change ids remembered for duplicate answers (~10 MB)


@dataclass(eq=False)
class _Waiter:
    done: threading.Event = field(default_factory=threading.Event)


class Intake:
    """See the module docstring. `max_waiting` bounds the deliveries waiting for the writer."""

    def __init__(self, max_waiting: int = 1000, recent: int = RECENT_IDS, max_in_flight: int = 50_000) -> None:
        self.max_waiting = max_waiting
        self.max_in_flight = max_in_flight
        self._in_flight: set[str] = set()
        self._recent_cap = recent
        self._lock = threading.Lock()
        self._queued: list[StatusChange] = []
        self._waiters: dict[str, list[_Waiter]] = {}
        self._recent: OrderedDict[str, None] = OrderedDict()
        self._waiting = 0
        self.wake_read, self._wake_write = os.pipe()
        os.set_blocking(self.wake_read, False)
        os.set_blocking(self._wake_write, False)

    @property
    def waiting(self) -> int:
        """Deliveries waiting for the writer's acknowledgement now."""
        return self._waiting

    def is_recent(self, change_id: str) -> bool:
        with self._lock:
            return change_id in self._recent

    def submit(self, change: StatusChange, timeout: float) -> bool | None:
        """HTTP thread: True once durable, False if not within `timeout`, None if too many wait or are in flight."""
        waiter = _Waiter()
        with self._lock:
            if change.change_id in self._recent:
                return True
            if self.waiting >= self.max_waiting:
                return None
            if change.change_id not in self._in_flight:
                if len(self._in_flight) >= self.max_in_flight:
                    return None
                self._in_flight.add(change.change_id)
                self._queued.append(change)
            self._waiters.setdefault(change.change_id, []).append(waiter)
            self._waiting += 1
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_write, b"x")
        if waiter.done.wait(timeout):
            return True
        with self._lock:
            waiters = self._waiters.get(change.change_id, [])
            if waiter in waiters:
                waiters.remove(waiter)
                self._waiting -= 1
                if not waiters:
                    del self._waiters[change.change_id]
        return waiter.done.is_set()  # acknowledged in the moment between the wait and the lock

    def take(self) -> list[StatusChange]:
        """Loop: everything queued since the last call (the wake-up pipe drained too)."""
        with contextlib.suppress(BlockingIOError):
            while os.read(self.wake_read, 4096):
                pass
        with self._lock:
            taken, self._queued = self._queued, []
        return taken

    def acknowledged(self, changes: tuple[StatusChange, ...]) -> None:
        """Loop (ack callback): these are durable; release whoever waits for them."""
        with self._lock:
            for change in changes:
                self._in_flight.discard(change.change_id)
                self._recent[change.change_id] = None
                self._recent.move_to_end(change.change_id)
                for waiter in self._waiters.pop(change.change_id, ()):
                    waiter.done.set()
                    self._waiting -= 1
            while len(self._recent) > self._recent_cap:
                self._recent.popitem(last=False)

    def close(self) -> None:
        for fd in (self.wake_read, self._wake_write):
            with contextlib.suppress(OSError):
                os.close(fd)
