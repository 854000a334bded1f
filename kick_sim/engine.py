"""The simulator's core on its event loop: wires world, servers and generators together.

Everything here runs on the loop thread. `Simulator` (in-process, thread-safe) and the
control HTTP API (out-of-process) are two thin front ends over these same methods.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from typing import Any

from kick_sim.api_faults import ApiFaults
from kick_sim.config import PUSHER_QUERY, SimConfig, url_host
from kick_sim.control_api import ControlApi
from kick_sim.event_subscriptions import (
    METADATA_UPDATED,
    STATUS_UPDATED,
    EventSubscriptionsApi,
    EventSubscriptionStore,
)
from kick_sim.events import (
    LIVESTREAM_UPDATED,
    STOP_STREAM_BROADCAST,
    STREAMER_IS_LIVE,
    encode_frame,
    lifecycle_channels,
    livestream_updated_data,
    stop_stream_data,
    streamer_is_live_data,
)
from kick_sim.http_api import KickApi
from kick_sim.http_server import HttpServer
from kick_sim.malformed import MALFORMED_KINDS, malformed_frames, pick_channel
from kick_sim.pusher_server import Client, PusherServer
from kick_sim.scenarios import Flipper, NoiseReplayer
from kick_sim.state import (
    OFFLINE,
    ONLINE,
    SimError,
    StreamerState,
    Transition,
    World,
)
from kick_sim.tokens import TokenStore
from kick_sim.webhook_payloads import metadata_updated_body, status_updated_body
from kick_sim.webhook_signing import WebhookSigner
from kick_sim.webhooks import WebhookDeliverer


def _rng(seed: int | None, stream: str) -> random.Random:
    """Independent seeded streams, so e.g. noise never changes which streamer flips next."""
    return random.Random(f"{seed}:{stream}") if seed is not None else random.Random()


class Engine:
    """Owns every server and generator; see Simulator for the public, thread-safe API."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.world = World(_rng(config.seed, "world"))
        self.pusher = PusherServer(config, _rng(config.seed, "pusher"))
        self.tokens = TokenStore(config.client_id, config.client_secret, config.token_ttl)
        self.faults = ApiFaults(config.api_delay, config.rate_limit)
        self.event_subscriptions = EventSubscriptionStore(
            _rng(config.seed, "event_subscriptions"), config.event_subscription_limit
        )
        self._drop_rng = _rng(config.seed, "event_subscription_drops")
        self.signer = WebhookSigner(config.webhook_key_file)
        self.webhooks = WebhookDeliverer(
            self.event_subscriptions, self.signer, _rng(config.seed, "webhooks"),
            config.webhook_delivery, config.webhook_faults,
        )
        self.api = KickApi(
            self.world, self.tokens, self.faults, config.max_batch,
            config.effective_livestreams_v1, config.wrong_data_over,
            events=EventSubscriptionsApi(self.event_subscriptions, self.world),
            public_key_pem=self.signer.public_key_pem,
        )
        if config.effective_web_api_blocked:  # today's Kick: kick.com/* wants a Cloudflare clearance
            self.faults.set_mode("cloudflare_403", surface="web", cloudflare_body="mixed")
        self.flipper = Flipper(self.flip_random, _rng(config.seed, "flips"))
        self.noise = NoiseReplayer(
            config.noise_path, self.pusher.index.sample, self.world, self._publish_noise, _rng(config.seed, "noise")
        )
        self._api_server = HttpServer(self.api.handle, config.host, config.http_port, "kick-api")
        self._control_server = HttpServer(ControlApi(self).handle, config.host, config.control_port, "control")

    async def start(self) -> None:
        """Bind every port; noise starts if configured; the signing key is made before any delivery."""
        if self.config.webhook_url is not None:
            await asyncio.to_thread(lambda: self.signer.private_key)
            self.webhooks.set_url(self.config.webhook_url)
        await self.pusher.start()
        await self._api_server.start()
        await self._control_server.start()
        if self.config.noise_rate > 0:
            self.noise.set_rate(self.config.noise_rate)

    async def stop(self) -> None:
        self.flipper.stop()
        self.noise.set_rate(0)
        await self.pusher.stop()
        await self._api_server.stop()
        await self._control_server.stop()
        await asyncio.to_thread(self.webhooks.stop)

    def urls(self) -> dict[str, str]:
        """Where each part listens, for clients and for --ready-file."""
        host = url_host(self.config.host)
        api = f"http://{host}:{self._api_server.port}"
        return {
            "pusher_url": f"ws://{host}:{self.pusher.port}/app/{self.config.app_key}?{PUSHER_QUERY}",
            "api_base_url": api,
            "oauth_token_url": f"{api}/oauth/token",
            "web_api_base_url": api,
            "control_url": f"http://{host}:{self._control_server.port}",
        }

    def set_live(self, slug: str, live: bool, title: str | None = None, send_event: bool = True) -> Transition:
        """Flip one streamer; send_event=False changes only the REST truth (a missed event)."""
        state = self.world.get(slug)
        if state.live == live:
            raise SimError(f"{slug} is already {ONLINE if live else OFFLINE}")
        return self._toggle(state, title, send_event)

    def update_title(self, slug: str, title: str, send_event: bool = True) -> Transition:
        """A title change while live: LivestreamUpdated, recorded in the truth log too."""
        state = self.world.get(slug)
        if not state.live:
            raise SimError(f"{slug} is offline; only a live stream has a title to update")
        state.title = title
        return self._announce(state, ONLINE, LIVESTREAM_UPDATED, livestream_updated_data, send_event)

    def flip_random(self, send_event: bool) -> None:
        """Toggle a random streamer (the flipper's unit of work)."""
        self._toggle(self.world.random_state(), None, send_event)

    def start_flipping(
        self,
        rate: float,
        duration: float | None = None,
        burst: int | None = None,
        spacing: str = "poisson",
        missed_fraction: float = 0.0,
    ) -> None:
        """Start random flips (see Flipper.start); there must be streamers to flip."""
        if not self.world.states:
            raise SimError("no streamers: create some before flipping")
        self.flipper.start(rate, duration, burst, spacing, missed_fraction)

    def send_malformed(self, kind: str) -> int:
        """Send every non-silent socket the malformed frames of `kind`; returns frames sent."""
        if kind not in MALFORMED_KINDS:
            raise SimError(f"kind must be one of {MALFORMED_KINDS}")
        stranger = self.world.unknown_channel_id()

        def build(client: Client) -> list[bytes]:
            return malformed_frames(kind, pick_channel(client.channels, f"channel.{stranger}"), stranger)

        return self.pusher.push_each(build, "malformed")

    def drop_event_subscriptions(self, count: int) -> list[str]:
        """Kick removing `count` random subscriptions by itself (as after failed deliveries)."""
        return self.event_subscriptions.drop_random(count, self._drop_rng)

    def stats(self) -> dict[str, Any]:
        """Counters for benchmarks and for humans watching a long run."""
        truth = self.world.truth
        return {
            "connections": len(self.pusher.clients),
            "connections_total": self.pusher.connections_total,
            "connections_refused": self.pusher.connections_refused,
            "slow_consumers_dropped": self.pusher.slow_consumers_dropped,
            "subscriptions": self.pusher.index.total,
            "channels": len(self.pusher.index.channels),
            "frames_sent": dict(self.pusher.frames_sent),
            "transitions": len(truth),
            "transitions_delivered": sum(1 for transition in truth if transition.delivered),
            "streamers": len(self.world.states),
            "live": self.world.live_count,
            "flipping": self.flipper.running,
            "flips": self.flipper.flips,
            "noise": {"rate": self.noise.rate, "frames": self.noise.frames, "skipped": self.noise.skipped},
            "api_requests": dict(self.api.requests),
            "api_modes": dict(self.faults.modes),
            "api_paths": dict(self.api.paths),
            "profile": self.config.profile,
            "livestreams_v1": self.api.livestreams_v1,
            "wrong_data_over": self.api.wrong_data_over,
            "broadcasts": len(self.world.broadcasts),
            "tokens_issued": self.tokens.issued_total,
            "tokens_refused": self.tokens.refused_total,
            "event_subscriptions": len(self.event_subscriptions),
            "event_subscriptions_dropped": self.event_subscriptions.dropped_total,
            "webhooks": self.webhooks.stats(),
        }

    def _toggle(self, state: StreamerState, title: str | None, send_event: bool) -> Transition:
        if state.live:
            self.world.end_stream(state)
            return self._announce(state, ONLINE, STOP_STREAM_BROADCAST, stop_stream_data, send_event)
        self.world.start_stream(state, title)
        return self._announce(state, OFFLINE, STREAMER_IS_LIVE, streamer_is_live_data, send_event)

    def _announce(
        self,
        state: StreamerState,
        previous_status: str,
        event: str,
        payload: Callable[[StreamerState], str],
        send_event: bool,
    ) -> Transition:
        """Publish the event (one encode per channel, shared by all subscribers) and record it."""
        sent = (time.time(), time.monotonic())
        recipients = 0
        channels: tuple[str, ...] = ()
        if send_event:
            channels = lifecycle_channels(state.streamer.channel_id, self.config.lifecycle_channels)
            data = payload(state)
            for channel in channels:
                recipients += self.pusher.publish(channel, encode_frame(event, data, channel), "lifecycle")
        transition = self.world.record(state, previous_status, event, sent, recipients, channels)
        self._queue_webhook(state, event, transition.seq)
        return transition

    def _queue_webhook(self, state: StreamerState, event: str, truth_seq: int) -> None:
        """The Events API side of a change: sent whether or not Pusher carried it (its own path)."""
        user_id = state.streamer.user_id
        if event == LIVESTREAM_UPDATED:
            if self.event_subscriptions.find(user_id, METADATA_UPDATED) is not None:
                self.webhooks.enqueue(user_id, METADATA_UPDATED, metadata_updated_body(state), truth_seq)
        elif self.event_subscriptions.find(user_id, STATUS_UPDATED) is not None:
            self.webhooks.enqueue(user_id, STATUS_UPDATED, status_updated_body(state), truth_seq)

    def _publish_noise(self, channel: str, frame: bytes) -> int:
        return self.pusher.publish(channel, frame, "noise")
