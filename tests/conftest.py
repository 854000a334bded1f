"""Shared fixtures: one real PostgreSQL per session, a fresh database per test, the CLI in a subprocess.

- `embedded_postgres` (session): an `EmbeddedPostgres` in a temp dir, stopped at session end.
- `server_tmp_path`: a temp dir for data dirs of other PostgreSQL servers (a test's own, or the
  CLI's embedded one): NOT under `tmp_path`, see `make_server_dir` for why.
- `make_database(migrated=True) -> str`: a new database, cloned from a migrated template
  (tens of milliseconds) or empty; dropped after the test. `database_url` is one of them.
- `cli(*args, env=None, input=None, cwd=None, timeout=60) -> CliResult(code, stdout, stderr)`:
  runs `python -m kick_monitor.cli.main` in a subprocess with `KICK_MONITOR_DATABASE_URL`
  set to the test's database (and no other KICK_MONITOR_* variable from the outer shell).
- `run_main(*args, env=None) -> CliResult`: the same entry point called in this process
  (about ten times faster; for tests of argument parsing and messages).
- `free_port() -> int`: a TCP port free on 127.0.0.1 right now.
- `sim_config` / `sim`: a local Kick simulator on loopback (override `sim_config` to change it);
  `conn`: a connection to the test's fresh database.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import NamedTuple, Protocol

import psycopg2
import psycopg2.extensions
import pytest
from psycopg2 import sql

from kick_monitor.database import connect
from kick_monitor.embedded_pg import EmbeddedPostgres
from kick_monitor.migrations import migrate
from kick_sim import SimConfig, Simulator
from kick_tools.harness import admin_connection, child_env, create_database, drop_databases, free_port

REPO_ROOT = Path(__file__).resolve().parent.parent
TEMPLATE_DATABASE = "kick_monitor_template"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: long-running tests, left out of `make test`")
    config.addinivalue_line("markers", "faults: fault-injection tests, run by `make test-faults`")


@pytest.fixture(name="free_port")
def free_port_fixture() -> Callable[[], int]:
    """`free_port()` as a fixture: call it for as many ports as the test needs."""
    return free_port


def make_server_dir(prefix: str) -> Path:
    """A temp dir for a PostgreSQL data dir, outside pytest's base temp dir.

    As root, pgserver runs PostgreSQL as its unprivileged `pgserver` user and opens the path
    down to the data dir for it; but every pytest session that starts on the machine resets
    /tmp/pytest-of-<user> to mode 0700, which would lock a running server out of its own data
    (it crashes) and make initdb fail. A plain `mkdtemp` dir is left alone.
    """
    return Path(tempfile.mkdtemp(prefix=f"kick-monitor-{prefix}-"))


@pytest.fixture
def server_tmp_path() -> Iterator[Path]:
    """Like `tmp_path`, for data dirs of PostgreSQL servers (see `make_server_dir`); removed after."""
    path = make_server_dir("test")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def embedded_postgres() -> Iterator[EmbeddedPostgres]:
    """One real PostgreSQL server for the whole session, with a migrated template database."""
    root = make_server_dir("session-pg")
    pg = EmbeddedPostgres(root)
    try:
        pg.start()
        admin = admin_connection(pg)
        with admin.cursor() as cur:
            # a throwaway server: durability costs time and buys nothing here
            for setting in ("fsync", "synchronous_commit", "full_page_writes"):
                cur.execute(sql.SQL("ALTER SYSTEM SET {} = off").format(sql.Identifier(setting)))
            cur.execute("SELECT pg_reload_conf()")
        admin.close()
        conn = psycopg2.connect(create_database(pg, TEMPLATE_DATABASE))
        migrate(conn)
        conn.close()
        yield pg
    finally:
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)


class DatabaseFactory(Protocol):
    def __call__(self, migrated: bool = True) -> str: ...


@pytest.fixture
def make_database(embedded_postgres: EmbeddedPostgres) -> Iterator[DatabaseFactory]:
    """Create fresh databases (migrated from the template, or empty); all dropped after the test."""
    created: list[str] = []

    def make(migrated: bool = True) -> str:
        name = f"test_{uuid.uuid4().hex[:16]}"
        url = create_database(embedded_postgres, name, TEMPLATE_DATABASE if migrated else "template0")
        created.append(name)
        return url

    yield make
    drop_databases(embedded_postgres, created)


@pytest.fixture
def database_url(make_database: DatabaseFactory) -> str:
    """The URL of a fresh, migrated database of this test's own."""
    return make_database()


@pytest.fixture
def db_conn(database_url: str) -> Iterator[psycopg2.extensions.connection]:
    """An open connection to this test's database."""
    conn = psycopg2.connect(database_url)
    yield conn
    conn.close()


class CliResult(NamedTuple):
    code: int
    stdout: str
    stderr: str


class CliRunner(Protocol):
    def __call__(
        self,
        *args: str,
        env: Mapping[str, str | None] | None = None,
        input: str | None = None,
        cwd: Path | None = None,
        timeout: float = 60,
    ) -> CliResult: ...


def clean_environment(**overrides: str | None) -> dict[str, str]:
    """os.environ without any KICK_MONITOR_* variable, the package importable, then `overrides`
    (a None value removes the variable)."""
    return child_env(overrides)


def with_test_database(request: pytest.FixtureRequest, env: Mapping[str, str | None] | None) -> dict[str, str | None]:
    """`env`, with this test's database as KICK_MONITOR_DATABASE_URL unless `env` names one (or None)."""
    overrides = dict(env or {})
    if "KICK_MONITOR_DATABASE_URL" not in overrides:
        overrides["KICK_MONITOR_DATABASE_URL"] = request.getfixturevalue("database_url")
    return overrides


@pytest.fixture
def cli(request: pytest.FixtureRequest, tmp_path: Path) -> CliRunner:
    """Run the real `kick-monitor` entry point in a subprocess against this test's database.

    The database (the `database_url` fixture) is created on the first call that needs it,
    so tests of usage errors cost no database.
    """

    def run(
        *args: str,
        env: Mapping[str, str | None] | None = None,
        input: str | None = None,
        cwd: Path | None = None,
        timeout: float = 60,
    ) -> CliResult:
        overrides = with_test_database(request, env)
        environment = clean_environment(**overrides)
        done = subprocess.run(
            [sys.executable, "-m", "kick_monitor.cli.main", *args],
            env=environment,
            input=input,
            capture_output=True,
            text=True,
            cwd=cwd or tmp_path,
            timeout=timeout,
            check=False,
        )
        return CliResult(done.returncode, done.stdout, done.stderr)

    return run


@pytest.fixture
def run_main(
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> Iterator[CliRunner]:
    """`kick_monitor.cli.main.main(args)` called in this process, environment as with `cli`."""
    import logging

    from kick_monitor.cli.main import main

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    monkeypatch.chdir(tmp_path)

    def run(
        *args: str,
        env: Mapping[str, str | None] | None = None,
        input: str | None = None,
        cwd: Path | None = None,
        timeout: float = 60,
    ) -> CliResult:
        overrides = with_test_database(request, env)
        for key in [key for key in os.environ if key.startswith("KICK_MONITOR_")]:
            monkeypatch.delenv(key)
        for key, value in overrides.items():
            if value is not None:
                monkeypatch.setenv(key, value)
        capsys.readouterr()
        code = main(list(args))
        out, err = capsys.readouterr()
        return CliResult(code, out, err)

    yield run
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def sim_config() -> SimConfig:
    """The simulator's settings; a test module overrides this fixture to change them."""
    return SimConfig(port=0, http_port=0, control_port=0, seed=7)


@pytest.fixture
def sim(sim_config: SimConfig) -> Iterator[Simulator]:
    """A local Kick (Pusher + APIs) on loopback ports chosen by the OS, stopped after the test."""
    simulator = Simulator(sim_config)
    simulator.start()
    try:
        yield simulator
    finally:
        simulator.stop()


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg2.extensions.connection]:
    """A connection to the test's fresh database."""
    connection = connect(database_url)
    try:
        yield connection
    finally:
        connection.close()


class PasswordRole(NamedTuple):
    """A role that must prove a password: `url` names it without one (give it another way)."""

    name: str
    password: str
    url: str


@pytest.fixture
def password_role(embedded_postgres: EmbeddedPostgres, database_url: str) -> Iterator[PasswordRole]:
    """A superuser role on the session server that logs in only with its password (scram-sha-256).

    The session server trusts local connections, so a test of a password source could not
    fail; two pg_hba.conf lines for this one role (removed afterwards) make it ask.
    """
    name = f"pw_{uuid.uuid4().hex[:12]}"
    password = f"pg-pw-{uuid.uuid4().hex}"
    hba = embedded_postgres.pgdata / "pg_hba.conf"
    original = hba.read_text()
    admin = admin_connection(embedded_postgres)
    try:
        with admin.cursor() as cur:
            cur.execute(sql.SQL("CREATE ROLE {} LOGIN SUPERUSER PASSWORD %s").format(sql.Identifier(name)), (password,))
        hba.write_text(f"local all {name} scram-sha-256\nhost all {name} 127.0.0.1/32 scram-sha-256\n" + original)
        with admin.cursor() as cur:
            cur.execute("SELECT pg_reload_conf()")
        yield PasswordRole(name, password, database_url.replace("postgres@", f"{name}@", 1))
    finally:
        hba.write_text(original)
        with admin.cursor() as cur:
            cur.execute("SELECT pg_reload_conf()")
            cur.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (name,)
            )
        # What the service made as this role (the shared API budget's table) goes to the
        # superuser first, or the role could not be dropped.
        owned = psycopg2.connect(database_url)
        owned.autocommit = True
        try:
            with owned.cursor() as cur:
                cur.execute(sql.SQL("REASSIGN OWNED BY {} TO CURRENT_USER").format(sql.Identifier(name)))
        finally:
            owned.close()
        with admin.cursor() as cur:
            cur.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))
        admin.close()
