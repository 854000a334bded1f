"""Security: SQL only through parameters, loopback binds by default, restrictive file modes.

The known client secret (`faultkit.SECRET`) is what every fault service of this suite runs
with; each test's log is searched for it at teardown (conftest `services`), every process
title when the tree is up (`assert_titles_clean`), and the metrics scrape and CLI error
outputs where a test produces them.
"""

from __future__ import annotations

import ast
import socket
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg2.extensions
import pytest

from kick_sim import SimConfig, Simulator
from tests.faults.conftest import ServiceFactory
from tests.faults.faultkit import (
    admin_connection,
    assert_clean,
    assert_titles_clean,
    database_name,
    database_unreachable,
    listening_addresses,
    scrape,
    set_connections_allowed,
)
from tests.service import REPO, insert_streamers, running, wait_until

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
