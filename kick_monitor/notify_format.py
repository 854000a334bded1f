"""What a go-live (or offline) announcement looks like for each kind of target.

Templates are `str.format` text with named fields only — `{username} {title} {category} {url}
{started_at} {duration}` — checked when a target is added (`check_template`): an unknown
field, an index or attribute (`{title.__class__}`, `{0}`), a conversion or a bad brace is
refused with one line, so a template can never reach into Python objects or fail at send time.

Bodies, per kind:
- `discord`: an embed (title, stream title, category, the `https://kick.com/{slug}` link,
  the start time) plus `content` from the template (where a role mention like `<@&ID>` goes);
  `allowed_mentions` lets roles and users through but never `@everyone`/`@here` (a stream
  title is written by the streamer);
- `slack`: an incoming-webhook `text`;
- `json`: the broadcast as JSON (and `text` when a template is set), for anything else.

>>> fields = Announcement("live", "xqc", "just chatting", "IRL", started, None, False).fields()
>>> render_body("slack", fields, "{username} is live: {url}")
{'text': 'xqc is live: https://kick.com/xqc'}
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

FIELDS = ("username", "title", "category", "url", "started_at", "duration")
KINDS = ("discord", "slack", "json")
MAX_TEMPLATE = 1500  # Discord's content limit is 2,000 characters; leave room for the fields
DEFAULT_TEXT = {
    ("live", False): "{username} is live on Kick: {title} {url}",
    ("live", True): "{username} was live on Kick (found late): {title} {url}",
    ("offline", False): "{username} went offline after {duration}",
    ("offline", True): "{username} went offline after {duration} (found late)",
}
EMBED_COLOR = 0x53FC18  # Kick green


class TemplateError(ValueError):
    """A template that cannot be used: one line naming why."""


def check_template(template: str) -> str:
    """The template if every field is a known name; TemplateError otherwise."""
    if not template.strip():
        raise TemplateError("the template is empty")
    if len(template) > MAX_TEMPLATE:
        raise TemplateError(f"the template is longer than {MAX_TEMPLATE} characters")
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise TemplateError(f"the template is malformed ({exc}); write a literal brace as {{{{ or }}}}") from None
    for _, name, spec, conversion in parts:
        if name is None:
            continue
        if name not in FIELDS:
            known = " ".join("{" + field + "}" for field in FIELDS)
            raise TemplateError(f"unknown field {{{name}}} in the template; known: {known}")
        if spec or conversion:
            raise TemplateError(f"{{{name}}}: format specs and conversions are not supported")
    return template


@dataclass(frozen=True, slots=True)
class Announcement:
    """One event of one broadcast, as every kind renders it."""

    event: str  # "live" or "offline"
    username: str
    title: str | None
    category: str | None
    started_at: datetime
    ended_at: datetime | None
    late: bool
    broadcast_id: int = 0

    @property
    def url(self) -> str:
        return f"https://kick.com/{self.username}"

    @property
    def seconds(self) -> float | None:
        return None if self.ended_at is None else max(0.0, (self.ended_at - self.started_at).total_seconds())

    def fields(self) -> dict[str, str]:
        return {
            "username": self.username,
            "title": self.title or "",
            "category": self.category or "",
            "url": self.url,
            "started_at": self.started_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "duration": format_duration(self.seconds),
        }

    def text(self, template: str | None) -> str:
        return (template or DEFAULT_TEXT[(self.event, self.late)]).format(**self.fields()).strip()


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, _ = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min" if minutes else f"{int(seconds)} s"


def render_body(kind: str, announcement: Announcement, template: str | None) -> dict[str, Any]:
    """The JSON body to POST for `kind`."""
    text = announcement.text(template)
    if kind == "slack":
        return {"text": text}
    if kind == "discord":
        return discord_body(announcement, text)
    return json_body(announcement, text if template else None)


def discord_body(a: Announcement, text: str) -> dict[str, Any]:
    live = a.event == "live"
    title = f"{a.username} {'was' if a.late and live else 'is'} live on Kick" if live else f"{a.username} went offline"
    embed: dict[str, Any] = {
        "title": title[:256],
        "url": a.url,
        "color": EMBED_COLOR if live else 0x808080,
        "timestamp": a.started_at.astimezone(UTC).isoformat(),
        "fields": [],
    }
    if a.title:
        embed["description"] = a.title[:4000]
    if a.category:
        embed["fields"].append({"name": "Category", "value": a.category[:1024], "inline": True})
    if not live:
        embed["fields"].append({"name": "Streamed for", "value": format_duration(a.seconds), "inline": True})
    return {"content": text[:2000], "embeds": [embed], "allowed_mentions": {"parse": ["roles", "users"]}}


def json_body(a: Announcement, text: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "event": a.event,
        "late": a.late,
        "broadcast": {
            "id": a.broadcast_id,
            "slug": a.username,
            "url": a.url,
            "title": a.title,
            "category": a.category,
            "started_at": a.started_at.astimezone(UTC).isoformat(),
            "ended_at": None if a.ended_at is None else a.ended_at.astimezone(UTC).isoformat(),
            "duration_seconds": a.seconds,
        },
    }
    if text is not None:
        body["text"] = text
    return body


def sample_announcement(event: str = "live") -> Announcement:
    """What `kick-monitor notify test` sends."""
    now = datetime.now(UTC)
    return Announcement(event, "kick-monitor-test", "Test announcement from kick-monitor", "Just Chatting", now,
                        now if event == "offline" else None, False)
