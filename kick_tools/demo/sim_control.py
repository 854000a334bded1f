"""A small client for the simulator's control API and the service's metrics endpoint.

>>> sim = SimControl("http://127.0.0.1:40527")
>>> sim.start_flipping(20.0)
>>> changes = sim.truth(since=0)      # every transition so far, oldest first
"""

from __future__ import annotations

import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

import orjson
from prometheus_client.parser import text_string_to_metric_families

from kick_monitor.cli.errors import CliError

CONNECTED_METRIC = "kick_monitor_pusher_connected"
SUBSCRIPTIONS_METRIC = "kick_monitor_pusher_subscriptions"


def http(method: str, url: str, body: dict[str, Any] | None = None, timeout: float = 5.0) -> bytes:
    """One request; the body is sent as JSON. Raises OSError (URLError) on failure."""
    data = orjson.dumps(body) if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        payload: bytes = response.read()
        return payload


class SimControl:
    """The simulator's `/control/*` endpoints; failures become one-line CliErrors."""

    def __init__(self, base_url: str, timeout: float = 5.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout

    def streamers(self) -> list[dict[str, Any]]:
        """Every streamer: slug, channel_id, user_id, chatroom_id, live, ..."""
        found: list[dict[str, Any]] = self._json("GET", "/control/streamers")["streamers"]
        return found

    def stats(self) -> dict[str, Any]:
        found: dict[str, Any] = self._json("GET", "/control/stats")
        return found

    def truth(self, since: int) -> list[dict[str, Any]]:
        """Transitions after the first `since` ones (status changes and title updates)."""
        raw = self._call("GET", f"/control/truth?since={since}")
        return [orjson.loads(line) for line in raw.splitlines() if line.strip()]

    def start_flipping(self, rate: float) -> None:
        self._json("POST", "/control/flip", {"rate": rate})

    def stop_flipping(self) -> int:
        flips: int = self._json("POST", "/control/flip/stop", {})["flips"]
        return flips

    def _json(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        return orjson.loads(self._call(method, path, body))

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> bytes:
        try:
            return http(method, self.base_url + path, body, self.timeout)
        except urllib.error.HTTPError as exc:
            raise CliError(f"simulator control API {method} {path}: HTTP {exc.code} {exc.read()[:200]!r}") from None
        except (OSError, ValueError) as exc:
            raise CliError(f"simulator control API {method} {path} failed: {exc}") from None


@dataclass(frozen=True, slots=True)
class ShardState:
    """One shard's Pusher connection as the service's metrics report it."""

    connected: bool
    subscriptions: int


def scrape_shards(url: str, timeout: float = 1.0) -> dict[int, ShardState] | None:
    """Per-shard connection state and subscriptions; None when the endpoint does not answer."""
    try:
        text = http("GET", url, timeout=timeout).decode("utf-8", "replace")
    except (OSError, ValueError):
        return None
    connected: dict[int, bool] = {}
    subscriptions: dict[int, int] = {}
    try:
        for family in text_string_to_metric_families(text):
            if family.name not in (CONNECTED_METRIC, SUBSCRIPTIONS_METRIC):
                continue
            for sample in family.samples:
                shard = sample.labels.get("shard", "")
                if not shard.isdigit():
                    continue
                if family.name == CONNECTED_METRIC:
                    connected[int(shard)] = sample.value >= 1
                else:
                    subscriptions[int(shard)] = int(sample.value)
    except ValueError:  # a half-written scrape while the service stops
        return None
    return {
        shard: ShardState(connected.get(shard, False), subscriptions.get(shard, 0))
        for shard in sorted(connected.keys() | subscriptions.keys())
    }
