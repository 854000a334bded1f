"""docs/notifications.md: its Python listener, run as written, against real commits of the writer's statement."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path
from typing import Any

import psycopg2.extensions
import pytest

from kick_monitor.database import connect
from kick_monitor.messages import StatusChange
from kick_monitor.status_store import apply_changes, prepare
from tests.service import REPO, wait_until

pytestmark = pytest.mark.timeout(60)

DOC = REPO / "docs" / "notifications.md"


def doc_example() -> dict[str, Any]:
    [code] = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    namespace: dict[str, Any] = {"__name__": "kick_monitor_docs_example"}
    exec(compile(code, str(DOC), "exec"), namespace)
    return namespace


def change(channel_id: int, status: str, n: int) -> StatusChange:
    now = time.time()
    return StatusChange(f"doc-{channel_id}-{n}", channel_id, status, "pusher",  # type: ignore[arg-type]
                        r"App\Events\StreamerIsLive", 74000001 if status == "online" else None, "a title",
                        now, now, time.monotonic(), 0)


def test_the_documented_listener_sees_each_transition_once(database_url: str, tmp_path: Path) -> None:
    example = doc_example()
    conn: psycopg2.extensions.connection = connect(database_url)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("INSERT INTO kick_monitor.streamers (username, channel_id) VALUES ('xqc', 668) RETURNING id")
            row = cur.fetchone()
        assert row is not None
        events: list[dict[str, Any]] = []
        listener = threading.Thread(target=example["watch"], args=(database_url, events.append),
                                    kwargs={"limit": 2, "timeout": 0.2}, daemon=True)
        listener.start()
        time.sleep(0.5)  # LISTEN is in place (a notification sent before it would be lost, as documented)
        prepare(conn)
        assert apply_changes(conn, [change(668, "online", 1)]).transitions == 1
        assert apply_changes(conn, [change(668, "online", 2)]).transitions == 0  # no transition: no notification
        assert apply_changes(conn, [change(668, "offline", 3)]).transitions == 1
        listener.join(10)
        assert not listener.is_alive()
        wait_until(lambda: len(events) == 2, 1, what="two notifications")
    finally:
        conn.close()
    first, second = events
    assert set(first) == {"streamer_id", "username", "channel_id", "status", "previous_status", "source",
                          "livestream_id", "broadcast_id", "inferred", "at"}
    assert (first["streamer_id"], first["username"], first["channel_id"]) == (row[0], "xqc", 668)
    assert (first["previous_status"], first["status"], first["source"]) == ("unknown", "online", "pusher")
    assert first["livestream_id"] == 74000001
    assert (second["previous_status"], second["status"], second["livestream_id"]) == ("online", "offline", None)
    assert first["broadcast_id"] == second["broadcast_id"] is not None  # one broadcast, started and ended
    assert first["inferred"] is second["inferred"] is False
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+[+-]\d\d:\d\d", first["at"]), first["at"]


def test_the_documented_announcer_prints_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    example = doc_example()
    example["announce"]({"username": "xqc", "status": "online", "previous_status": "offline", "source": "pusher"})
    assert capsys.readouterr().out == "xqc is now online (was offline, via pusher)\n"
