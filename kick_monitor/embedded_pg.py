"""An embedded PostgreSQL under the data dir, from the `pgserver` wheel (real server binaries).

Used when no KICK_MONITOR_DATABASE_URL is set, and by the tests. `pgserver` is the optional
`embedded` extra (its PostgreSQL never gets security updates): without it, and without a
URL, commands stop with one line saying how to get either. We let pgserver do what
it does well (initdb, the unprivileged `pgserver` user when run as root, a short socket
path) and drive start/stop ourselves, because the service and the fault tests need to
stop and restart the server on purpose.
"""

from __future__ import annotations

import contextlib
import logging
import subprocess
import warnings
from pathlib import Path
from types import ModuleType

import psycopg2
import psycopg2.errors
import psycopg2.extensions
from psycopg2 import sql

log = logging.getLogger(__name__)
DATABASE_NAME = "kick_monitor"


class EmbeddedPostgresError(RuntimeError):
    """The embedded server could not be started or stopped."""


class EmbeddedPostgresMissing(EmbeddedPostgresError):
    """No database URL and no `pgserver`: fixed by configuration or an install (exit 2), not by retrying."""


MISSING_HINT = (
    "no database configured: set KICK_MONITOR_DATABASE_URL, or install the embedded PostgreSQL "
    "with pip install 'kick-monitor[embedded]'"
)


def import_pgserver() -> ModuleType:
    """The `pgserver` module (the `embedded` extra); EmbeddedPostgresMissing with the hint if absent."""
    try:
        with warnings.catch_warnings():
            # platformdirs warns at pgserver's import when XDG_RUNTIME_DIR is unset (cron,
            # containers, CI); it falls back to /tmp by itself, so the warning is only noise
            warnings.simplefilter("ignore")
            import pgserver
    except ImportError:
        raise EmbeddedPostgresMissing(MISSING_HINT) from None
    return pgserver


class EmbeddedPostgres:
    """One PostgreSQL server whose data lives in `<data_dir>/postgres`.

    >>> pg = EmbeddedPostgres(Path("./var"))
    >>> url = pg.start()          # idempotent: attaches to a server already running there
    >>> pg.stop()                 # only stops what this object started (unless force=True)
    """

    def __init__(self, data_dir: Path, database: str = DATABASE_NAME) -> None:
        self.pgdata = (data_dir / "postgres").resolve()
        self.database = database
        self._system_user: str | None = None
        self._socket_dir: str | None = None
        self.started_here = False

    def start(self) -> str:
        """Start (or attach to) the server; create the database; return its URL."""
        pgserver = import_pgserver()
        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        was_running = self.is_running()
        try:
            server = pgserver.get_server(self.pgdata, cleanup_mode=None)
        except (subprocess.SubprocessError, OSError, AssertionError) as exc:
            raise EmbeddedPostgresError(
                f"embedded PostgreSQL in {self.pgdata} did not start: {exc}; see {self.pgdata / 'log'}"
            ) from None
        self._system_user = server.system_user
        info = server.get_postmaster_info()
        self._socket_dir = str(info.socket_dir)
        self.started_here = self.started_here or not was_running
        self._ensure_database()
        return self.url()

    def url(self, database: str | None = None) -> str:
        if self._socket_dir is None:
            raise EmbeddedPostgresError("embedded PostgreSQL is not started")
        return f"postgresql://postgres@/{database or self.database}?host={self._socket_dir}"

    def is_running(self) -> bool:
        pid_file = self.pgdata / "postmaster.pid"
        try:
            pid = int(pid_file.read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return False
        try:
            import os

            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def stop(self, force: bool = False, mode: str = "fast") -> None:
        """Stop the server if this object started it (or `force`); a no-op when not running."""
        if not (force or self.started_here) or not self.is_running():
            return
        self._pg_ctl(["-w", "-m", mode, "stop"])
        self.started_here = False

    def restart_after_stop(self) -> None:
        """Start a server stopped with `stop()` again, on the same socket (fault tests)."""
        if self.is_running():
            return
        if self._socket_dir is None:
            raise EmbeddedPostgresError("embedded PostgreSQL was never started")
        self._pg_ctl(
            ["-w", "-o", '-h ""', "-o", f"-k {self._socket_dir}", "-l", str(self.pgdata / "log"), "start"]
        )
        self.started_here = True

    def _pg_ctl(self, args: list[str]) -> None:
        pgserver = import_pgserver()
        try:
            pgserver.pg_ctl(args, pgdata=self.pgdata, user=self._system_user, timeout=60)
        except (subprocess.SubprocessError, OSError) as exc:
            raise EmbeddedPostgresError(f"pg_ctl {args[-1]} failed for {self.pgdata}: {exc}") from None

    def _ensure_database(self) -> None:
        conn = psycopg2.connect(self.url("postgres"), connect_timeout=10)
        conn.set_isolation_level(psycopg2.extensions.ISOLATION_LEVEL_AUTOCOMMIT)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (self.database,))
                if cur.fetchone() is None:
                    with contextlib.suppress(psycopg2.errors.DuplicateDatabase):  # a concurrent start won
                        cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.database)))
        finally:
            conn.close()
