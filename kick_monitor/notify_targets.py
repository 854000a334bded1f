"""Notification targets: where announcements go, stored in `kick_monitor.notify_targets`.

A webhook URL is a credential (whoever has a Discord webhook URL can post as it), so it is
never shown: every output shows `mask_url(url)` — scheme, host and a short hash to tell
targets apart — and the notifier registers each URL with the log redaction. Operators who
keep secrets out of the database give `file:/path` instead: a secret file (a systemd
credential is one, `/run/credentials/<unit>/<name>`) read each time the targets are loaded,
with the same checks as every secret file (kick_monitor/credentials.py).

>>> target = add_target(conn, "https://discord.com/api/webhooks/1/abc", kind=None, streamers=["xqc"], on="both")
>>> mask_url(target.url)
'https://discord.com/…#5d41ab'
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg2.extensions

from .credentials import read_secret_file
from .notify_format import KINDS, check_template
from .streamers import validate_slug

FILE_PREFIX = "file:"
EVENTS = {"live": (True, False), "offline": (False, True), "both": (True, True)}


class TargetError(ValueError):
    """Bad target input (one line, exit 2) or an unknown target id."""


def mask_url(url: str) -> str:
    """`https://discord.com/…#1a2b3c`: enough to recognise a target, nothing to use it with."""
    if url.startswith(FILE_PREFIX):
        return url  # a path, not the secret
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        scheme = parts.scheme or "?"
    except ValueError:
        host, scheme = "?", "?"
    return f"{scheme}://{host}/…#{hashlib.sha256(url.encode()).hexdigest()[:6]}"


def url_secrets(url: str) -> list[str]:
    """What of a URL must never appear in a log line: the URL, its path and query, its last segment."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return [url]
    found = [url, parts.path, parts.query, parts.path.rstrip("/").rsplit("/", 1)[-1]]
    return [value for value in found if value and len(value) >= 8]


def check_url(url: str) -> str:
    """An http(s) URL with a host, or `file:/absolute/path`; TargetError naming the problem (never the URL)."""
    url = url.strip()
    if url.startswith(FILE_PREFIX):
        path = url[len(FILE_PREFIX):]
        if not path.startswith("/"):
            raise TargetError("a secret file reference is file:/absolute/path")
        return url
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        raise TargetError("the webhook URL is malformed") from None
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise TargetError("the webhook URL must be https://host/... (or file:/path of a secret file holding it)")
    return url


def guess_kind(url: str) -> str:
    """discord for discord.com webhooks, slack for hooks.slack.com, json otherwise."""
    host = (urlsplit(url).hostname or "") if not url.startswith(FILE_PREFIX) else ""
    if host.endswith(("discord.com", "discordapp.com")):
        return "discord"
    if host.endswith("slack.com"):
        return "slack"
    return "json"


@dataclass(frozen=True, slots=True)
class Target:
    """One row of `kick_monitor.notify_targets` (with its delivery counts for `notify list`)."""

    id: int
    kind: str
    url: str | None
    url_file: str | None
    streamers: tuple[str, ...] | None
    on_live: bool
    on_offline: bool
    template: str | None
    offline_template: str | None
    enabled: bool
    disabled_reason: str | None
    counts: tuple[tuple[str, int], ...] = ()

    @property
    def shown_url(self) -> str:
        return mask_url(self.url) if self.url is not None else f"{FILE_PREFIX}{self.url_file}"

    @property
    def on(self) -> str:
        return {(True, False): "live", (False, True): "offline", (True, True): "both"}.get(
            (self.on_live, self.on_offline), "none")

    def wants(self, event: str, slug: str | None) -> bool:
        """Does this target announce `event` ("live"/"offline") of streamer `slug`?"""
        if not self.enabled or not (self.on_live if event == "live" else self.on_offline):
            return False
        return self.streamers is None or (slug is not None and slug in self.streamers)

    def resolve_url(self) -> str:
        """The URL to post to: stored, or read from the secret file now (ConfigError if unreadable)."""
        if self.url is not None:
            return self.url
        assert self.url_file is not None
        return check_url(read_secret_file(Path(self.url_file), f"notify target {self.id} ({self.url_file})"))

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "kind": self.kind, "url": self.shown_url, "streamers": self.streamers,
            "on": self.on, "template": self.template, "offline_template": self.offline_template,
            "enabled": self.enabled, "disabled_reason": self.disabled_reason,
            "deliveries": dict(self.counts),
        }


SELECT_TARGETS = """
SELECT t.id, t.kind, t.url, t.url_file, t.streamers, t.on_live, t.on_offline, t.template, t.offline_template,
       t.enabled, t.disabled_reason
FROM kick_monitor.notify_targets t
"""


def _target(row: tuple[Any, ...], counts: tuple[tuple[str, int], ...] = ()) -> Target:
    values = list(row)
    values[4] = None if values[4] is None else tuple(values[4])
    return Target(*values, counts=counts)  # type: ignore[misc]


def load_targets(conn: psycopg2.extensions.connection) -> list[Target]:
    with conn.cursor() as cur:
        cur.execute(SELECT_TARGETS + " ORDER BY t.id")
        rows = cur.fetchall()
    conn.rollback()
    return [_target(row) for row in rows]


def list_targets(conn: psycopg2.extensions.connection) -> list[Target]:
    """Every target with its deliveries counted by state."""
    with conn.cursor() as cur:
        cur.execute(SELECT_TARGETS + " ORDER BY t.id")
        rows = cur.fetchall()
        cur.execute("SELECT target_id, state, count(*) FROM kick_monitor.notify_deliveries GROUP BY 1, 2")
        counted: dict[int, dict[str, int]] = {}
        for target_id, state, count in cur.fetchall():
            counted.setdefault(target_id, {})[state] = count
    conn.rollback()
    return [_target(row, tuple(sorted(counted.get(row[0], {}).items()))) for row in rows]


def find_target(conn: psycopg2.extensions.connection, target_id: int) -> Target:
    with conn.cursor() as cur:
        cur.execute(SELECT_TARGETS + " WHERE t.id = %s", (target_id,))
        row = cur.fetchone()
    conn.rollback()
    if row is None:
        raise TargetError(f"no notify target {target_id}; `kick-monitor notify list` shows them")
    return _target(row)


def add_target(
    conn: psycopg2.extensions.connection,
    url: str,
    *,
    kind: str | None = None,
    streamers: list[str] | None = None,
    on: str = "live",
    template: str | None = None,
    offline_template: str | None = None,
) -> Target:
    """Validate everything, then insert; TargetError (one line, no URL in it) on bad input."""
    url = check_url(url)
    kind = kind or guess_kind(url)
    if kind not in KINDS:
        raise TargetError(f"--kind must be one of {', '.join(KINDS)}")
    if on not in EVENTS:
        raise TargetError("--on must be live, offline or both")
    slugs: list[str] | None = None
    if streamers:
        try:
            slugs = sorted({validate_slug(slug) for slug in streamers})
        except ValueError as exc:
            raise TargetError(str(exc)) from None
    for text in (template, offline_template):
        if text is not None:
            check_template(text)
    on_live, on_offline = EVENTS[on]
    stored, stored_file = (None, url[len(FILE_PREFIX):]) if url.startswith(FILE_PREFIX) else (url, None)
    with conn, conn.cursor() as cur:
        cur.execute(
            """INSERT INTO kick_monitor.notify_targets
                   (kind, url, url_file, streamers, on_live, on_offline, template, offline_template)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING id""",
            (kind, stored, stored_file, slugs, on_live, on_offline, template, offline_template),
        )
        row = cur.fetchone()
    assert row is not None
    return find_target(conn, row[0])


def remove_target(conn: psycopg2.extensions.connection, target_id: int) -> None:
    with conn, conn.cursor() as cur:
        cur.execute("DELETE FROM kick_monitor.notify_targets WHERE id = %s", (target_id,))
        if cur.rowcount == 0:
            raise TargetError(f"no notify target {target_id}; `kick-monitor notify list` shows them")


def set_enabled(conn: psycopg2.extensions.connection, target_id: int, enabled: bool, reason: str | None = None) -> None:
    with conn, conn.cursor() as cur:
        cur.execute(
            "UPDATE kick_monitor.notify_targets SET enabled = %s, disabled_reason = %s WHERE id = %s",
            (enabled, None if enabled else reason, target_id),
        )
        if cur.rowcount == 0:
            raise TargetError(f"no notify target {target_id}; `kick-monitor notify list` shows them")
