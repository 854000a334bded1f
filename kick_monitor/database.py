"""Opening PostgreSQL connections, and choosing between a configured and the embedded server.

Every process opens its own connections after fork; nothing here is shared across one.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg2
import psycopg2.extensions
from pydantic import SecretStr

from .config import Settings
from .embedded_pg import EmbeddedPostgres, import_pgserver

log = logging.getLogger(__name__)
SCHEMA = "kick_monitor"


class DatabaseUnavailable(RuntimeError):
    """The database could not be reached; the message is safe to show (no password)."""


def first_line(exc: BaseException) -> str:
    """An error's first line for a log line or a message (its type when it says nothing)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


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


# Every connection gets these libpq settings (a value in the URL wins). A peer that vanishes
# without a FIN or RST (a crashed host, a dropped NAT or firewall entry, a cut link) is noticed
# by TCP keepalives after idle + interval × count = 25 s on an idle connection (a LISTEN
# connection is idle for hours), and by tcp_user_timeout after 30 s when sent data stays
# unacknowledged: within a minute either way. Without them, both wait for the kernel's two
# hours or its ~15 minutes of retransmissions. Unix-socket connections ignore them.
KEEPALIVES_IDLE = 10
KEEPALIVES_INTERVAL = 5
KEEPALIVES_COUNT = 3
TCP_USER_TIMEOUT_MS = 30_000
# A ceiling for any statement whose session sets none of its own (the writer and the
# coordinator set shorter ones): a stuck statement fails instead of hanging a process.
STATEMENT_TIMEOUT_MS = 60_000


def libpq_options(
    url: str,
    *,
    keepalives_idle: int = KEEPALIVES_IDLE,
    keepalives_interval: int = KEEPALIVES_INTERVAL,
    keepalives_count: int = KEEPALIVES_COUNT,
    tcp_user_timeout_ms: int = TCP_USER_TIMEOUT_MS,
    statement_timeout_ms: int | None = STATEMENT_TIMEOUT_MS,
) -> dict[str, str]:
    """The connection parameters `connect` adds to `url`: those the URL does not set itself.

    Raises psycopg2.ProgrammingError for a malformed URL (its message quotes the URL).
    """
    given = psycopg2.extensions.parse_dsn(url)
    wanted = {
        "keepalives": "1",
        "keepalives_idle": str(keepalives_idle),
        "keepalives_interval": str(keepalives_interval),
        "keepalives_count": str(keepalives_count),
        "tcp_user_timeout": str(tcp_user_timeout_ms),
    }
    added = {key: value for key, value in wanted.items() if key not in given}
    options = given.get("options", "")
    if statement_timeout_ms is not None and "statement_timeout" not in options:
        added["options"] = f"{options} -c statement_timeout={statement_timeout_ms}".strip()
    return added


def connect(
    url: str,
    *,
    application_name: str = "kick-monitor",
    autocommit: bool = False,
    connect_timeout: int = 5,
    keepalives_idle: int = KEEPALIVES_IDLE,
    keepalives_interval: int = KEEPALIVES_INTERVAL,
    keepalives_count: int = KEEPALIVES_COUNT,
    tcp_user_timeout_ms: int = TCP_USER_TIMEOUT_MS,
    statement_timeout_ms: int | None = STATEMENT_TIMEOUT_MS,
) -> psycopg2.extensions.connection:
    """A new connection; failures become DatabaseUnavailable with a password-free message.

    TCP keepalives, tcp_user_timeout and a statement_timeout are set unless the URL sets its
    own (see KEEPALIVES_IDLE); the keyword arguments exist so tests can shorten them.
    `statement_timeout_ms=None` leaves statements unbounded (schema migrations).
    """
    try:
        options = libpq_options(
            url,
            keepalives_idle=keepalives_idle,
            keepalives_interval=keepalives_interval,
            keepalives_count=keepalives_count,
            tcp_user_timeout_ms=tcp_user_timeout_ms,
            statement_timeout_ms=statement_timeout_ms,
        )
        params: dict[str, str | int] = {
            "application_name": application_name, "connect_timeout": connect_timeout, **options
        }
        conn = psycopg2.connect(url, connection_factory=None, cursor_factory=None, **params)
    except psycopg2.OperationalError as exc:
        raise DatabaseUnavailable(f"cannot connect to {describe_url(url)}: {first_line(exc)}") from None
    except psycopg2.Error:  # "invalid dsn: ..." quotes the whole URL, password included: never show it
        raise DatabaseUnavailable(f"cannot connect to {describe_url(url)}: malformed database URL") from None
    if autocommit:
        conn.set_isolation_level(psycopg2.extensions.ISOLATION_LEVEL_AUTOCOMMIT)
    return conn


def take_notifications(conn: psycopg2.extensions.connection) -> list[Any]:
    """Read what a LISTEN connection received and empty its queue (psycopg2 only appends).

    Raises psycopg2.Error when the connection is lost: each caller decides what that means.
    """
    conn.poll()
    received = list(conn.notifies)
    conn.notifies.clear()
    return received


def require_database(settings: Settings) -> None:
    """Check, before anything starts, that there is a database to use: a URL or `pgserver`."""
    if settings.database_url is None:
        import_pgserver()


@contextlib.contextmanager
def database_url(settings: Settings, *, keep_running: bool = False) -> Iterator[str]:
    """Yield the URL to use: the configured one, or an embedded server started for the duration.

    A separate `database_password` is added to the configured URL (as a libpq connection
    string); libpq's own `passfile` / $PGPASSFILE works without any of this.
    Neither a URL nor the `embedded` extra installed: EmbeddedPostgresMissing (exit 2 in the CLI).
    """
    if settings.database_url is not None:
        yield with_password(settings.database_url.get_secret_value(), settings.database_password)
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
