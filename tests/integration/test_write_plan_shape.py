"""The writer's prepared statements touch only the rows of their batch, at any table size.

The write statement is prepared once per connection with a generic plan, and its inputs are
JSON sets the planner guesses at 100 rows. At 1,000–10,000 streamers that guess made the
streamer update a hash join over a sequential scan of the whole table — every batch, even a
batch of one change, read every streamer row (1.8 ms a batch at 10,000, measured; S2's table).
"""

from __future__ import annotations

import json
from typing import Any

import psycopg2.extensions
import pytest
from psycopg2.extras import execute_values

from kick_monitor.status_store import PREPARED_NAME, prepare


def scans(node: dict[str, Any]) -> list[tuple[str, str]]:
    """Every (node type, relation) pair of an EXPLAIN (FORMAT JSON) plan tree."""
    found = [(node["Node Type"], node.get("Relation Name", ""))]
    for child in node.get("Plans", []):
        found.extend(scans(child))
    return found


@pytest.mark.parametrize("streamers", [1_000, 10_000])
def test_the_streamer_update_probes_by_key_at_any_table_size(
    conn: psycopg2.extensions.connection, streamers: int
) -> None:
    with conn, conn.cursor() as cur:
        execute_values(cur, "INSERT INTO kick_monitor.streamers (username, channel_id) VALUES %s",
                       [(f"s{i}", i) for i in range(1, streamers + 1)], page_size=5000)
        cur.execute("ANALYZE kick_monitor.streamers")
    prepare(conn)
    with conn.cursor() as cur:
        cur.execute(f"EXPLAIN (FORMAT JSON) EXECUTE {PREPARED_NAME} ('[]', '[]', '[]', '[]', 60, '{{}}')")
        found = cur.fetchone()
    conn.rollback()
    assert found is not None
    plan = found[0] if isinstance(found[0], list) else json.loads(found[0])
    nodes = scans(plan[0]["Plan"])
    assert ("ModifyTable", "streamers") in nodes
    assert ("Seq Scan", "streamers") not in nodes, nodes
