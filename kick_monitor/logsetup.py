"""Logging for every kick-monitor process: JSON lines or text, secrets redacted, floods damped.

One handler on the root logger, writing to stderr, with two filters:
- `RateLimitFilter` lets one record per (logger, level, template) through every
  `interval` seconds (WARNING and above by default) and tells, on the next one that passes,
  how many it held back — a dead database must not write a line per retry per shard;
- `RedactFilter` replaces every registered secret (`register_secret`) with `**********`
  in the message, the arguments and every `extra=` field, so no code path can leak one.

>>> configure_logging(settings, role="worker", shard=3)
>>> logging.getLogger("kick_monitor.pusher").warning("reconnecting", extra={"delay": 2.5})
{"ts": "2025-01-01T12:00:00.123Z", "level": "WARNING", "process": "worker", "shard": 3, ...}
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import IO, Any
from urllib.parse import unquote, urlsplit

import orjson

from .config import SECRET_FIELDS, SECRET_MASK, Settings

# Values shorter than this are not registered: they would mask ordinary words and digits.
MIN_SECRET_LENGTH = 4
DEFAULT_RATE_LIMIT_SECONDS = 60.0
# Attributes every LogRecord has; anything else on a record came in through `extra=`.
STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
# Our own per-record attributes, set by the filters below.
SUPPRESSED_ATTR = "suppressed"

_secrets: set[str] = set()
_secrets_lock = threading.Lock()


def register_secret(value: str | None) -> None:
    """Mask `value` in every log record from now on (ignored if empty or very short)."""
    if value and len(value) >= MIN_SECRET_LENGTH:
        with _secrets_lock:
            _secrets.add(value)


def register_settings_secrets(settings: Settings) -> None:
    """Register every secret setting; of the database URL, only its password (raw and URL-decoded)."""
    for name in sorted(SECRET_FIELDS):
        value = getattr(settings, name)
        if value is None:
            continue
        if name == "database_url":  # host and database name are not secret, and show in messages
            register_url_secrets(value.get_secret_value())
        else:
            register_secret(value.get_secret_value())


def register_url_secrets(url: str | None) -> None:
    """Register a URL's password, as written and percent-decoded (even if the URL is malformed)."""
    if not url:
        return
    try:
        password = urlsplit(url).password
    except ValueError:  # e.g. a bad port; fall back to what sits between "user:" and "@"
        netloc = url.split("://", 1)[-1].split("/", 1)[0]
        userinfo = netloc.rpartition("@")[0]
        password = userinfo.partition(":")[2] if "@" in netloc else None
    if password:
        register_secret(password)
        register_secret(unquote(password))


def forget_secrets() -> None:
    """Drop every registered secret (tests)."""
    with _secrets_lock:
        _secrets.clear()


def redact(text: str) -> str:
    """`text` with every registered secret replaced by the mask; longest secrets first."""
    with _secrets_lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, SECRET_MASK)
    return text


def redact_value(value: Any) -> Any:
    """Redact strings inside `value`; containers are copied, other objects kept unless they leak."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {key: redact_value(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [redact_value(item) for item in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    text = str(value)
    cleaned = redact(text)
    return value if cleaned == text else cleaned


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The fields a caller attached with `extra=`."""
    return {key: value for key, value in vars(record).items() if key not in STANDARD_ATTRS}


class RedactFilter(logging.Filter):
    """Replace registered secrets in the message, its arguments and the extras of every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # bad %-arguments: leave it to the handler's error path
            message = str(record.msg)
            record.args = None
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        for key, value in extra_fields(record).items():
            setattr(record, key, redact_value(value))
        return True


class RateLimitFilter(logging.Filter):
    """One record per (logger, level, template) per `interval` seconds; report what was held back."""

    MAX_KEYS = 10_000  # templates built with f-strings must not grow this without bound

    def __init__(
        self,
        interval: float = DEFAULT_RATE_LIMIT_SECONDS,
        min_level: int = logging.WARNING,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.interval = interval
        self.min_level = min_level
        self.clock = clock
        self._last: dict[tuple[str, int, str], tuple[float, int]] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < self.min_level or self.interval <= 0:
            return True
        key = (record.name, record.levelno, str(record.msg))
        now = self.clock()
        with self._lock:
            last, held = self._last.get(key, (None, 0))
            if last is not None and now - last < self.interval:
                self._last[key] = (last, held + 1)
                return False
            if len(self._last) >= self.MAX_KEYS:
                self._last.clear()
            self._last[key] = (now, 0)
        if held:
            setattr(record, SUPPRESSED_ATTR, held)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, process, shard, pid, logger, msg and the extras."""

    def __init__(self, role: str, shard: int | None) -> None:
        super().__init__()
        self.role = role
        self.shard = shard

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": format_timestamp(record.created),
            "level": record.levelname,
            "process": self.role,
            "shard": self.shard,
            "pid": record.process if record.process is not None else os.getpid(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in extra_fields(record).items():
            entry.setdefault(key, value)
        if record.exc_info:
            entry["exc"] = redact(self.formatException(record.exc_info))
        if record.stack_info:
            entry["stack"] = redact(self.formatStack(record.stack_info))
        return orjson.dumps(entry, default=str).decode()


class TextFormatter(logging.Formatter):
    """Human text for a terminal: time, level, role/shard, logger, message, extras as key=value."""

    def __init__(self, role: str, shard: int | None) -> None:
        super().__init__()
        self.who = role if shard is None else f"{role}/{shard}"

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created).strftime("%H:%M:%S")
        line = f"{stamp} {record.levelname:<7} {self.who} {record.name}: {record.getMessage()}"
        extras = extra_fields(record)
        if extras:
            line += " (" + " ".join(f"{key}={value}" for key, value in extras.items()) + ")"
        if record.exc_info:
            line += "\n" + redact(self.formatException(record.exc_info))
        if record.stack_info:
            line += "\n" + redact(self.formatStack(record.stack_info))
        return line


def format_timestamp(created: float) -> str:
    """ISO 8601 in UTC with milliseconds and a `Z`."""
    return datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def wants_json(log_format: str, stream: IO[str]) -> bool:
    """JSON when asked, or on `auto` when the stream is not a terminal (journald, files, pipes)."""
    if log_format == "auto":
        isatty = getattr(stream, "isatty", None)
        return not (isatty is not None and isatty())
    return log_format == "json"


class _OurHandler(logging.StreamHandler):
    """Marks the handler we installed, so a second `configure_logging` replaces it."""


def configure_logging(
    settings_or_format: Settings | str,
    level: str | int | None = None,
    role: str = "main",
    shard: int | None = None,
    *,
    stream: IO[str] | None = None,
    rate_limit_seconds: float = DEFAULT_RATE_LIMIT_SECONDS,
) -> logging.Handler:
    """Install the process's one log handler on the root logger (replacing an earlier one).

    With `Settings`, the format and level come from it (unless `level` is given) and its
    secrets are registered; with a format string (`auto` | `json` | `text`), `level`
    defaults to INFO.
    """
    if isinstance(settings_or_format, Settings):
        register_settings_secrets(settings_or_format)
        log_format: str = settings_or_format.log_format
        level = settings_or_format.log_level if level is None else level
    else:
        log_format = settings_or_format
        level = "INFO" if level is None else level
    stream = sys.stderr if stream is None else stream
    handler = _OurHandler(stream)
    formatter: logging.Formatter = (
        JsonFormatter(role, shard) if wants_json(log_format, stream) else TextFormatter(role, shard)
    )
    handler.setFormatter(formatter)
    handler.addFilter(RateLimitFilter(rate_limit_seconds))  # first: keyed on the raw template
    handler.addFilter(RedactFilter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _OurHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("pgserver").setLevel(logging.WARNING)  # chatty at INFO about pg_ctl runs
    logging.captureWarnings(True)
    return handler
