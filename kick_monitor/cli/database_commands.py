"""Opening the database for one command, and `kick-monitor db migrate`."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator

import psycopg2.extensions

from ..config import Settings
from ..database import STATEMENT_TIMEOUT_MS, connect, database_url
from ..migrations import LATEST_VERSION, current_version, migrate, require_current
from .errors import EXIT_OK, CliError

APPLICATION_NAME = "kick-monitor-cli"


@contextlib.contextmanager
def open_database(settings: Settings, *, require_schema: bool = True) -> Iterator[psycopg2.extensions.connection]:
    """A connection for one command (embedded server started and stopped around it if unset).

    With `require_schema`, a database whose schema is missing or of another version is
    refused before anything is read or written (SchemaError). Without it (migrations, which
    may rewrite big tables) statements run without the default statement_timeout.
    """
    with database_url(settings) as url:
        timeout = STATEMENT_TIMEOUT_MS if require_schema else None
        conn = connect(url, application_name=APPLICATION_NAME, statement_timeout_ms=timeout)
        try:
            if require_schema:
                require_current(conn)
            yield conn
        finally:
            conn.close()


def migrate_command(args: argparse.Namespace, settings: Settings) -> int:
    """Apply pending migrations and say which, or that there were none."""
    with open_database(settings, require_schema=False) as conn:
        before = current_version(conn)
        conn.rollback()
        if before > LATEST_VERSION:
            raise CliError(f"schema version {before} is newer than this program ({LATEST_VERSION}); upgrade it")
        applied = migrate(conn)
        for migration in applied:
            print(f"applied migration {migration.version}: {migration.name}")
        if applied:
            print(f"schema now at version {applied[-1].version}")
        else:
            print(f"schema up to date (version {current_version(conn)})")
    return EXIT_OK
