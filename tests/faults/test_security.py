"""Security: SQL only through parameters, loopback binds by default, restrictive file modes.

The known client secret (`faultkit.SECRET`) is what every fault service of this suite runs
with; each test's log is searched for it at teardown (conftest `services`), every process
title when the tree is up (`assert_titles_clean`), and the metrics scrape and CLI error
outputs where a test produces them. The secrets tests start the tree with the client secret
and a database password given each way (environment, `_FILE`, systemd credential) and look
for both in every process's environment too, and rotate them under a running tree.
"""

from __future__ import annotations

import ast
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg2.extensions
import pytest
from psycopg2 import sql

from kick_sim import SimConfig, Simulator
from tests.conftest import PasswordRole
from tests.faults.conftest import ServiceFactory
from tests.faults.faultkit import (
    SECRET,
    FaultService,
    admin_connection,
    assert_clean,
    assert_titles_clean,
    database_name,
    database_unreachable,
    make_env,
    scrape,
    set_connections_allowed,
    terminate,
)
from tests.service import REPO, current_state, insert_streamers, listening_addresses, running, wait_until

pytestmark = pytest.mark.faults

SCANNED = ("kick_monitor", "workers")
EXECUTORS = {"execute", "executemany", "mogrify"}  # cursor methods: the SQL is the first argument
EXECUTE_VALUES = {"execute_values", "execute_batch"}  # psycopg2.extras helpers: the SQL is the second
# Identifiers interpolated into SQL that are module constants, not input: the name of our
# prepared statement (EXECUTE takes no parameter for it) and the LISTEN channel name
# (LISTEN takes no parameter either). Both are fixed strings in our own source.
ALLOWED_INTERPOLATIONS = {"PREPARED_NAME", "STREAMERS_CHANNEL"}
# Files excused from the string-built-SQL scan, with the reason (none at the moment).
KNOWN: dict[str, str] = {}


@dataclass(frozen=True)
class Finding:
    path: str
    line: int
    why: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.why}"


class SqlBuildingVisitor(ast.NodeVisitor):
    """Flags execute(...) calls whose SQL is an f-string, %-formatted, +-built or str.format()ted.

    A plain name or attribute is followed to its assignments in the same function (or
    module): `query = f"..."; cur.execute(query)` is caught too. Module-level constants
    (UPPER_CASE names bound to string literals) may be concatenated; `psycopg2.sql`
    composition (`sql.SQL(...).format(sql.Identifier(...))`) is the safe way and allowed.
    """

    def __init__(self, path: str, tree: ast.Module) -> None:
        self.path = path
        self.findings: list[Finding] = []
        self.constants = {
            target.id
            for node in tree.body
            if isinstance(node, ast.Assign) and self._literal(node.value)
            for target in node.targets
            if isinstance(target, ast.Name) and target.id.isupper()
        }
        self.scopes: list[dict[str, list[ast.expr]]] = [self._assignments(tree)]

    @staticmethod
    def _assignments(node: ast.AST) -> dict[str, list[ast.expr]]:
        found: dict[str, list[ast.expr]] = {}
        for child in ast.walk(node):
            if isinstance(child, ast.Assign):
                for target in child.targets:
                    if isinstance(target, ast.Name):
                        found.setdefault(target.id, []).append(child.value)
            elif (
                isinstance(child, ast.AnnAssign | ast.AugAssign)
                and isinstance(child.target, ast.Name)
                and child.value is not None
            ):
                found.setdefault(child.target.id, []).append(child.value)
        return found

    def _literal(self, node: ast.expr) -> bool:
        if isinstance(node, ast.Constant):
            return isinstance(node.value, str)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            return self._literal(node.left) and self._literal(node.right)
        return False

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self.scopes.append(self._assignments(node))
        self.generic_visit(node)
        self.scopes.pop()

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Call(self, node: ast.Call) -> None:
        name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
        position = 0 if name in EXECUTORS else 1 if name in EXECUTE_VALUES else None
        if position is not None and len(node.args) > position:
            why = self.built(node.args[position], depth=0)
            if why:
                self.findings.append(Finding(self.path, node.lineno, f"{name}() with SQL {why}"))
        self.generic_visit(node)

    def built(self, node: ast.expr, depth: int) -> str | None:
        """Why this expression is string-built SQL, or None."""
        if depth > 5:
            return None
        if isinstance(node, ast.JoinedStr):
            for part in node.values:
                if isinstance(part, ast.FormattedValue):
                    value = part.value
                    if not (isinstance(value, ast.Name) and value.id in ALLOWED_INTERPOLATIONS):
                        return f"built by an f-string interpolating `{ast.unparse(value)}`"
            return None
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod):
            return "built with %-formatting"
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            for side in (node.left, node.right):
                if isinstance(side, ast.Constant) or (isinstance(side, ast.Name) and side.id in self.constants):
                    continue
                inner = self.built(side, depth + 1)
                if inner:
                    return inner
                if not isinstance(side, ast.BinOp):
                    return f"concatenated with `{ast.unparse(side)}`"
            return None
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "format":
            receiver = node.func.value
            composed = ("sql.SQL", "SQL", "psycopg2.sql.SQL")
            is_sql = isinstance(receiver, ast.Call) and ast.unparse(receiver.func) in composed
            return None if is_sql else "built with str.format()"
        if isinstance(node, ast.Name) and node.id not in self.constants:
            for scope in reversed(self.scopes):
                for value in scope.get(node.id, []):
                    inner = self.built(value, depth + 1)
                    if inner:
                        return f"from `{node.id}`, {inner}"
                if node.id in scope:
                    break
        return None


def scan(source: str, path: str) -> list[Finding]:
    tree = ast.parse(source, path)
    visitor = SqlBuildingVisitor(path, tree)
    visitor.visit(tree)
    return visitor.findings


def sources() -> Iterator[tuple[str, str]]:
    for root in SCANNED:
        for file in sorted((REPO / root).rglob("*.py")):
            yield str(file.relative_to(REPO)), file.read_text()


@pytest.mark.timeout(30)
def test_the_scanner_catches_string_built_sql() -> None:
    bad = '''
def f(cur, name, n, table):
    cur.execute(f"SELECT * FROM t WHERE name = '{name}'")
    cur.execute("SELECT * FROM t WHERE n = %d" % n)
    cur.execute("SELECT * FROM " + table)
    cur.execute("SELECT * FROM {}".format(table))
    query = f"DELETE FROM {table}"
    cur.execute(query)
    execute_values(cur, "INSERT INTO " + table + " VALUES %s", [])
'''
    good = '''
from psycopg2 import sql
BASE = "SELECT id FROM t "
PREPARED_NAME = "p"
def g(cur, name, table):
    cur.execute("SELECT * FROM t WHERE name = %s", (name,))
    cur.execute(BASE + "WHERE name = %s", (name,))
    cur.execute(f"EXECUTE {PREPARED_NAME} (%s)", (name,))
    cur.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(table)))
    query = "SELECT 1"
    cur.execute(query)
'''
    assert [f.line for f in scan(bad, "bad.py")] == [3, 4, 5, 6, 8, 9]
    assert scan(good, "good.py") == []


@pytest.mark.timeout(60)
def test_sql_is_only_ever_built_with_parameters() -> None:
    findings = [f for path, text in sources() if path not in KNOWN for f in scan(text, path)]
    assert not findings, "string-built SQL:\n" + "\n".join(map(str, findings))


@pytest.mark.timeout(30)


# -- binds --------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("host", "expected"), [(None, {"127.0.0.1"}), ("0.0.0.0", {"0.0.0.0"})])
def test_metrics_bind_loopback_unless_configured(
    host: str | None, expected: set[str], sim: Simulator, conn: psycopg2.extensions.connection,
    services: ServiceFactory, free_port: Callable[[], int],
) -> None:
    insert_streamers(conn, sim.create_streamers(5))
    port = free_port()
    if host is None:
        service = services(shard_count="1", metrics_port=str(port))  # the default bind
    else:
        service = services(shard_count="1", metrics_port=str(port), metrics_host=host)
    with running(service):
        service.wait_children(1)
        wait_until(lambda: bool(listening_addresses(port)), 10, what="the metrics endpoint")
        assert listening_addresses(port) == expected
        wait_until(lambda: "kick_monitor_pusher_connected" in scrape(port), 10, what="worker metrics")
        assert_clean(scrape(port), "the metrics scrape")
        assert_titles_clean(service)
        assert service.stop() == 0


@pytest.mark.timeout(60)
def test_simulator_control_api_binds_loopback_and_refuses_public_unless_forced() -> None:
    with pytest.raises(ValueError, match="non-loopback"):
        SimConfig(host="0.0.0.0")
    with Simulator(SimConfig()) as default:
        port = int(default.control_url.rsplit(":", 1)[1])
        assert listening_addresses(port) == {"127.0.0.1"}
    with Simulator(SimConfig(host="0.0.0.0", force_public_control=True)) as forced:
        port = int(forced.control_url.rsplit(":", 1)[1])
        assert listening_addresses(port) == {"0.0.0.0"}
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass


# -- file modes -----------------------------------------------------------------------------------


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.mark.timeout(90)
def test_runtime_spool_and_metrics_files_are_private_even_under_umask_0(
    sim: Simulator, conn: psycopg2.extensions.connection, services: ServiceFactory, database_url: str,
    tmp_path: Path, free_port: Callable[[], int],
) -> None:
    insert_streamers(conn, sim.create_streamers(50))
    data_dir = tmp_path / "data"
    service = services(data_dir=data_dir, umask=0, shard_count="1", metrics_port=str(free_port()))
    admin = admin_connection(database_url)
    dbname = database_name(conn)
    try:
        with running(service):
            service.wait_children(1)
            wait_until(lambda: sim.subscription_count() >= 100, 20, what="subscriptions")
            sim.start_flipping(rate=50.0)
            time.sleep(0.5)
            database_unreachable(admin, dbname)
            wait_until(lambda: bool(service.messages("spooled")), 20, what="a spool segment")
            sim.stop_flipping()
            run = data_dir / "run"
            spool = data_dir / "spool" / "all"
            metrics = data_dir / "metrics" / "all"
            checks = {
                run: 0o700,
                run / "coordinator-all.lock": 0o600,
                spool: 0o700,
                metrics: 0o700,
                **dict.fromkeys(spool.glob("*.jsonl"), 0o600),
            }
            assert len(checks) >= 5, "a spool segment exists"
            sockets = list(run.glob("*.sock"))
            assert sockets, "the writer's socket lives in the run dir"
            wrong = {str(p): oct(mode(p)) for p, want in checks.items() if mode(p) != want}
            wrong.update({str(p): oct(mode(p)) for p in sockets if mode(p) & 0o077})
            assert not wrong, f"files with too open modes (umask 0): {wrong}"
            set_connections_allowed(admin, dbname, True)
            assert service.stop() == 0
    finally:
        set_connections_allowed(admin, dbname, True)
        admin.close()


# -- secrets: every way in, nowhere out -------------------------------------------------------------

# Instrumentation, not a stand-in: loaded into every process of the tree through PYTHONPATH, it
# writes down, at each fork, the environment the parent keeps and the child starts with, as
# `os.environ` holds it and as the C `environ` does (what a subprocess would inherit).
ENV_PROBE = '''
import ctypes, json, os, time

_dir = os.environ.get("KM_TEST_ENV_PROBE_DIR")


def _dump(side):
    environ = ctypes.POINTER(ctypes.c_char_p).in_dll(ctypes.CDLL(None), "environ")
    c_environ, i = [], 0
    while environ[i] is not None:
        c_environ.append(environ[i].decode(errors="replace"))
        i += 1
    name = os.path.join(_dir, "%d-%s-%d.json" % (os.getpid(), side, time.monotonic_ns()))
    with open(name, "w") as out:
        json.dump({"pid": os.getpid(), "side": side, "os_environ": dict(os.environ), "c_environ": c_environ}, out)


if _dir:
    os.register_at_fork(after_in_parent=lambda: _dump("parent"), after_in_child=lambda: _dump("child"))
'''
POINTERS = ("CREDENTIALS_DIRECTORY", "KICK_MONITOR_CLIENT_SECRET_FILE", "KICK_MONITOR_DATABASE_PASSWORD_FILE")


def private(path: Path, text: str) -> Path:
    path.write_text(text + "\n")
    path.chmod(0o600)
    return path


def secrets_env(
    way: str, sim: Simulator, role: PasswordRole, tmp_path: Path, client_secret: str = SECRET, **settings: str
) -> dict[str, str]:
    """The service's environment, its two secrets (client secret, database password) given `way`."""
    env = make_env(sim, role.url, tmp_path / "data", **settings)
    del env["KICK_MONITOR_CLIENT_SECRET"]
    if way == "env":
        env.update(KICK_MONITOR_CLIENT_SECRET=client_secret, KICK_MONITOR_DATABASE_PASSWORD=role.password)
    elif way == "file":
        secrets = tmp_path / "run-secrets"
        secrets.mkdir(exist_ok=True)
        env.update(
            KICK_MONITOR_CLIENT_SECRET_FILE=str(private(secrets / "kick_client_secret", client_secret)),
            KICK_MONITOR_DATABASE_PASSWORD_FILE=str(private(secrets / "pg_password", role.password)),
        )
    else:
        credentials = tmp_path / "credentials"
        credentials.mkdir(exist_ok=True)
        private(credentials / "client_secret", client_secret)
        private(credentials / "database_password", role.password)
        env["CREDENTIALS_DIRECTORY"] = str(credentials)
    return env


def assert_hidden(text: str, secrets: tuple[str, ...], where: str) -> None:
    for secret in secrets:
        assert secret not in text, f"a secret appears in {where}"


def environ_block(pid: int) -> str:
    return Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")


def tokens(sim: Simulator, kind: str) -> int:
    return int(sim.stats()[f"tokens_{kind}"])


@pytest.mark.timeout(120)
@pytest.mark.parametrize("way", ["env", "file", "credential"])
def test_no_secret_in_any_environment_log_title_error_or_scrape(
    way: str, sim: Simulator, conn: psycopg2.extensions.connection, password_role: PasswordRole,
    tmp_path: Path, free_port: Callable[[], int],
) -> None:
    secrets = (SECRET, password_role.password)
    insert_streamers(conn, streamers := sim.create_streamers(6))
    probe = tmp_path / "probe"
    (probe / "dumps").mkdir(parents=True)
    (probe / "sitecustomize.py").write_text(ENV_PROBE)
    port = free_port()
    env = secrets_env(way, sim, password_role, tmp_path, shard_count="2", metrics_port=str(port))
    env.update(PYTHONPATH=f"{probe}{os.pathsep}{env['PYTHONPATH']}", KM_TEST_ENV_PROBE_DIR=str(probe / "dumps"))
    service = FaultService(env, tmp_path / "service.log")
    with running(service):
        service.wait_children(2)
        wait_until(lambda: sim.subscription_count() >= 12, 30, what="subscriptions")
        wait_until(lambda: tokens(sim, "issued") >= 1, 20, what="a token for the client secret")
        sim.set_live(streamers[0].slug, True)
        wait_until(lambda: current_state(conn).get(streamers[0].channel_id) == "online", 20,
                   what="a status written with the database password")
        pids = service.tree_pids()
        assert len(pids) == 6  # coordinator, writer, planner, exporter, two workers
        for pid in pids:
            assert_hidden(environ_block(pid), secrets, f"/proc/{pid}/environ")
        dumps = [json.loads(p.read_text()) for p in (probe / "dumps").glob("*.json")]
        assert {d["pid"] for d in dumps if d["side"] == "parent"} == {service.pid}
        assert {d["pid"] for d in dumps if d["side"] == "child"} >= set(pids[1:])
        for dump in dumps:
            where = f"the environment of pid {dump['pid']} ({dump['side']} side of a fork)"
            assert_hidden(json.dumps(dump["os_environ"]), secrets, "os.environ of " + where)
            assert_hidden("\n".join(dump["c_environ"]), secrets, "the C environ of " + where)
            assert not set(POINTERS) & set(dump["os_environ"]), where
        for title in assert_titles_clean(service).values():
            assert_hidden(title, secrets, "a process title")
        assert_hidden(scrape(port), secrets, "the metrics scrape")
        assert service.stop() == 0
    assert_hidden(service.log_text(), secrets, "the service's log")
    broken = dict(env, KICK_MONITOR_DATABASE_URL=password_role.url.split("?")[0].replace("@/", "@127.0.0.1:1/"),
                  KICK_MONITOR_LOG_LEVEL="DEBUG")
    failed = subprocess.run([sys.executable, "-m", "kick_monitor.cli.main", "status"], env=broken, cwd=REPO,
                            capture_output=True, text=True, timeout=60, check=False)
    assert failed.returncode == 1 and "cannot connect to" in failed.stderr
    assert_hidden(failed.stdout + failed.stderr, secrets, "an error output")


@pytest.mark.timeout(120)
def test_rotated_secrets_are_used_after_sighup_without_a_restart(
    sim: Simulator, conn: psycopg2.extensions.connection, password_role: PasswordRole, database_url: str,
    tmp_path: Path,
) -> None:
    """Client secret from a credential, database password from a _FILE; both rotated, then SIGHUP."""
    new_secret, new_password = "rotated-client-secret-5a0c9e", "rotated-pg-password-7b3d1f"
    insert_streamers(conn, streamers := sim.create_streamers(4))
    env = secrets_env("credential", sim, password_role, tmp_path, shard_count="1", reconcile_interval="1")
    os.remove(Path(env["CREDENTIALS_DIRECTORY"]) / "database_password")
    password_file = private(tmp_path / "pg_password", password_role.password)
    env["KICK_MONITOR_DATABASE_PASSWORD_FILE"] = str(password_file)
    service = FaultService(env, tmp_path / "service.log")
    admin = admin_connection(database_url)
    try:
        with running(service):
            service.wait_children(1)
            wait_until(lambda: tokens(sim, "issued") >= 1, 20, what="a token for the first secret")
            coordinator = service.pid

            # Kick regenerates the secret; PostgreSQL gets a new password: the old ones stop working
            sim.rotate_secret(new_secret)
            sim.expire_tokens()
            with admin.cursor() as cur:
                cur.execute(sql.SQL("ALTER ROLE {} PASSWORD %s").format(sql.Identifier(password_role.name)),
                            (new_password,))
            wait_until(lambda: tokens(sim, "refused") >= 1, 20, what="the old secret refused")
            issued = tokens(sim, "issued")

            private(Path(env["CREDENTIALS_DIRECTORY"]) / "client_secret", new_secret)
            private(password_file, new_password)
            os.kill(coordinator, signal.SIGHUP)
            wait_until(lambda: tokens(sim, "issued") > issued, 30, what="a token for the rotated secret")
            terminate(admin, database_name(conn))  # the next connections must use the new password
            sim.set_live(streamers[0].slug, True)
            wait_until(lambda: current_state(conn).get(streamers[0].channel_id) == "online", 30,
                       what="a status written over a connection made with the rotated password")
            assert service.proc is not None and service.proc.poll() is None and service.pid == coordinator
            assert service.stop() == 0
    finally:
        admin.close()
    log = service.log_text()
    assert_hidden(log, (SECRET, new_secret, password_role.password, new_password), "the service's log")
    assert "configuration not reloaded" not in log
