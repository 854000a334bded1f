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
from pydantic import SecretStr

from .config import Settings
from .embedded_pg import EmbeddedPostgres

log = logging.getLogger(__name__)
SCHEMA = "kick_monitor"


class DatabaseUnavailable(RuntimeError):
    """The database could not be reached; the message is safe to show (no password)."""


def describe_url(url: str) -> str:
    """The URL (or libpq `key=value` string) without credentials, for messages and logs."""
    if "://" not in url:
        return _describe_keywords(url)
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


def _describe_keywords(dsn: str) -> str:
    try:
        parts = psycopg2.extensions.parse_dsn(dsn)
    except psycopg2.Error:
        return "<malformed database URL>"
    port = f":{parts['port']}" if parts.get("port") else ""
    return f"postgresql://{parts.get('host', '')}{port}/{parts.get('dbname', '')}"


def with_password(url: str, password: SecretStr | None) -> str:
    """`url` as a libpq connection string with `password` set (it wins over one in the URL)."""
    if password is None:
        return url
    try:
        return str(psycopg2.extensions.make_dsn(url, password=password.get_secret_value()))
    except psycopg2.Error:  # the message would quote the URL: let connect() report it without
        return url


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


@contextlib.contextmanager
def database_url(settings: Settings, *, keep_running: bool = False) -> Iterator[str]:
    """Yield the URL to use: the configured one, or an embedded server started for the duration.

    A separate `database_password` is added to the configured URL (as a libpq connection
    string); libpq's own `passfile` / $PGPASSFILE works without any of this.
    """
    if settings.database_url is not None:
        yield with_password(settings.database_url.get_secret_value(), settings.database_password)
        return
    embedded = EmbeddedPostgres(Path(settings.data_dir))
    url = embedded.start()
    log.info("using embedded PostgreSQL in %s", embedded.pgdata)
    try:
        yield url
    finally:
        if not keep_running:
            embedded.stop()
