"""`kick-monitor notify`: targets added, listed, tested, removed — the webhook URL never shown."""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kick_sim.chat_endpoint import ChatEndpoint
from tests.conftest import CliRunner


@pytest.fixture
def chat() -> Iterator[ChatEndpoint]:
    with ChatEndpoint() as endpoint:
        yield endpoint


def test_add_list_test_remove_without_ever_showing_the_url(
    run_main: CliRunner, chat: ChatEndpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    cli = run_main  # in this process: fast
    url = chat.url("hook")
    token = chat.token("hook")
    monkeypatch.setattr(sys, "stdin", io.StringIO(url + "\n"))  # `-`: the URL never in a process list
    added = cli("notify", "add", "-", "--kind", "discord", "--streamer", "XQC", "--streamer", "amouranth",
                "--on", "both", "--template", "<@&1> {username} is live: {title}")
    assert added.code == 0, added.stderr
    assert "added notify target 1: discord http://127.0.0.1/…#" in added.stdout
    assert "amouranth, xqc" in added.stdout and "on both" in added.stdout
    assert "no notifier is running" in added.stdout
    listed = cli("notify", "list", "--json")
    [target] = json.loads(listed.stdout)["targets"]
    assert target["streamers"] == ["amouranth", "xqc"] and target["on"] == "both" and target["enabled"]
    tested = cli("notify", "test", "1")
    assert tested.code == 0 and "HTTP 204" in tested.stdout, tested
    [message] = chat.delivered("hook")
    assert message.body["content"] == "<@&1> kick-monitor-test is live: Test announcement from kick-monitor"
    chat.misbehave("hook", status=404)
    failed = cli("notify", "test", "1")
    assert failed.code == 1 and "HTTP 404" in failed.stdout
    table = cli("notify", "list")
    assert "enabled" in table.stdout and "UNCERTAIN" in table.stdout
    removed = cli("notify", "remove", "1")
    assert removed.code == 0 and cli("notify", "list").stdout.startswith("no notify targets")
    for result in (added, listed, tested, failed, table, removed):
        assert token not in result.stdout + result.stderr


@pytest.mark.parametrize(("args", "says"), [
    (["https://discord.com/api/webhooks/1/SECRETTOKEN123", "--template", "{user}"], "unknown field {user}"),
    (["https://discord.com/api/webhooks/1/SECRETTOKEN123", "--streamer", "bad slug!"], "may only contain"),
    (["ftp://discord.com/api/webhooks/1/SECRETTOKEN123"], "must be https://"),
    (["file:relative/path"], "file:/absolute/path"),
])
def test_bad_input_is_one_line_and_exit_2_and_never_echoes_the_url(
    run_main: CliRunner, args: list[str], says: str
) -> None:
    result = run_main("notify", "add", *args)
    assert result.code == 2, result
    assert says in result.stderr and result.stderr.count("\n") == 1
    assert "SECRETTOKEN123" not in result.stderr + result.stdout


def test_a_secret_file_reference_is_read_when_used(run_main: CliRunner, chat: ChatEndpoint, tmp_path: Path) -> None:
    cli = run_main
    secret = tmp_path / "discord-webhook"
    secret.write_text(chat.url("filed") + "\n")
    secret.chmod(0o600)
    added = cli("notify", "add", f"file:{secret}", "--kind", "slack")
    assert added.code == 0 and f"file:{secret}" in added.stdout
    assert cli("notify", "test", "1").code == 0
    assert chat.delivered("filed")[0].body["text"].startswith("kick-monitor-test is live on Kick")
    secret.unlink()
    missing = cli("notify", "test", "1")
    assert missing.code == 1 and "cannot read" in missing.stderr


def test_unknown_ids_and_enable(run_main: CliRunner) -> None:
    cli = run_main
    assert cli("notify", "remove", "9").code == 1
    assert "no notify target 9" in cli("notify", "enable", "9").stderr
    cli("notify", "add", "https://example.org/hook/abcdefgh123")
    enabled = cli("notify", "enable", "1")
    assert enabled.code == 0 and "enabled notify target 1" in enabled.stdout
