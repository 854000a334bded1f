"""Commands that installed tools plug into `kick-monitor` (sim, demo, bench), found by entry point.

The product never names the tool packages: a distribution declares a command in the entry-point
group `kick_monitor.commands` (`NAME = package.module` in setup.cfg), and the CLI lists the names
from the installed metadata without importing anything. The module is imported only when its
command runs (or when the top-level help describes it), so `kick-monitor status` stays fast and
works when an optional part (a tool's own dependency) is missing; a missing or broken tool
is reported as one line, never a traceback.

The contract of a command's module (or of the object the entry point names):
- `HELP: str` one line for `kick-monitor --help`;
- `TAKES_SETTINGS: bool` whether it gets the settings flags and `Settings`;
- `add_arguments(parser)`, and `run(args) -> int` or `run(args, settings) -> int`.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from types import ModuleType
from typing import Any

from .errors import EXIT_FAILURE, CliError

log = logging.getLogger(__name__)
GROUP = "kick_monitor.commands"


def tool_commands() -> dict[str, EntryPoint]:
    """The installed tool commands by name (metadata only: nothing is imported)."""
    return {entry.name: entry for entry in entry_points(group=GROUP)}


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


def load_command(entry: EntryPoint) -> Any:
    """The object `entry` names (`module` or `module:attribute`), with load_module's one-line errors."""
    found: Any = load_module(entry.module, entry.name)
    for part in filter(None, (entry.attr or "").split(".")):
        found = getattr(found, part, None)
        if found is None:
            raise CliError(f"`{entry.name}` is not available: {entry.value} is missing", EXIT_FAILURE)
    return found


def require(command: Any, attribute: str, name: str) -> Callable[..., Any]:
    """`command.attribute`, which must be callable; CliError if the command does not provide it."""
    found: object = getattr(command, attribute, None)
    if not callable(found):
        owner = getattr(command, "__name__", type(command).__name__)
        raise CliError(f"`{name}` is not available: {owner}.{attribute} is missing", EXIT_FAILURE)
    return found


def describe(entry: EntryPoint) -> str:
    """The command's one-line help, or why it cannot run (for `kick-monitor --help`)."""
    try:
        return str(getattr(load_command(entry), "HELP", f"see `kick-monitor {entry.name} --help`"))
    except CliError as exc:
        return f"(unavailable: {exc})"
