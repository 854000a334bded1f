"""The receiver against the simulator's webhooks (slow): Kick's side played by `kick_sim` — its own
key pair served at /public/v1/public-key (the receiver fetches it at start), its signed
deliveries with retries, duplicates and corrupted signatures — and the real service, Pusher off
and no API credentials, so webhooks are the only source of status."""

from __future__ import annotations

import time
from pathlib import Path

import psycopg2.extensions
import pytest
import requests

from kick_monitor.webhook_events import STATUS_EVENT
from kick_sim import DeliverySettings, SimConfig, Simulator, WebhookFaults
from kick_sim.config import TEST_CLIENT_ID, TEST_CLIENT_SECRET
from kick_tools import harness
from tests.integration.test_webhook_receiver import PATH, healthy
from tests.service import Service, insert_streamers, query, running, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


@pytest.fixture
def webhook_port(free_port: object) -> int:
    return int(free_port())  # type: ignore[operator]


@pytest.fixture
def sim_config(webhook_port: int) -> SimConfig:
    return SimConfig(
        webhook_url=f"http://127.0.0.1:{webhook_port}{PATH}",
        webhook_delivery=DeliverySettings(retry_base=0.2, retry_max=1.0),
        webhook_faults=WebhookFaults(duplicate=0.2, corrupt=0.2),
    )


def subscribe_status(sim: Simulator, user_ids: list[int]) -> None:
    """What the subscription sync does (another helper's part): status events of these broadcasters."""
    token = requests.post(sim.oauth_token_url, timeout=5, data={
        "grant_type": "client_credentials", "client_id": TEST_CLIENT_ID, "client_secret": TEST_CLIENT_SECRET,
    }).json()["access_token"]
    for user_id in user_ids:
        answer = requests.post(
            f"{sim.api_base_url}/public/v1/events/subscriptions", timeout=5,
            json={"broadcaster_user_id": user_id, "events": [{"name": STATUS_EVENT, "version": 1}],
                  "method": "webhook"},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert answer.status_code == 200, answer.text


def test_the_simulators_signed_deliveries_land_exactly_once(
    sim: Simulator, conn: psycopg2.extensions.connection, database_url: str, tmp_path: Path, webhook_port: int
) -> None:
    streamers = sim.create_streamers(30)
    insert_streamers(conn, streamers)
    subscribe_status(sim, [s.user_id for s in streamers])
    env = harness.service_env(
        {**sim.urls(), "pusher_url": "off"}, database_url, tmp_path / "data",
        settings={"heartbeat_timeout": "10", "reload_interval": "5", "webhook_port": str(webhook_port)},
    )
    for name in ("KICK_MONITOR_CLIENT_ID", "KICK_MONITOR_CLIENT_SECRET"):
        env.pop(name, None)  # no reconciliation: the webhooks alone must get it right
    service = Service(env, tmp_path / "service.log")
    with running(service):
        wait_until(lambda: healthy(webhook_port), 20, what="the webhook receiver")
        went_live, went_offline = streamers[:20], streamers[:10]
        for s in went_live:
            sim.set_live(s.slug, True)
        assert sim.wait_webhooks_idle(60)
        time.sleep(0.5)
        for s in went_offline:
            sim.set_live(s.slug, False)
        assert sim.wait_webhooks_idle(60)
        expected = {s.user_id: "online" for s in went_live} | {s.user_id: "offline" for s in went_offline}

        def state() -> dict[int, str]:
            return dict(query(conn, "SELECT kick_user_id, status FROM kick_monitor.streamers"
                                    " WHERE status <> 'unknown'"))

        wait_until(lambda: state() == expected, 20, what="the database to match the simulator")
        log = service.log_text()
        assert f"key: {sim.api_base_url}/public/v1/public-key" in log  # fetched from "Kick" at start
        assert service.stop() == 0
    messages = sim.webhook_messages()
    assert len(messages) == 30 and all(m.state == "delivered" for m in messages)
    attempts = sim.webhook_attempts()
    assert any(a.kind == "duplicate" for a in attempts), "no duplicate was sent: the test did not test it"
    corrupted = [a.status for a in attempts if not a.signature_valid]
    assert corrupted and set(corrupted) == {401}, f"corrupted signatures must be refused: {corrupted}"
    rows = query(conn, "SELECT change_id FROM kick_monitor.status_events WHERE source = 'webhook'")
    assert sorted(change_id for (change_id,) in rows) == sorted(f"webhook:{m.message_id}" for m in messages)
