"""`kick-monitor streams`: broadcasts written by the writer's statement, as a table and as JSON."""

from __future__ import annotations

import json
import time

import psycopg2

from kick_monitor.messages import StatusChange
from kick_monitor.status_store import apply_changes, prepare
from tests.conftest import CliRunner

T0 = 1_790_000_000.0  # 2026-09-21T14:13:20Z


def change(sid: int, status: str, at: float, seq: int, *, started: float | None = None,
           livestream: int | None = None, title: str | None = None) -> StatusChange:
    return StatusChange(f"c{sid}-{seq}", None, status, "pusher", "e",  # type: ignore[arg-type]
                        livestream, title, started, at, time.monotonic(), 0, 1, seq, sid)


def seed(database_url: str) -> None:
    conn = psycopg2.connect(database_url)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("INSERT INTO kick_monitor.streamers (id, username, channel_id) VALUES (1, 'alice', 11),"
                        " (2, 'bob', 12)")
        prepare(conn)
        apply_changes(conn, [change(1, "online", T0, 1, started=T0, livestream=5, title="first\x1b[2J")])
        apply_changes(conn, [change(1, "offline", T0 + 7980, 2)])  # 2 h 13 min
        apply_changes(conn, [change(1, "online", T0 + 86400, 3, started=T0 + 86400, livestream=6, title="day 2")])
        # all connections down meanwhile: the next frame shows another broadcast
        apply_changes(conn, [change(1, "online", T0 + 90000, 4, started=T0 + 89000, livestream=7, title="day 2b")])
        apply_changes(conn, [change(2, "online", T0 + 10, 5, started=T0 + 10, livestream=8, title="bob")])
        apply_changes(conn, [change(2, "offline", T0 + 70, 6)])
    finally:
        conn.close()


def test_streams_table_newest_first(cli: CliRunner, database_url: str) -> None:
    seed(database_url)
    code, out, err = cli("streams", "alice")
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0].split() == ["SLUG", "STARTED", "ENDED", "DURATION", "TITLE"]
    assert lines[1].split()[:5] == ["alice", "2026-09-22", "14:56", "UTC", "live"]
    assert lines[1].split()[-2:] == ["day", "2b"]
    assert lines[2].split() == ["alice", "2026-09-22", "14:13", "UTC", "2026-09-22", "14:56", "UTC", "(inferred)",
                                "43", "min", "day", "2"]
    assert lines[3].split() == ["alice", "2026-09-21", "14:13", "UTC", "2026-09-21", "16:26", "UTC",
                                "2", "h", "13", "min", "first", "[2J"]
    assert "\x1b" not in out
    assert lines[-1].startswith("(inferred): the end was not seen")


def test_streams_json_since_and_errors(cli: CliRunner, database_url: str) -> None:
    seed(database_url)
    code, out, _ = cli("streams", "--json", "--since", "2026-09-22")
    assert code == 0
    found = json.loads(out)["broadcasts"]
    assert [(b["slug"], b["title"], b["live"], b["end_inferred"]) for b in found] == [
        ("alice", "day 2b", True, False), ("alice", "day 2", False, True),
    ]
    assert found[1]["duration_seconds"] == 2600 and found[1]["livestream_id"] == 6
    code, out, _ = cli("streams", "bob", "--json")
    assert [b["duration_seconds"] for b in json.loads(out)["broadcasts"]] == [60]
    code, _, err = cli("streams", "--since", "yesterday")
    assert code == 2 and err.count("\n") == 1 and "--since 'yesterday' is not a date" in err
    code, _, err = cli("streams", "nobody")
    assert code == 1 and "no streamer 'nobody'" in err
