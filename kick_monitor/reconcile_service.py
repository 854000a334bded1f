"""API reconciliation for every worker of a tree, asked by the planner.

Each worker used to run a reconcile thread of its own, with its own API client, OAuth
token and budget connection: running requests, pydantic and that connection copied
~3.5 MB into every worker (docs/performance.md, round 15). Now the planner, which never
forks and already talks to Kick, asks the API for every worker of its tree, and each
worker, the sequencer of its shard, applies the answers it is sent
(`ReconcileRequest` → `LiveAnswer` per API request → `ReconcileDone`, over the assignment
channel).

`THREADS` helper threads and one `KickApiClient` drawing from the deployment's shared budget
(`kick_monitor.api_budget`). Each pass is served one request at a time, and the passes take
turns, round-robin across the workers that asked, so after an outage of every connection each
shard is repaired from its first requests on, as when every worker asked on its own. Up to
`THREADS` passes (of different workers) have a request in flight at once: a tree asks up to
THREADS/latency requests a second, so at Kick's 100–300 ms the budget (`api_rate`, 5/s by
default) is the bound, not the round trip — as when every worker had a thread of its own.
Measured (S4 with `--api-latency 0.15`, 8 workers at 40 requests/s): one thread recovered in
60–67 s, four in 19–20 s, eight in ~12 s like a thread per worker; M unchanged
(docs/performance.md, round 16).

    service = ReconcileService(make_client)
    service.start()
    service.submit(conn_id, request, refs)      # the planner's loop, on a worker's request
    for conn_id, message in service.take(): ...  # when `wake_read` is readable: send it on
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from kick_monitor.kick_api import KickAuthError
from kick_monitor.messages import LiveAnswer, LiveInfo, ReconcileDone, ReconcileRequest, StreamerRef
from kick_monitor.preload import release_free_memory
from kick_monitor.reconcile import Reconciler

log = logging.getLogger("kick_monitor.reconcile")

STOP_WAIT = 2.0  # at most, for the threads to leave their requests at stop
THREADS = 8  # passes with a request in flight at once (of different workers)
TRIM_AFTER = 500  # streamers in a pass after whose end freed memory goes back to the kernel

Reply = LiveAnswer | ReconcileDone


@dataclass(slots=True)
class _Pass:
    """One worker's pass: its request, the streamers asked about, and the answers still to come."""

    request: ReconcileRequest
    refs: tuple[StreamerRef, ...]
    answers: Iterator[tuple[float, dict[int, LiveInfo]]] | None = None
    client: Any = None  # the client `answers` asks with


class ReconcileService:
    """See the module docstring. The planner's loop calls `submit`, `cancel`, `take`,
    `settings_changed`; the thread only asks Kick and hands replies over (queue + wake-up pipe)."""

    def __init__(self, make_client: Callable[[], Any]) -> None:
        self._make_client = make_client
        self._client: Any = None
        self._replace_client = False
        self._turns = threading.Condition()
        self._passes: dict[int, _Pass] = {}  # by connection id; guarded by _turns
        self._order: deque[int] = deque()  # connection ids waiting for their next request
        self._busy: set[int] = set()  # the connections whose pass a thread is advancing now
        self._client_lock = threading.Lock()
        self._stopping = False
        self.off: str | None = None  # why the API refused our credentials; reset by settings_changed
        self._replies: queue.SimpleQueue[tuple[int, Reply]] = queue.SimpleQueue()
        self.wake_read, self._wake_write = os.pipe()
        os.set_blocking(self.wake_read, False)
        os.set_blocking(self._wake_write, False)
        self._threads: list[threading.Thread] = []

    # -- the planner's side ---------------------------------------------------------------
    def start(self, threads: int = THREADS) -> None:
        for number in range(threads):
            thread = threading.Thread(target=self._run, name=f"reconcile-{number}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def submit(self, conn_id: int, request: ReconcileRequest, refs: tuple[StreamerRef, ...]) -> None:
        """A worker asks for a pass; it replaces any pass that connection asked before (a worker asks
        one at a time, so an earlier one was abandoned)."""
        with self._turns:
            self._passes[conn_id] = _Pass(request, refs)
            if conn_id not in self._busy and conn_id not in self._order:
                self._order.append(conn_id)
            self._turns.notify()

    def cancel(self, conn_id: int) -> None:
        """The worker's connection closed: its pass is not asked further (a new worker asks anew)."""
        with self._turns:
            self._passes.pop(conn_id, None)

    def api_stats(self) -> Any:
        """The API client's counters so far (an ApiStatsSnapshot), None before the first pass. Read by
        the planner's loop: a request retrying for seconds (429s) is counted while it retries."""
        client = self._client
        return None if client is None else client.stats.snapshot()

    def pending(self) -> int:
        with self._turns:
            return len(self._passes)

    def settings_changed(self) -> None:
        """API settings changed (SIGHUP): the next request uses a new client; refused credentials
        may be valid now, so reconciliation is tried again."""
        with self._turns:
            self._replace_client = True
            self.off = None

    def take(self) -> list[tuple[int, Reply]]:
        """The replies handed over so far, oldest first, with the connection each goes to."""
        with contextlib.suppress(BlockingIOError):
            while os.read(self.wake_read, 4096):
                pass
        replies: list[tuple[int, Reply]] = []
        while True:
            try:
                replies.append(self._replies.get_nowait())
            except queue.Empty:
                return replies

    def stop(self) -> None:
        with self._turns:
            self._stopping = True
            self._passes.clear()
            self._turns.notify_all()
        client = self._client
        if client is not None:
            client.close()  # wakes a request waiting for the budget or a retry
        deadline = time.monotonic() + STOP_WAIT
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        for fd in (self.wake_read, self._wake_write):
            with contextlib.suppress(OSError):
                os.close(fd)

    # -- the thread --------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._turns:
                while not self._stopping and not self._order:
                    self._turns.wait()
                if self._stopping:
                    return
                conn_id = self._order.popleft()
                job = self._passes.get(conn_id)
                if job is None:
                    continue
                self._busy.add(conn_id)
            reply = self._advance(job)
            with self._turns:
                self._busy.discard(conn_id)
                current = self._passes.get(conn_id)
                if reply is not None and current is job:
                    if isinstance(reply, ReconcileDone):
                        del self._passes[conn_id]
                    else:
                        self._order.append(conn_id)
                    self._hand_over(conn_id, reply)
                elif current is not None and conn_id not in self._order:
                    # asked anew (new settings replaced the client under the request), or a new pass
                    # of the worker replaced this one while we asked: it takes its turn
                    self._order.append(conn_id)
            if isinstance(reply, ReconcileDone) and len(job.refs) > TRIM_AFTER:
                release_free_memory()  # a big pass's answers and groupings were a burst of this process

    def _advance(self, job: _Pass) -> Reply | None:
        """One API request of the pass (inconsistent answers re-asked in halves count as one); None when
        another thread replaced the client (new settings) under this request: the pass is asked anew."""
        pass_id = job.request.pass_id
        if self.off is not None:
            return ReconcileDone(pass_id, "off", self.off)
        try:
            client = self._api()
            if job.answers is None or job.client is not client:
                # a new pass, or one whose client new settings replaced (and closed): asked anew with this one
                reconciler = Reconciler(client)
                if not reconciler.enabled:
                    return ReconcileDone(pass_id, "off", "no Kick API credentials")
                job.answers, job.client = reconciler.answers_by_streamer(job.refs), client
            asked, live = next(job.answers)
        except StopIteration:
            return ReconcileDone(pass_id, "ok")
        except Exception as exc:  # reported to the worker; the thread never dies
            if job.client is not None and job.client is not self._client:
                job.answers = None  # closed under us by new settings, not an answer of Kick's
                return None
            error = f"{type(exc).__name__}: {exc}"
            if isinstance(exc, KickAuthError):
                # A refused secret does not fix itself: stop asking until new settings (the tree runs
                # Pusher-only); every pass waiting is answered "off" without a request.
                with self._client_lock:
                    first, self.off = self.off is None, error
                if first:  # said once, whichever thread learnt it
                    log.error("Kick API refused our credentials (%s); reconciliation is off, Pusher-only,"
                              " until new credentials (SIGHUP)", error)
                return ReconcileDone(pass_id, "off", error)
            return ReconcileDone(pass_id, "error", error)
        return LiveAnswer(pass_id, asked, live)

    def _api(self) -> Any:
        with self._client_lock:  # one client for every thread; replaced once on new settings
            if self._client is None or self._replace_client:
                old, self._replace_client = self._client, False
                self._client = self._make_client()
                if old is not None:
                    self._client.carry_state(old)  # a blocked web API stays backed off across a SIGHUP
                    old.close()  # requests in flight on it end; their passes go on with the new one
            return self._client

    def _hand_over(self, conn_id: int, reply: Reply) -> None:
        self._replies.put((conn_id, reply))
        with contextlib.suppress(OSError):  # a full pipe already holds a wake-up
            os.write(self._wake_write, b"x")
