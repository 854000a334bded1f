"""Opening PostgreSQL connections, and choosing between a configured and the embedded server.

Every process opens its own connections after fork; nothing here is shared across one.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import psycopg2
import psycopg2.extensions

from .config import Settings
from .embedded_pg import EmbeddedPostgres, import_pgserver

log = logging.getLogger(__name__)
SCHEMA = "kick_monitor"


class DatabaseUnavailable(RuntimeError):
    """The database could not be reached; the message is safe to show (no password)."""


def describe_url(url: str) -> str:
    """The URL without credentials, for messages and logs."""
    try:
        parts = urlsplit(url)
        port_number = parts.port
    except ValueError:
        return "<malformed database URL>"
    host = parts.hostname or ""
    if not host and "host=" in parts.query:
        host = parts.query.split("host=", 1)[1].split("&", 1)[0]
    port = f":{port_number}" if port_number else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def connect(
    url: str, *, application_name: str = "kick-monitor", autocommit: bool = False, connect_timeout: int = 5
) -> psycopg2.extensions.connection:
    """A new connection; failures become DatabaseUnavailable with a password-free message."""
    try:
        conn = psycopg2.connect(url, application_name=application_name, connect_timeout=connect_timeout)
    except psycopg2.OperationalError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DatabaseUnavailable(f"cannot connect to {describe_url(url)}: {first}") from None
    except psycopg2.Error:  # "invalid dsn: ..." quotes the whole URL, password included: never show it
        raise DatabaseUnavailable(f"cannot connect to {describe_url(url)}: malformed database URL") from None
    if autocommit:
        conn.set_isolation_level(psycopg2.extensions.ISOLATION_LEVEL_AUTOCOMMIT)
    return conn


def require_database(settings: Settings) -> None:
    """Check, before anything starts, that there is a database to use: a URL or `pgserver`."""
    if settings.database_url is None:
        import_pgserver()


@contextlib.contextmanager
def database_url(settings: Settings, *, keep_running: bool = False) -> Iterator[str]:
    """Yield the URL to use: the configured one, or an embedded server started for the duration.

    Neither a URL nor the `embedded` extra installed: EmbeddedPostgresMissing (exit 2 in the CLI).
    """
    if settings.database_url is not None:
        yield settings.database_url.get_secret_value()
        return
    require_database(settings)
    embedded = EmbeddedPostgres(Path(settings.data_dir))
    url = embedded.start()
    log.info("using embedded PostgreSQL in %s", embedded.pgdata)
    try:
        yield url
    finally:
        if not keep_running:
            embedded.stop()
