"""Logging: JSON and text formats, redaction of secrets everywhere, rate limiting with counts."""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from kick_monitor import logsetup
from kick_monitor.config import SECRET_MASK, load_settings
from kick_monitor.logsetup import RateLimitFilter, configure_logging, redact, register_secret

SECRET = "hunter2-but-longer"
DB_PASSWORD = "p@ss:w/rd"  # percent-encoded in the URL


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    for handler in root.handlers[:]:
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
    logsetup.forget_secrets()


def json_lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_carry_the_context() -> None:
    stream = io.StringIO()
    configure_logging("json", "INFO", role="worker", shard=3, stream=stream)
    logging.getLogger("kick_monitor.pusher").info(
        "subscribed %d channels", 12, extra={"channel_id": 668, "streamer": "xqc"}
    )
    logging.getLogger("kick_monitor.pusher").debug("not shown at INFO")
    [entry] = json_lines(stream)
    assert entry["level"] == "INFO"
    assert entry["process"] == "worker"
    assert entry["shard"] == 3
    assert entry["pid"] == os.getpid()
    assert entry["logger"] == "kick_monitor.pusher"
    assert entry["msg"] == "subscribed 12 channels"
    assert entry["channel_id"] == 668 and entry["streamer"] == "xqc"
    ts = str(entry["ts"])
    assert ts.endswith("Z")
    assert datetime.fromisoformat(ts.replace("Z", "+00:00")).utcoffset() is not None


def test_json_includes_the_exception_and_odd_extras() -> None:
    stream = io.StringIO()
    configure_logging("json", "INFO", role="writer", stream=stream)
    try:
        raise RuntimeError("commit failed")
    except RuntimeError:
        logging.getLogger("w").exception(
            "batch lost", extra={"when": datetime(2025, 1, 1), "ids": (1, 2), "path": Path("/x")}
        )
    [entry] = json_lines(stream)
    assert "RuntimeError: commit failed" in str(entry["exc"])
    assert entry["when"] == "2025-01-01T00:00:00"
    assert entry["path"] == "/x"
    assert entry["ids"] == [1, 2]
    assert entry["shard"] is None


def test_auto_is_json_off_a_terminal_and_text_on_one() -> None:
    pipe, tty = io.StringIO(), FakeTTY()
    configure_logging("auto", "INFO", role="coordinator", stream=pipe)
    logging.getLogger("x").info("hello")
    configure_logging("auto", "INFO", role="coordinator", shard=2, stream=tty)  # replaces the first handler
    logging.getLogger("x").warning("hello %s", "tty", extra={"code": 4200})
    assert json_lines(pipe)[0]["msg"] == "hello"
    [line] = tty.getvalue().splitlines()
    assert "WARNING" in line and "coordinator/2 x: hello tty (code=4200)" in line
    assert not line.startswith("{")


def test_explicit_text_and_settings() -> None:
    stream = io.StringIO()
    settings = load_settings(environ={"KICK_MONITOR_LOG_FORMAT": "text", "KICK_MONITOR_LOG_LEVEL": "WARNING"})
    configure_logging(settings, role="cli", stream=stream)
    logging.getLogger("x").info("quiet")
    logging.getLogger("x").error("loud")
    assert stream.getvalue().count("\n") == 1 and "loud" in stream.getvalue()


def test_one_handler_however_often_configured() -> None:
    for _ in range(3):
        configure_logging("json", "INFO", role="cli", stream=io.StringIO())
    ours = [h for h in logging.getLogger().handlers if isinstance(h, logsetup._OurHandler)]
    assert len(ours) == 1


def test_registered_secrets_are_masked_in_message_args_extras_and_tracebacks() -> None:
    stream = io.StringIO()
    configure_logging("json", "DEBUG", role="worker", stream=stream)
    register_secret(SECRET)
    log = logging.getLogger("kick_monitor.kick_api")
    log.info(f"token {SECRET} in the template")
    log.info("token %s in the arguments", SECRET)
    log.info("in extras", extra={"body": {"client_secret": SECRET, "list": [f"x{SECRET}x"]}, "raw": SECRET})
    try:
        raise ValueError(f"bad secret {SECRET}")
    except ValueError:
        log.exception("failed")
    text = stream.getvalue()
    assert SECRET not in text
    entries = json_lines(stream)
    assert entries[0]["msg"] == f"token {SECRET_MASK} in the template"
    assert entries[1]["msg"] == f"token {SECRET_MASK} in the arguments"
    assert entries[2]["body"] == {"client_secret": SECRET_MASK, "list": [f"x{SECRET_MASK}x"]}
    assert entries[2]["raw"] == SECRET_MASK
    assert f"bad secret {SECRET_MASK}" in str(entries[3]["exc"])


def test_settings_register_client_secret_and_database_password() -> None:
    stream = io.StringIO()
    encoded = "p%40ss%3Aw%2Frd"
    settings = load_settings(
        environ={
            "KICK_MONITOR_CLIENT_SECRET": SECRET,
            "KICK_MONITOR_DATABASE_URL": f"postgresql://kick:{encoded}@db.example:5432/kick",
        }
    )
    configure_logging(settings, "INFO", role="cli", stream=stream)
    log = logging.getLogger("x")
    log.warning("secret=%s", SECRET)
    log.warning("url=%s", settings.database_url.get_secret_value() if settings.database_url else "")
    log.warning("decoded password %s", DB_PASSWORD)
    text = stream.getvalue()
    assert SECRET not in text and encoded not in text and DB_PASSWORD not in text
    assert "postgresql://kick:**********@db.example:5432/kick" in text


def test_short_values_are_not_registered() -> None:
    register_secret("ab")
    register_secret("")
    register_secret(None)
    assert redact("ab cd") == "ab cd"


def test_redact_prefers_the_longest_secret() -> None:
    register_secret("abcd")
    register_secret("abcdefgh")
    assert redact("xabcdefghx abcd") == f"x{SECRET_MASK}x {SECRET_MASK}"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_record(msg: str, *args: object, level: int = logging.ERROR, name: str = "db") -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, args, None)


def test_rate_limit_passes_one_per_interval_and_reports_the_rest() -> None:
    clock = Clock()
    limiter = RateLimitFilter(interval=10, clock=clock)
    assert limiter.filter(make_record("cannot connect to %s", "a"))
    held = [limiter.filter(make_record("cannot connect to %s", f"host{i}")) for i in range(5)]
    assert held == [False] * 5
    clock.now += 10
    record = make_record("cannot connect to %s", "b")
    assert limiter.filter(record)
    assert record.suppressed == 5  # type: ignore[attr-defined]
    clock.now += 10
    quiet = make_record("cannot connect to %s", "c")
    assert limiter.filter(quiet) and not hasattr(quiet, "suppressed")


def test_rate_limit_keys_on_logger_level_and_template() -> None:
    limiter = RateLimitFilter(interval=60, clock=Clock())
    assert limiter.filter(make_record("a"))
    assert limiter.filter(make_record("b"))  # another template
    assert limiter.filter(make_record("a", name="other"))  # another logger
    assert limiter.filter(make_record("a", level=logging.WARNING))  # another level
    assert not limiter.filter(make_record("a"))


def test_rate_limit_leaves_info_alone_by_default() -> None:
    limiter = RateLimitFilter(interval=60, clock=Clock())
    assert all(limiter.filter(make_record("went online", level=logging.INFO)) for _ in range(5))


def test_rate_limited_flood_through_the_handler() -> None:
    stream = io.StringIO()
    handler = configure_logging("json", "INFO", role="writer", stream=stream, rate_limit_seconds=3600)
    log = logging.getLogger("kick_monitor.writer")
    for attempt in range(100):
        log.error("database down, retry %d", attempt)
    [limiter] = [f for f in handler.filters if isinstance(f, RateLimitFilter)]
    limiter.clock = lambda: 1e12  # the interval has passed
    log.error("database down, retry %d", 100)
    entries = json_lines(stream)
    assert [entry["msg"] for entry in entries] == ["database down, retry 0", "database down, retry 100"]
    assert entries[1]["suppressed"] == 99


def test_redaction_survives_bad_format_arguments() -> None:
    register_secret(SECRET)
    record = make_record(f"%d items for {SECRET}", "not a number")
    assert logsetup.RedactFilter().filter(record)  # no exception into the caller's log call
    assert record.getMessage() == f"%d items for {SECRET_MASK}"
