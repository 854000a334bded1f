"""Exit codes and the one exception every command raises to end with a one-line error."""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1  # something failed at run time: database down, a conflict, a missing module
EXIT_USAGE = 2  # bad arguments or bad configuration: fix the command line or the config
EXIT_INTERRUPTED = 130


class CliError(Exception):
    """End the command: `kick-monitor: error: <message>` on stderr, exit with `code`."""

    def __init__(self, message: str, code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.code = code
