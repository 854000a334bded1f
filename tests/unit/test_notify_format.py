"""Templates, bodies per kind, URL masking and the sender's verdicts (no database, no network)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from kick_monitor.notify_format import Announcement, TemplateError, check_template, render_body
from kick_monitor.notify_sender import backoff, describe
from kick_monitor.notify_targets import TargetError, check_url, guess_kind, mask_url, url_secrets

STARTED = datetime(2026, 11, 30, 18, 0, tzinfo=UTC)
URL = "https://discord.com/api/webhooks/1234567890/s3cr3t-T0KEN-abcdefghijklmnopqrstuvwxyz"


def live(**changes: object) -> Announcement:
    values: dict[str, object] = dict(event="live", username="xqc", title="just chatting {not a field}",
                                     category="IRL", started_at=STARTED, ended_at=None, late=False, broadcast_id=7)
    values.update(changes)
    return Announcement(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize("template", ["{username} is live: {title} {url}", "<@&123> {username} {category} "
                                      "{started_at} {duration}", "no fields at all", "{{literal}} {username}"])
def test_templates_with_known_fields_are_accepted(template: str) -> None:
    assert check_template(template) == template
    live().text(template)  # and they render


@pytest.mark.parametrize(("template", "says"), [
    ("{user}", "unknown field {user}"),
    ("{title.__class__}", "unknown field"),
    ("{0}", "unknown field {0}"),
    ("{}", "unknown field {}"),
    ("{title!r}", "not supported"),
    ("{title:>10}", "not supported"),
    ("{username", "malformed"),
    ("   ", "empty"),
    ("x" * 2000, "longer than"),
])
def test_bad_templates_are_refused_with_one_line(template: str, says: str) -> None:
    with pytest.raises(TemplateError) as info:
        check_template(template)
    assert says in str(info.value) and "\n" not in str(info.value)


def test_a_title_with_braces_is_text_not_a_template() -> None:
    assert live().text("{title}") == "just chatting {not a field}"


def test_discord_body_is_an_embed_that_never_pings_everyone() -> None:
    body = render_body("discord", live(title="@everyone free stuff"), "<@&42> {username} is live")
    assert body["content"] == "<@&42> xqc is live"
    assert body["allowed_mentions"] == {"parse": ["roles", "users"]}
    embed = body["embeds"][0]
    assert embed["url"] == "https://kick.com/xqc" and embed["title"] == "xqc is live on Kick"
    assert embed["description"] == "@everyone free stuff"
    assert {"name": "Category", "value": "IRL", "inline": True} in embed["fields"]
    assert embed["timestamp"].startswith("2026-11-30T18:00:00")


def test_offline_and_late_bodies() -> None:
    ended = STARTED + timedelta(hours=2, minutes=13)
    assert render_body("slack", live(event="offline", ended_at=ended), None) == {
        "text": "xqc went offline after 2 h 13 min"}
    assert "found late" in render_body("slack", live(late=True, ended_at=ended), None)["text"]
    assert render_body("discord", live(late=True), None)["embeds"][0]["title"] == "xqc was live on Kick"


def test_json_body_carries_the_broadcast() -> None:
    body = render_body("json", live(), None)
    assert body["event"] == "live" and "text" not in body
    assert body["broadcast"]["id"] == 7 and body["broadcast"]["slug"] == "xqc"
    assert body["broadcast"]["url"] == "https://kick.com/xqc" and body["broadcast"]["ended_at"] is None
    assert render_body("json", live(), "{username}")["text"] == "xqc"


def test_urls_are_masked_to_host_and_a_short_hash() -> None:
    shown = mask_url(URL)
    assert shown.startswith("https://discord.com/") and "s3cr3t" not in shown and "1234567890" not in shown
    assert mask_url(URL) != mask_url(URL + "x")  # two targets on one host stay apart
    assert mask_url("file:/run/credentials/kick/discord") == "file:/run/credentials/kick/discord"
    assert URL in url_secrets(URL) and "s3cr3t-T0KEN-abcdefghijklmnopqrstuvwxyz" in url_secrets(URL)


@pytest.mark.parametrize(("url", "says"), [
    ("ftp://x/y", "https://"), ("discord.com/api/webhooks/1/2", "https://"), ("https://h:99999/x", "malformed"),
    ("file:relative", "file:/absolute"),
])
def test_bad_urls_are_refused_without_echoing_them(url: str, says: str) -> None:
    with pytest.raises(TargetError) as info:
        check_url(url)
    assert says in str(info.value) and url not in str(info.value)


def test_kind_is_guessed_from_the_host() -> None:
    assert guess_kind(URL) == "discord"
    assert guess_kind("https://hooks.slack.com/services/T/B/X") == "slack"
    assert guess_kind("https://example.org/hook") == "json"


def test_errors_never_carry_the_url() -> None:
    exc = ConnectionError(f"HTTPSConnectionPool(host='discord.com', port=443): Max retries exceeded with url: "
                          f"{URL.split('discord.com')[1]} (Caused by ...)")
    text = describe(exc, URL)
    assert "s3cr3t" not in text and "ConnectionError" in text


def test_backoff_doubles_to_a_ceiling() -> None:
    assert [backoff(n) for n in (1, 2, 3)] == [1.0, 2.0, 4.0]
    assert backoff(50) == 300.0
