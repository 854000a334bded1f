"""A LISTEN connection notices a silently dead peer: libpq keepalives and tcp_user_timeout.

The silent peer needs packets to vanish, which only a network namespace can do without
touching the machine's own loopback: tests/integration/dead_peer.py runs under
`unshare -Urn` (an unprivileged user + network namespace; `unshare -n` as root) and reports when each connection
noticed. The control connection, keepalives off, must not notice in the same time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import psycopg2.extensions
import pytest

from kick_monitor.database import (
    KEEPALIVES_COUNT,
    KEEPALIVES_IDLE,
    KEEPALIVES_INTERVAL,
    STATEMENT_TIMEOUT_MS,
    TCP_USER_TIMEOUT_MS,
    connect,
    libpq_options,
)
from tests.conftest import REPO_ROOT, DatabaseFactory

BOUND = 7.0  # seconds the probe watches; the shortened settings notice in about 3

pytestmark = pytest.mark.slow  # waits for TCP keepalives to give up on a dead peer (~13 s): `make test-slow`


def test_defaults_notice_a_dead_peer_within_a_minute() -> None:
    assert KEEPALIVES_IDLE + KEEPALIVES_INTERVAL * KEEPALIVES_COUNT <= 60
    assert TCP_USER_TIMEOUT_MS <= 60_000
    assert libpq_options("postgresql://kick@db.example/kick") == {
        "keepalives": "1",
        "keepalives_idle": str(KEEPALIVES_IDLE),
        "keepalives_interval": str(KEEPALIVES_INTERVAL),
        "keepalives_count": str(KEEPALIVES_COUNT),
        "tcp_user_timeout": str(TCP_USER_TIMEOUT_MS),
        "options": f"-c statement_timeout={STATEMENT_TIMEOUT_MS}",
    }


def test_the_url_wins_over_the_defaults() -> None:
    url = "postgresql://kick@db.example/kick?keepalives_idle=120&options=-c%20search_path%3Dx"
    added = libpq_options(url, statement_timeout_ms=5000)
    assert "keepalives_idle" not in added and added["keepalives_count"] == str(KEEPALIVES_COUNT)
    assert added["options"] == "-c search_path=x -c statement_timeout=5000"
    assert "options" not in libpq_options("postgresql:///k?options=-c%20statement_timeout%3D1", statement_timeout_ms=9)
    assert "options" not in libpq_options("postgresql:///k", statement_timeout_ms=None)


def test_statement_timeout_reaches_the_session(database_url: str) -> None:
    conn = connect(database_url, statement_timeout_ms=1234)
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW statement_timeout")
            assert cur.fetchone() == ("1234ms",)
            with pytest.raises(psycopg2.errors.QueryCanceled):
                cur.execute("SELECT pg_sleep(5)")
    finally:
        conn.close()


# As root, a network namespace alone: a user namespace would map our uid to root but lose the
# right to open the server's socket, which belongs to pgserver's unprivileged user.
UNSHARE = ["unshare", "-n"] if os.geteuid() == 0 else ["unshare", "-Urn"]


def namespaces_available() -> bool:
    try:
        return subprocess.run([*UNSHARE, "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@pytest.mark.skipif(not namespaces_available(), reason=f"needs network namespaces ({' '.join(UNSHARE)})")
def test_listen_connection_notices_a_silent_peer(make_database: DatabaseFactory) -> None:
    url = make_database()
    given = psycopg2.extensions.parse_dsn(url)
    unix_socket = f"{given['host']}/.s.PGSQL.{given.get('port', '5432')}"
    done = subprocess.run(
        [*UNSHARE, sys.executable, "-m", "tests.integration.dead_peer",
         "--unix-socket", unix_socket, "--database", given["dbname"], "--direct-url", url, "--bound", str(BOUND)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    watched = report["noticed_after"]["watched"]
    assert watched is not None and watched < 6, report
    assert "timed out" in report["errors"]["watched"].lower(), report
    assert report["noticed_after"]["control"] is None, f"without keepalives nothing notices: {report}"
