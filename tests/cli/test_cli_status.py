"""`kick-monitor status`: the table, the JSON, the counts."""

from __future__ import annotations

import json

import psycopg2

from tests.conftest import CliRunner

SETUP = [
    "INSERT INTO kick_monitor.streamers (username, channel_id) VALUES ('alice', 1), ('bob', 2), ('carol', 3)",
    """INSERT INTO kick_monitor.streamers (username, unresolved_reason)
       VALUES ('dave', 'no such channel on Kick')""",
    """UPDATE kick_monitor.streamers SET status = 'online', livestream_id = 77,
              stream_title = E'Speedrun\\x1b[2J any%\\n day 3',
              last_status_change = now() - interval '5 minutes 3 seconds'
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
    assert lines[0].split() == ["SLUG", "STATUS", "SINCE", "TITLE"]
    assert lines[1].split() == ["alice", "online", "5m", "ago", "Speedrun", "[2J", "any%", "day", "3"]
    assert "\x1b" not in out  # a title never drives the terminal
    assert lines[2].split() == ["bob", "offline", "2h", "ago"]  # no stale title for an offline streamer
    assert lines[3].split() == ["carol", "unknown", "-"]
    assert lines[4].split() == ["dave", "unresolved", "-", "(no", "such", "channel", "on", "Kick)"]
    assert lines[5] == ""
    assert lines[6] == "online: 1  offline: 1  unknown: 1  unresolved: 1  total: 4"


def test_status_json(cli: CliRunner, database_url: str) -> None:
    seed(database_url)
    code, out, err = cli("status", "--json")
    assert code == 0 and err == ""
    document = json.loads(out)
    assert document["counts"] == {"online": 1, "offline": 1, "unknown": 1, "unresolved": 1, "total": 4}
    alice, bob, carol, dave = document["streamers"]
    assert alice["slug"] == "alice" and alice["status"] == "online" and alice["livestream_id"] == 77
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
