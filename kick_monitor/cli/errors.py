"""The one exception every command raises to end with a one-line error."""

from __future__ import annotations

from ..exitcodes import EX_FAILURE as EXIT_FAILURE
from ..exitcodes import EX_INTERRUPTED as EXIT_INTERRUPTED
from ..exitcodes import EX_OK as EXIT_OK
from ..exitcodes import EX_USAGE as EXIT_USAGE

__all__ = ["EXIT_FAILURE", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE", "CliError"]


class CliError(Exception):
    """End the command: `kick-monitor: error: <message>` on stderr, exit with `code`."""

    def __init__(self, message: str, code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.code = code
