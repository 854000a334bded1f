"""Commands that live in other packages, imported only when used: run, sim, demo, bench.

Importing them lazily keeps `kick-monitor status` fast and working even when an optional
part (the simulator's `websockets`, the benchmark's `matplotlib`) is not installed; a
missing or broken one is reported as one line, never a traceback.

The contracts:
- `run`   → `workers.coordinator.run_service(settings) -> int`
- `sim`   → `kick_monitor.sim.cli.add_arguments(parser)`, `.run(args) -> int`
- `demo`  → `kick_monitor.demo.add_arguments(parser)`, `.run(args, settings) -> int`
- `bench` → `kick_monitor.bench.cli.add_arguments(parser)`, `.run(args, settings) -> int`
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from ..config import Settings
from ..database import require_database
from .errors import EXIT_FAILURE, CliError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Hook:
    """A subcommand implemented by `module` (`add_arguments` + `run`)."""

    module: str
    takes_settings: bool
    help: str


HOOKS = {
    "sim": Hook("kick_monitor.sim.cli", False, "run the local Kick simulator (Pusher server + API)"),
    "demo": Hook("kick_monitor.demo", True, "embedded database + simulator + the real service, live view"),
    "bench": Hook("kick_monitor.bench.cli", True, "run a benchmark scenario"),
}
RUN_MODULE = "workers.coordinator"


def load_module(name: str, command: str) -> ModuleType:
    """Import `name` for `command`; CliError (exit 1) with the reason if it cannot be."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if name == missing or name.startswith(missing + "."):
            raise CliError(f"`{command}` is not available in this installation ({name} is missing)") from None
        raise CliError(f"`{command}` needs the Python package {missing!r}, which is not installed") from None
    except Exception as exc:  # a broken plugin must not take the whole CLI down with a traceback
        log.debug("importing %s failed", name, exc_info=True)
        raise CliError(f"`{command}` cannot start: importing {name} failed: {type(exc).__name__}: {exc}") from None


def require(module: ModuleType, attribute: str, command: str) -> Callable[..., Any]:
    """`module.attribute`, which must be callable; CliError if the module does not provide it."""
    found: object = getattr(module, attribute, None)
    if not callable(found):
        raise CliError(f"`{command}` is not available: {module.__name__}.{attribute} is missing", EXIT_FAILURE)
    return found


def run_service(settings: Settings, reload_settings: Callable[[], Settings] | None = None) -> int:
    """`kick-monitor run`: hand over to the coordinator (`reload_settings` serves SIGHUP)."""
    require_database(settings)  # no URL and no embedded extra: one line and exit 2, before any fork
    entry = require(load_module(RUN_MODULE, "run"), "run_service", "run")
    return int(entry(settings, reload_settings))
