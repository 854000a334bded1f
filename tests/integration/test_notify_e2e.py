"""Issue 19 end to end: the real `kick-monitor run`, the simulator, and a fake Discord.

Go-lives (and ends, `--on both`) are announced once each, within the latency bound, ends after
the flap grace; a stream that drops and comes back within the grace is announced once; the
webhook URL is in no log line, CLI output, metrics scrape or process title. The long runs
(100 streamers with kills of the notifier and of the whole tree, a 429 storm) are `slow`.
"""

from __future__ import annotations

import os
import random
import signal
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import psycopg2.extensions
import pytest

from kick_monitor.notify_targets import add_target
from kick_sim import SimStreamer, Simulator
from kick_sim.chat_endpoint import ChatEndpoint, Received
from kick_tools.harness import free_port
from tests.service import Service, alive, insert_streamers, query, running, service_env, wait_until

pytestmark = pytest.mark.timeout(300)

HOOK = "alerts"


@pytest.fixture
def chat() -> Iterator[ChatEndpoint]:
    with ChatEndpoint() as endpoint:
        yield endpoint


def make_service(sim: Simulator, url: str, tmp_path: Path, **settings: str) -> Service:
    settings = {"notify_regrace": "2", "notify_max_age": "600", **settings}
    return Service(service_env(sim, url, tmp_path / "data", **settings), tmp_path / "service.log")


def notifier_pid(service: Service) -> int | None:
    return next((pid for pid, title in service.children().items() if "notifier" in title), None)


def announced(chat: ChatEndpoint, event: str = "live") -> Counter[str]:
    """slug -> messages delivered for `event` (from the Discord embed's link)."""
    found: Counter[str] = Counter()
    for message in chat.delivered(HOOK):
        embed = message.body["embeds"][0]
        is_live = "live on Kick" in embed["title"]
        if is_live == (event == "live"):
            found[embed["url"].rsplit("/", 1)[1]] += 1
    return found


def live_arrivals(chat: ChatEndpoint) -> dict[str, Received]:
    return {m.body["embeds"][0]["url"].rsplit("/", 1)[1]: m for m in chat.delivered(HOOK)
            if "live on Kick" in m.body["embeds"][0]["title"]}


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def setup(sim: Simulator, conn: psycopg2.extensions.connection, chat: ChatEndpoint, count: int,
          on: str = "both") -> list[SimStreamer]:
    streamers = sim.create_streamers(count, prefix="nt")
    insert_streamers(conn, streamers)
    add_target(conn, chat.url(HOOK), kind="discord", on=on)
    return streamers


def test_go_lives_and_ends_are_announced_once_and_a_flap_once(
    sim: Simulator, conn: psycopg2.extensions.connection, database_url: str, chat: ChatEndpoint, tmp_path: Path,
    cli: object,
) -> None:
    streamers = setup(sim, conn, chat, 8)
    port = free_port()
    service = make_service(sim, database_url, tmp_path, metrics_port=str(port))
    with running(service):
        service.wait_children(1)
        wait_until(lambda: notifier_pid(service) is not None, 20, what="the notifier")
        wait_until(lambda: query(conn, "SELECT count(*) FROM kick_monitor.notify_cursor") == [(1,)], 20,
                   what="the notifier's cursor")
        wait_until(lambda: sim.subscription_count() >= 8, 20, what="subscriptions")
        sent = {s.slug: sim.set_live(s.slug, True).sent_wall for s in streamers}
        wait_until(lambda: len(announced(chat)) == 8, 20, what="8 go-live announcements")
        latencies = [live_arrivals(chat)[slug].at - at for slug, at in sent.items()]
        flapper = streamers[0].slug
        sim.set_live(flapper, False)
        time.sleep(0.3)
        sim.set_live(flapper, True)  # back within the 2 s grace: no offline, no second go-live
        for s in streamers[1:]:
            sim.set_live(s.slug, False)
        wait_until(lambda: len(announced(chat, "offline")) == 7, 20, what="7 offline announcements")
        time.sleep(3.0)  # past the grace of the flap
        assert announced(chat, "offline")[flapper] == 0
        sim.set_live(flapper, False)
        wait_until(lambda: announced(chat, "offline")[flapper] == 1, 20, what="the flapper's end")
        time.sleep(1.0)
        scrape = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        titles = " ".join(open(f"/proc/{pid}/cmdline", "rb").read().decode(errors="replace")
                          for pid in [service.pid, *service.children()] if alive(pid))
        listed = cli("notify", "list")  # type: ignore[operator]
    assert set(announced(chat).values()) == {1}, announced(chat)
    assert set(announced(chat, "offline").values()) == {1}, announced(chat, "offline")
    print("go-live latencies", sorted(round(x, 4) for x in latencies))
    assert max(latencies) < 1.0, latencies
    assert 'kick_monitor_notify_deliveries_total{kind="discord",outcome="sent"} 16.0' in scrape
    assert "kick_monitor_notify_delivery_latency_seconds_bucket" in scrape
    assert "16" in listed.stdout and "discord" in listed.stdout
    token = chat.token(HOOK)
    for text, where in ((service.log_text(), "the log"), (scrape, "the metrics"), (titles, "process titles"),
                        (listed.stdout + listed.stderr, "notify list")):
        assert token not in text, f"the webhook token appears in {where}"
    skipped = query(conn, "SELECT event, last_error FROM kick_monitor.notify_deliveries WHERE state = 'skipped'")
    assert sorted(e for e, _ in skipped) == ["live", "offline"] and all("flap" in why for _, why in skipped)
