"""Posting announcements: one HTTP request, and what its answer means for the delivery.

`post()` never raises; it returns an `Outcome` whose `verdict` the notifier records:
- `sent`: 2xx;
- `retry`: nothing was delivered, try again at `retry_after` — a 429 (its `Retry-After`
  header, or Discord's `retry_after` in the body: the webhook's bucket), a 5xx (back-off by
  attempts), a connection refused or a connect timeout (the request never left);
- `gone`: 404/401/410 — the webhook was deleted or revoked: the target is disabled;
- `failed`: another 4xx (the body was refused; sending it again cannot help);
- `uncertain`: the request left but no answer came (read timeout, connection dropped
  mid-answer): it may have been posted, and Discord and Slack cannot de-duplicate, so it is
  never sent again.

`SenderPool` runs posts on a few threads, at most one request in flight per target (the
notifier only hands a target its next delivery when its lane is idle), so one slow or
rate-limited target never delays another. Results come back through a queue; a byte on a
pipe wakes the notifier's `select()`.

Errors are described without the URL (`describe`): requests puts the URL in its messages.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import requests

from .notify_targets import mask_url, url_secrets
from .tls import new_session

RETRY_MIN, RETRY_MAX = 1.0, 300.0  # 5xx and network back-off, seconds
MAX_ATTEMPTS = 12  # then the delivery fails (about 30 minutes of 5xx)
MAX_RETRY_AFTER = 3600.0
USER_AGENT = "kick-monitor notifier (https://github.com/kick-monitor)"


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one post did. `retry_after`: seconds before the next attempt (for `retry`)."""

    verdict: str  # sent | retry | gone | failed | uncertain
    status: int | None = None
    retry_after: float = 0.0
    detail: str = ""
    seconds: float = 0.0
    rate_limited: bool = False
    sent_at: float = 0.0  # wall clock when the answer came


def backoff(attempts: int) -> float:
    """Seconds before attempt `attempts + 1` after a 5xx or a refused connection."""
    return float(min(RETRY_MAX, RETRY_MIN * 2.0 ** max(0, attempts - 1)))


def retry_after(response: requests.Response) -> float:
    """Seconds a 429 asks to wait: the header, else Discord's body field, else 1 s."""
    header = response.headers.get("Retry-After")
    value: Any = header
    if value is None:
        with contextlib.suppress(ValueError, AttributeError):
            value = response.json().get("retry_after")
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = 1.0
    return float(min(MAX_RETRY_AFTER, max(0.0, seconds)))


def bucket_wait(response: requests.Response) -> float:
    """Discord's bucket headers: when the bucket is empty, wait until it resets (no 429 needed)."""
    if response.headers.get("X-RateLimit-Remaining") != "0":
        return 0.0
    try:
        return min(MAX_RETRY_AFTER, max(0.0, float(response.headers.get("X-RateLimit-Reset-After", "0"))))
    except ValueError:
        return 0.0


def describe(exc: BaseException, url: str) -> str:
    """One line about a failed request, the URL (and its path) replaced by its mask."""
    text = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    for secret in url_secrets(url):
        text = text.replace(secret, mask_url(url))
    return text[:300]


def post(session: requests.Session, url: str, body: dict[str, Any], timeout: float, attempts: int) -> Outcome:
    """POST `body` as JSON to `url`; see the module docstring for the verdicts."""
    started = time.monotonic()
    try:
        response = session.post(url, json=body, timeout=(min(timeout, 5.0), timeout),
                                headers={"User-Agent": USER_AGENT}, allow_redirects=False)
    except requests.exceptions.ConnectTimeout as exc:
        return Outcome("retry", None, backoff(attempts), describe(exc, url), time.monotonic() - started)
    except requests.exceptions.ReadTimeout as exc:
        return Outcome("uncertain", None, 0.0, "no answer in time: " + describe(exc, url), time.monotonic() - started)
    except requests.exceptions.ConnectionError as exc:
        if _never_connected(exc):
            return Outcome("retry", None, backoff(attempts), describe(exc, url), time.monotonic() - started)
        return Outcome("uncertain", None, 0.0, "connection lost: " + describe(exc, url), time.monotonic() - started)
    except requests.RequestException as exc:
        return Outcome("failed", None, 0.0, describe(exc, url), time.monotonic() - started)
    seconds = time.monotonic() - started
    status = response.status_code
    answer = f"HTTP {status}"
    if 200 <= status < 300:
        return Outcome("sent", status, bucket_wait(response), answer, seconds, sent_at=time.time())
    if status == 429:
        return Outcome("retry", status, retry_after(response), answer + " (rate limited)", seconds, rate_limited=True)
    if status in (401, 404, 410):
        return Outcome("gone", status, 0.0, f"{answer}: the webhook was deleted or revoked", seconds)
    if status >= 500:
        if attempts >= MAX_ATTEMPTS:
            return Outcome("failed", status, 0.0, f"{answer} after {attempts} attempts", seconds)
        return Outcome("retry", status, backoff(attempts), answer, seconds)
    return Outcome("failed", status, 0.0, f"{answer}: {_short(response.text)}", seconds)


def _never_connected(exc: requests.exceptions.ConnectionError) -> bool:
    """A refused or unresolvable connection: the request never left, so it can be sent again."""
    import urllib3.exceptions

    reason: Any = exc.args[0] if exc.args else None
    reason = getattr(reason, "reason", reason)
    return isinstance(reason, (urllib3.exceptions.NewConnectionError, urllib3.exceptions.NameResolutionError))


def _short(text: str) -> str:
    return " ".join(text.split())[:160]


@dataclass(frozen=True, slots=True)
class Job:
    """One delivery handed to a lane; `token` is whatever the notifier needs back."""

    target_id: int
    url: str
    body: dict[str, Any]
    attempts: int
    token: Any


class SenderPool:
    """A few threads posting; at most one job per target at a time (the caller keeps to that)."""

    def __init__(self, threads: int, timeout: Callable[[], float]) -> None:
        self.timeout = timeout
        self.results: queue.SimpleQueue[tuple[Job, Outcome]] = queue.SimpleQueue()
        self.busy: set[int] = set()
        self.wake_read, self.wake_write = os.pipe()
        os.set_blocking(self.wake_read, False)
        os.set_blocking(self.wake_write, False)
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="notify")
        self._local = threading.local()

    def submit(self, job: Job) -> None:
        self.busy.add(job.target_id)
        self._executor.submit(self._run, job)

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = new_session()  # one TLS context for all threads (kick_monitor/tls.py)
        return session

    def _run(self, job: Job) -> None:
        try:
            outcome = post(self._session(), job.url, job.body, self.timeout(), job.attempts)
        except Exception as exc:  # never lose a result: the delivery must leave `sending`
            outcome = Outcome("uncertain", None, 0.0, describe(exc, job.url))
        self.results.put((job, outcome))
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self.wake_write, b"x")

    def collect(self) -> list[tuple[Job, Outcome]]:
        """Every finished job (their lanes are idle again)."""
        with contextlib.suppress(BlockingIOError, OSError):
            while os.read(self.wake_read, 4096):
                pass
        done: list[tuple[Job, Outcome]] = []
        while True:
            try:
                job, outcome = self.results.get_nowait()
            except queue.Empty:
                break
            self.busy.discard(job.target_id)
            done.append((job, outcome))
        return done

    def in_flight(self) -> int:
        return len(self.busy)

    def wait_idle(self, seconds: float) -> None:
        """Wait up to `seconds` for the requests in flight to finish (then `collect` them)."""
        deadline = time.monotonic() + seconds
        while self.results.qsize() < len(self.busy) and time.monotonic() < deadline:
            time.sleep(0.02)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        for fd in (self.wake_read, self.wake_write):
            with contextlib.suppress(OSError):
                os.close(fd)
