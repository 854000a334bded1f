"""One demo run: start PostgreSQL, the simulator and the service; watch; stop all three; sum up.

Everything lives under `<data_dir>/demo` (its own PostgreSQL, logs, the service's data dir),
guarded by a lock so two demos never share it. Signal handlers only count signals: the
first SIGINT/SIGTERM ends the watch and starts a graceful stop, a second one hurries it.
Children run in their own sessions, so Ctrl-C reaches only the demo, which stops them in
order (service first, so it drains into a still-running database) by PID.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import psycopg2
from pydantic import SecretStr

from kick_monitor.cli.errors import EXIT_FAILURE, EXIT_INTERRUPTED, CliError
from kick_monitor.config import Settings, env_key
from kick_monitor.embedded_pg import EmbeddedPostgres, EmbeddedPostgresError
from kick_monitor.sharding import subscriptions_per_streamer
from kick_sim.config import default_noise_file
from kick_tools.harness import (
    HarnessError,
    Process,
    SimProcess,
    child_env,
    free_port,
    postmaster_pid,
    serves,
    service_argv,
    service_env,
    stop_postmaster,
)

from .processes import failure, port_in_use
from .sim_control import SimControl, scrape_shards
from .store import DemoDatabase, mismatches
from .summary import Outcome
from .tracker import Tracker
from .view import Screen, Snapshot, render_line, render_screen

LOOPBACK = "127.0.0.1"
START_TIMEOUT = 30.0  # the simulator's ready file
READY_STALL = 30.0  # no progress towards "every channel subscribed, every status known" for this long
SETTLE_TIMEOUT = 15.0  # after the last flip, for the database to agree with the simulator
LINE_EVERY = 5.0  # seconds between status lines when stdout is not a terminal
POLL = 0.2
# Settings the demo chooses for the service itself; any other setting given is passed on.
OWNED_SETTINGS = frozenset({
    "database_url", "data_dir", "pusher_url", "api_base_url", "oauth_token_url", "web_api_base_url",
    "client_id", "client_secret", "shard_count", "shard_index", "metrics_host", "metrics_port", "log_format",
})


@dataclass(frozen=True)
class DemoOptions:
    """The demo's own flags (settings flags arrive as `Settings`)."""

    streamers: int = 300
    rate: float = 20.0
    live_fraction: float = 0.3
    noise_rate: float = 50.0
    shards: int = 4
    duration: float | None = None
    seed: int = 1
    sim_port: int = 0
    refresh: float = 0.5
    plain: bool = False


class Demo:
    """Owns every process it starts and stops exactly those."""

    def __init__(self, options: DemoOptions, settings: Settings) -> None:
        self.options = options
        self.settings = settings
        self.dir = (Path(settings.data_dir) / "demo").resolve()
        self.tty = sys.stdout.isatty() and not options.plain
        self.signals = 0
        self.tracker = Tracker()
        self.pg: EmbeddedPostgres | None = None
        self.db: DemoDatabase | None = None
        self.sim: SimProcess | None = None
        self.control: SimControl | None = None
        self.service: Process | None = None
        self.metrics_url = ""
        self.database_url = ""
        self.postmaster: int | None = None
        self.urls: dict[str, Any] = {}
        self._lock_fd: int | None = None

    # -- the whole run ---------------------------------------------------------------------
    def run(self) -> int:
        previous = {sig: signal.signal(sig, self._record_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        left: str | None = None
        try:
            self.start()
            failure = self.watch()
            outcome = None if failure else self.finish()
        finally:
            left = self.cleanup()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if outcome is None:
            raise CliError(f"stopped: {failure}; logs in {self.dir}")
        print("\n".join(outcome.lines(self.dir, all_stopped=left is None)), flush=True)
        if left or outcome.problem:
            raise CliError(left or outcome.problem or "", EXIT_FAILURE)
        return 0

    def _record_signal(self, signum: int, frame: FrameType | None) -> None:
        self.signals += 1

    def say(self, text: str) -> None:
        print(f"demo: {text}", flush=True)

    def check_interrupt(self) -> None:
        if self.signals:
            raise CliError("interrupted while starting; everything started so far was stopped", EXIT_INTERRUPTED)

    # -- start -------------------------------------------------------------------------------
    def start(self) -> None:
        if self.settings.database_url is not None:
            self.say("ignoring the configured database URL: the demo uses its own embedded PostgreSQL")
        self.lock()
        shutil.rmtree(self.dir / "service", ignore_errors=True)  # no spool from an earlier run
        self.start_database()
        self.check_interrupt()
        self.start_simulator()
        assert self.control is not None and self.db is not None
        loaded = self.db.insert_streamers(self.control.streamers())
        self.say(f"loaded {loaded} streamers from the simulator into the database")
        self.start_service()
        self.wait_ready()
        if self.options.rate > 0:
            self.control.start_flipping(self.options.rate)
        self.tracker = Tracker()

    def lock(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.dir / "demo.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise CliError(f"another demo is running in {self.dir}; stop it or use another --data-dir") from None
        self._lock_fd = fd

    def start_database(self) -> None:
        self.say(f"starting embedded PostgreSQL in {self.dir / 'postgres'}")
        self.pg = EmbeddedPostgres(self.dir)
        url = self.pg.start()
        self.postmaster = postmaster_pid(self.pg.pgdata)
        self.db = DemoDatabase(url)
        self.db.reset()
        self.database_url = url

    def start_simulator(self) -> None:
        options = self.options
        if port_in_use(LOOPBACK, options.sim_port):
            raise CliError(f"simulator port {LOOPBACK}:{options.sim_port} is in use; choose another --sim-port")
        noise = options.noise_rate
        if noise > 0 and not default_noise_file().exists():
            self.say(f"no captured Kick frames at {default_noise_file()}: running without chat noise")
            noise = 0.0
        args = [
            "--streamers", str(options.streamers), "--live-fraction", str(options.live_fraction),
            "--noise-rate", str(noise), "--seed", str(options.seed), "--port", str(options.sim_port),
        ]
        self.say(
            f"starting the Kick simulator: {options.streamers} streamers, ~{options.live_fraction:.0%} live,"
            f" chat noise {noise:g} frames/s"
        )
        try:
            self.sim = SimProcess.start(
                self.dir / "sim.log", self.dir / "sim-ready.json", args, env=child_env(),
                timeout=START_TIMEOUT, die_with_parent=True, waiting=self.check_interrupt,
            )
        except HarnessError as exc:
            raise CliError(f"could not start: {exc}") from None
        self.urls = self.sim.urls
        self.control = SimControl(self.urls["control_url"])

    def start_service(self) -> None:
        port = self.settings.metrics_port or free_port(LOOPBACK)
        if port_in_use(LOOPBACK, port):
            raise CliError(f"metrics port {LOOPBACK}:{port} is in use; choose another --metrics-port (0 = any)")
        self.metrics_url = f"http://{LOOPBACK}:{port}/metrics"
        env = service_env(self.urls, self.database_url, self.dir / "service", settings={
            "shard_count": str(self.options.shards), "metrics_host": LOOPBACK, "metrics_port": str(port),
        })
        env.update(self.passed_settings())  # never one the demo owns (OWNED_SETTINGS)
        self.service = Process("the service", service_argv(), self.dir / "service.log", env,
                               die_with_parent=True, append=False).start()
        self.say(f"started `kick-monitor run` (pid {self.service.pid}, {self.options.shards} shards),"
                 f" metrics {self.metrics_url}, log {self.service.log_path}")

    def passed_settings(self) -> dict[str, str]:
        """Settings the user gave (flags, environment, --config) that the demo does not own."""
        passed = {}
        for name in self.settings.model_fields_set - OWNED_SETTINGS:
            value = getattr(self.settings, name)
            if value is not None:
                passed[env_key(name)] = value.get_secret_value() if isinstance(value, SecretStr) else str(value)
        return passed

    def wait_ready(self) -> None:
        """Until every channel is subscribed at the simulator and every status is known."""
        assert self.service is not None and self.control is not None and self.db is not None
        expected = self.options.streamers * subscriptions_per_streamer(self.settings)
        started = progressed = time.monotonic()
        subscribed, unknown = 0, -1
        while subscribed < expected or unknown != 0:
            if not self.service.running():
                raise CliError(f"could not start: {failure(self.service)}")
            self.check_interrupt()
            if time.monotonic() - progressed > READY_STALL:
                raise CliError(
                    f"the service made no progress for {READY_STALL:.0f}s ({subscribed}/{expected} channels"
                    f" subscribed, {unknown} statuses unknown); see {self.service.log_path}"
                )
            time.sleep(POLL)
            now = (int(self.control.stats()["subscriptions"]), self.db.counts()["unknown"])
            if now != (subscribed, unknown):
                subscribed, unknown = now
                progressed = time.monotonic()
        self.say(f"service ready after {time.monotonic() - started:.1f}s: {subscribed} channels subscribed,"
                 f" every status known; flipping {self.options.rate:g} streamers/s")

    # -- watch -------------------------------------------------------------------------------
    def watch(self) -> str | None:
        """The live view until --duration, a signal, or a dead child (returned as the failure)."""
        screen = Screen() if self.tty else None
        started = time.monotonic()
        next_line = started + LINE_EVERY
        try:
            while True:
                now = time.monotonic()
                elapsed = now - started
                for child in (self.service, self.sim.process if self.sim else None):
                    if child is not None and not child.running():
                        return failure(child)
                if self.signals or (self.options.duration is not None and elapsed >= self.options.duration):
                    return None
                snapshot = self.snapshot(elapsed)
                if screen is not None:
                    size = shutil.get_terminal_size()
                    screen.draw(render_screen(snapshot), size.columns, size.lines)
                elif now >= next_line:
                    print(render_line(snapshot), flush=True)
                    next_line += LINE_EVERY
                remaining = float("inf") if self.options.duration is None else self.options.duration - elapsed
                time.sleep(max(0.0, min(self.options.refresh - (time.monotonic() - now), remaining)))
        finally:
            if screen is not None:
                screen.close()

    def poll(self) -> None:
        """Rows committed since the last poll, then the truth that covers them."""
        assert self.db is not None and self.control is not None
        events = self.db.events_since(self.tracker.last_id)
        self.tracker.add_truth(self.control.truth(self.tracker.truth_seq))
        self.tracker.add_events(events)

    def snapshot(self, elapsed: float) -> Snapshot:
        assert self.db is not None
        self.poll()
        t = self.tracker
        return Snapshot(
            elapsed=elapsed, duration=self.options.duration, streamers=self.options.streamers,
            shard_count=self.options.shards, flip_rate=self.options.rate, counts=self.db.counts(),
            sent=t.sent, committed=t.committed, rate=t.rate(), p50=t.percentile(0.5), p99=t.percentile(0.99),
            joined=len(t.latencies), shards=scrape_shards(self.metrics_url), recent=list(t.recent),
        )

    # -- stop ----------------------------------------------------------------------------------
    def finish(self) -> Outcome:
        """Stop flipping, let the pipeline catch up, stop the service, compare with the truth."""
        assert self.control is not None and self.db is not None and self.service is not None
        self.say("stopping: no more flips; waiting for the database to catch up")
        started = time.monotonic()
        self.control.stop_flipping()
        truth = self.control.streamers()
        while time.monotonic() - started < SETTLE_TIMEOUT and self.signals < 2:
            self.poll()
            if self.tracker.committed >= self.tracker.sent and not mismatches(truth, self.db.statuses()):
                break
            time.sleep(POLL)
        self.say(f"stopping the service (pid {self.service.pid}): SIGTERM, it drains")
        code = self.service.stop(self.service_stop_timeout(), hurry=lambda: self.signals >= 2)
        self.poll()
        t = self.tracker
        return Outcome(
            sent=t.sent, committed=t.committed, learned=t.learned, counts=self.db.counts(),
            wrong=mismatches(truth, self.db.statuses()), p50=t.percentile(0.5), p99=t.percentile(0.99),
            joined=len(t.latencies), service_code=code,
        )

    def service_stop_timeout(self) -> float:
        return 2 * self.settings.drain_timeout + 10

    def cleanup(self) -> str | None:
        """Stop whatever still runs, newest first, each step even if an earlier one failed.

        Returns what could not be stopped (also printed), or None.
        """
        hurry = lambda: self.signals >= 2  # noqa: E731 - a one-line predicate
        if self.service is not None:
            self.service.stop(self.service_stop_timeout(), hurry=hurry)
        if self.sim is not None:
            self.sim.stop(10.0, hurry=hurry)
        if self.db is not None:
            with contextlib.suppress(psycopg2.Error):
                self.db.close()
        left = self.stop_database()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        if left:
            print(f"demo: {left}", file=sys.stderr, flush=True)
        return left

    def stop_database(self) -> str | None:
        """pg_ctl stop; if that fails (e.g. the server lost access to its directory), signal its PID."""
        if self.pg is None:
            return None
        pgdata = self.pg.pgdata
        pgserver_log = logging.getLogger("pgserver")
        level = pgserver_log.level
        pgserver_log.setLevel(logging.CRITICAL)  # a failed pg_ctl is handled below, not worth a traceback
        try:
            self.pg.stop(force=True)  # ours: under the demo's own, locked directory
        except EmbeddedPostgresError:
            pass
        finally:
            pgserver_log.setLevel(level)
        pid = self.postmaster if self.postmaster is not None else postmaster_pid(pgdata)
        if pid is not None and serves(pid, pgdata) and not stop_postmaster(pid, pgdata):
            return f"could not stop PostgreSQL (pid {pid}) for {pgdata}"
        return None
