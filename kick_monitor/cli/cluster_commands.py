"""`kick-monitor cluster status`: the deployment's nodes, shard leases and duties (issue 17)."""

from __future__ import annotations

import argparse
import json
from datetime import datetime
from typing import Any

from ..config import Settings
from ..leases import read_status
from .database_commands import open_database
from .errors import EXIT_OK
from .render import format_age, render_table


def cluster_status_command(args: argparse.Namespace, settings: Settings) -> int:
    """Nodes, shards (owner, epoch, streamers, state), duties and their holders, leases about to expire."""
    soon = settings.lease_ttl / 3  # a lease renewed on time never has less than ~4/5 of the TTL left
    with open_database(settings) as conn:
        status = read_status(conn, soon)
    if args.json:
        print(json.dumps(status, indent=2, default=_json_value))
        return EXIT_OK
    plan = status["plan"]
    print(f"shard plan: {plan['shard_count']} shards (version {plan['version']})" if plan else "shard plan: none yet")
    print("\nNODES")
    print("\n".join(render_table(
        ["NAME", "HOST", "PID", "VERSION", "SHARDS", "RENEWED"],
        [[n["name"], n["host"], str(n["pid"]), n["version"], n["shards"], format_age(n["renewed_seconds_ago"])]
         for n in status["nodes"]],
    )) if status["nodes"] else "none running")
    print("\nSHARDS")
    print("\n".join(render_table(
        ["SHARD", "OWNER", "EPOCH", "STREAMERS", "STATE", "PUSHER", "EXPIRES IN"],
        [[str(s["shard"]), s["owner"] or "-", str(s["epoch"]), str(s["streamers"]),
          s["state"] if s["unowned_for"] is None else f"unowned for {s['unowned_for']:.0f} s",
          _connection(s), "-" if s["state"] != "owned" else f"{s['expires_in']:.1f} s"]
         for s in status["shards"]],
    )))
    print("\nDUTIES")
    print("\n".join(render_table(
        ["DUTY", "LAST ROUND BY", "STARTED", "IN A ROUND NOW"],
        [[d["name"], d["node"], _json_value(d["round_started"]), "yes" if d["holding_session"] else "no"]
         for d in status["duties"]],
    )) if status["duties"] else "no duty has run yet")
    for lease in status["expiring"]:
        print(f"\nwarning: the lease of shard {lease['shard']} ({lease['owner']}) expires in"
              f" {lease['expires_in']:.1f} s without renewal")
    return EXIT_OK


def _connection(shard: dict[str, Any]) -> str:
    """The owner's worker as it last told its planner: Pusher connected, streamers it watches."""
    if shard["state"] != "owned" or shard["pusher_connected"] is None:
        return "-"
    return f"{'connected' if shard['pusher_connected'] else 'DISCONNECTED'}, watching {shard['watching']}"


def _json_value(value: Any) -> str:
    return value.isoformat() if isinstance(value, datetime) else str(value)
