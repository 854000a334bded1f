"""The product never imports the tools: `kick_sim` and `kick_tools` are reachable from no module
of `kick_monitor/` or `workers/`, statically (every import, including those inside functions)
and at run time (what `kick-monitor run` and the roles load)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from kick_tools.harness import REPO, child_env

PRODUCT = ("kick_monitor", "workers")
TOOLS = ("kick_sim", "kick_tools")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def source_of(module: str) -> Path | None:
    """The file of a first-party module (product or tool), or None for anything else."""
    base = REPO.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_by(path: Path) -> Iterator[str]:
    """Every module an `import` or `from ... import` anywhere in the file names (relative ones resolved).

    `from package import name` yields `package.name` too: `name` may be a submodule.
    """
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


def reachable_from(roots: list[str]) -> dict[str, str]:
    """Every first-party module reachable from `roots`, each with the module that first imports it."""
    seen: dict[str, str] = {root: "" for root in roots}
    queue = list(roots)
    while queue:
        current = queue.pop()
        path = source_of(current)
        if path is None:
            continue
        for name in imported_by(path):
            parts = name.split(".")
            for end in range(1, len(parts) + 1):  # importing a.b.c runs a and a.b too
                prefix = ".".join(parts[:end])
                if prefix not in seen and source_of(prefix) is not None:
                    seen[prefix] = current
                    queue.append(prefix)
    return seen


def product_modules() -> list[str]:
    return sorted(module_name(path) for top in PRODUCT for path in (REPO / top).rglob("*.py"))


def chain(seen: dict[str, str], module: str) -> str:
    links = [module]
    while seen.get(links[-1]):
        links.append(seen[links[-1]])
    return " <- ".join(links)


def test_the_walk_follows_every_kind_of_import(tmp_path: Path) -> None:
    """The checker itself: function-level, relative and `from package import module` imports count."""
    seen = reachable_from(["kick_monitor.cli.main"])
    assert "workers.coordinator" in seen  # imported inside run_command
    assert "kick_monitor.cli.hooks" in seen  # `from .hooks import ...`
    assert "kick_monitor.cli.errors" in seen  # relative import inside a relative import
    assert "kick_sim.engine" in reachable_from(["kick_sim.cli"])
    assert "kick_tools.harness" in reachable_from(["kick_tools.demo.session"])


def test_no_product_module_reaches_the_tools() -> None:
    roots = product_modules()
    assert "workers.coordinator" in roots and "kick_monitor.cli.main" in roots and len(roots) > 30
    seen = reachable_from(roots)
    leaks = [chain(seen, module) for module in sorted(seen) if module.split(".")[0] in TOOLS]
    assert not leaks, "the product imports the tools:\n" + "\n".join(leaks)


def test_the_simulator_stands_alone() -> None:
    """kick_sim plays Kick's server side for any client: it imports neither the product nor the tools."""
    roots = sorted(module_name(path) for path in (REPO / "kick_sim").rglob("*.py"))
    seen = reachable_from(roots)
    leaks = [chain(seen, module) for module in sorted(seen) if module.split(".")[0] in (*PRODUCT, "kick_tools")]
    assert not leaks, "kick_sim imports:\n" + "\n".join(leaks)


def test_running_the_product_loads_no_tool() -> None:
    code = (
        "import json, sys\n"
        "import workers.coordinator, workers.shard_worker, workers.writer, kick_monitor.cli.main\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('kick_sim', 'kick_tools'))))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=child_env(), cwd=REPO, timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []


def test_the_supervisor_preloads_no_optional_role() -> None:
    """What the coordinator imports before its first fork is shared by every child, used or not:
    an optional role's libraries (the webhook receiver's waitress and cryptography: +8 MB measured)
    are imported only in that role's own child (workers.coordinator.role_class)."""
    code = (
        "import json, sys\n"
        "import workers.coordinator as c\n"
        "from kick_monitor.preload import preload_role_modules\n"
        "preload_role_modules()\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('waitress', 'cryptography')\n"
        "                or m in ('workers.webhook_receiver', 'workers.notifier', 'workers.mirror'))\n"
        "classes = {kind: c.role_class(kind).__name__ for kind in c.OPTIONAL_ROLES}\n"
        "print(json.dumps([loaded, classes]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=child_env(), cwd=REPO, timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    loaded, classes = json.loads(done.stdout)
    assert loaded == []
    assert classes == {"mirror": "StatusMirror", "webhook": "WebhookReceiver", "notifier": "Notifier"}
