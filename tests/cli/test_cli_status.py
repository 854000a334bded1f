"""`kick-monitor status`: the table, the JSON, the counts."""

from __future__ import annotations

import json

import psycopg2

from tests.conftest import CliRunner

SETUP = [
    "INSERT INTO kick_monitor.streamers (username, channel_id) VALUES ('alice', 1), ('bob', 2), ('carol', 3)",
    """INSERT INTO kick_monitor.streamers (username, unresolved_reason)
       VALUES ('dave', 'no such channel on Kick')""",
    "INSERT INTO kick_monitor.streamers (username, kick_user_id) VALUES ('erin', 55)",
    """UPDATE kick_monitor.streamers SET status = 'online', livestream_id = 77,
              stream_title = E'Speedrun\\x1b[2J any%\\n day 3',
              last_status_change = now() - interval '5 minutes 3 seconds',
              stream_started_at = now() - interval '2 hours 13 minutes 20 seconds'
       WHERE username = 'alice'""",
    """UPDATE kick_monitor.streamers SET status = 'offline', stream_title = 'old title',
              last_status_change = now() - interval '2 hours 1 minute'
       WHERE username = 'bob'""",
]


def seed(database_url: str) -> None:
    conn = psycopg2.connect(database_url)
    try:
        with conn, conn.cursor() as cur:
            for statement in SETUP:
                cur.execute(statement)
    finally:
        conn.close()


def test_status_table_and_counts(cli: CliRunner, database_url: str) -> None:
    seed(database_url)
    code, out, err = cli("status")
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0].split() == ["SLUG", "STATUS", "SINCE", "SOURCES", "TITLE"]
    no_api = ["(no", "api:", "no", "Kick", "API", "credentials)"]
    assert lines[1].split() == ["alice", "online", "live", "for", "2", "h", "13", "min", "pusher", *no_api,
                                "Speedrun", "[2J", "any%", "day", "3"]
    assert "\x1b" not in out  # a title never drives the terminal
    assert lines[2].split() == ["bob", "offline", "2h", "ago", "pusher", *no_api]  # no stale title when offline
    assert lines[3].split() == ["carol", "unknown", "-", "pusher", *no_api]
    assert lines[4].split() == ["dave", "unresolved", "-", "-", "(no", "such", "channel", "on", "Kick)"]
    assert lines[5].split() == ["erin", "unknown", "-", "none", "(no", "pusher:", "no", "channel", "id", "yet",
                                "(the", "API", "checks", "every", "30", "s);", "no", "api:", "no", "Kick", "API",
                                "credentials)"]
    assert lines[6] == ""
    assert lines[7] == "online: 1  offline: 1  unknown: 2  unresolved: 1  total: 5"
    assert lines[8].startswith("monitored without Pusher: 1 (no channel id yet: detected every 30 s by the API")


def test_status_json(cli: CliRunner, database_url: str) -> None:
    seed(database_url)
    code, out, err = cli("status", "--json")
    assert code == 0 and err == ""
    document = json.loads(out)
    assert document["counts"] == {"online": 1, "offline": 1, "unknown": 2, "unresolved": 1, "total": 5,
                                  "without_pusher": 1}
    alice, bob, carol, dave, erin = document["streamers"]
    assert alice["slug"] == "alice" and alice["status"] == "online" and alice["livestream_id"] == 77
    assert 8000 <= alice["live_seconds"] < 8100 and alice["live_since"].endswith("+00:00")
    assert alice["sources"] == ["pusher"] and alice["missing_sources"] == {"api": "no Kick API credentials"}
    assert erin["monitored"] is True and erin["sources"] == [] and erin["user_id"] == 55
    assert erin["missing_sources"]["pusher"].startswith("no channel id yet")
    assert alice["title"] == "Speedrun\x1b[2J any%\n day 3"  # JSON keeps the raw value, escaped
    assert 300 <= alice["since_seconds"] < 400 and alice["since"].endswith("+00:00")
    assert bob["status"] == "offline" and bob["title"] is None
    assert carol["since"] is None and carol["resolved"] is True
    assert dave["resolved"] is False and dave["unresolved_reason"] == "no such channel on Kick"


def test_status_of_nobody(cli: CliRunner) -> None:
    code, out, _ = cli("status")
    assert code == 0
    assert out.splitlines() == [
        "no streamers yet; add one with `kick-monitor streamers add SLUG`",
        "online: 0  offline: 0  unknown: 0  unresolved: 0  total: 0",
    ]
