"""Webhooks end to end across the parts of issue 16: the planner's subscription sync subscribes
every streamer at the simulator, the simulator delivers signed webhooks for the subscribed
broadcasters to the real receiver, which accepts them, and `webhooks status` reports the
subscriptions, the switch and the receiver's URL. Skipped until the receiver role and the
simulator's deliveries are in the tree (they come from other branches of issue 16)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg2.extensions
import pytest

from kick_sim import SimConfig, Simulator
from tests.conftest import CliRunner
from tests.service import Service, insert_streamers, running, service_env, wait_until

pytest.importorskip("workers.webhook_receiver", reason="the webhook receiver role is not in this tree yet")
pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def receiver_port(free_port: Callable[[], int]) -> int:
    return free_port()


@pytest.fixture
def sim(receiver_port: int, tmp_path: Path) -> Iterator[Simulator]:
    import kick_sim

    delivery = getattr(kick_sim, "DeliverySettings", None)
    if delivery is None:
        pytest.skip("the simulator does not deliver webhooks in this tree yet")
    webhooks: dict[str, Any] = {  # keyword arguments of the simulator's webhook deliveries (simhooks)
        "webhook_url": f"http://127.0.0.1:{receiver_port}/webhooks/kick",
        "webhook_key_file": str(tmp_path / "sim-webhook-key.pem"), "webhook_delivery": delivery(retry_base=0.2),
    }
    config = SimConfig(port=0, http_port=0, control_port=0, seed=61, **webhooks)
    with Simulator(config) as simulator:
        yield simulator


def test_subscribed_by_the_sync_delivered_to_the_receiver_reported_by_status(
    sim: Simulator, conn: psycopg2.extensions.connection, database_url: str, tmp_path: Path,
    receiver_port: int, cli: CliRunner,
) -> None:
    streamers = sim.create_streamers(10, prefix="e2e")
    unmonitored = sim.create_streamers(2, prefix="other")  # not in the list: never subscribed, never delivered
    insert_streamers(conn, streamers)
    env = service_env(sim, database_url, tmp_path / "data", shard_count="1", webhook_port=str(receiver_port),
                      api_rate="100", api_burst="50")  # webhook_subscribe=auto: on, since this host receives
    with running(Service(env, tmp_path / "service.log")) as service:
        wait_until(lambda: len(sim.event_subscriptions()) == 20, 20, what="both events of every streamer")
        for streamer in [*streamers[:4], *unmonitored]:
            sim.set_live(streamer.slug, True)
        wait_until(lambda: sim.stats()["webhooks"]["states"].get("delivered", 0) == 4, 20,
                   what="the four subscribed go-lives delivered and accepted (200)")
        assert sim.stats()["webhooks"]["messages"] == 4, "nothing for broadcasters nobody subscribed"
        kick_env: dict[str, str | None] = {key: value for key, value in env.items() if key.startswith("KICK_")}
        status = cli("webhooks", "status", "--json", env=kick_env)
        assert status.code == 0, status.stderr
        doc = json.loads(status.stdout)
        assert doc["subscriptions"] == {"subscribed": 20, "missing": 0, "failed": 0}
        assert doc["sync"]["automatic"] is True and "receiver" in doc["sync"]["why"]
        assert doc["sync"]["last"]["outcome"] == "ok"
        assert doc["receiver"]["url"] == f"http://127.0.0.1:{receiver_port}/webhooks/kick"
        assert "Traceback" not in service.log_text()
