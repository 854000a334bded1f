"""In-process, thread-safe front end: the simulator's loop runs in a background thread.

Every public method is synchronous, may be called from any thread except the simulator's
own, and returns after its action took effect (frames are in the sockets, state changed):

    with Simulator(SimConfig(activity_timeout=5)) as sim:
        (streamer,) = sim.create_streamers(1)
        sim.set_live(streamer.slug, True)
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Awaitable, Callable
from dataclasses import replace
from types import TracebackType
from typing import Any, Self, TypeVar

from kick_sim.config import SimConfig
from kick_sim.engine import Engine
from kick_sim.event_subscriptions import EventSubscription
from kick_sim.state import Broadcast, SimStreamer, Transition, export_truth
from kick_sim.webhook_settings import WebhookFaults
from kick_sim.webhook_signing import WebhookSigner
from kick_sim.webhooks import DeliveryAttempt, WebhookMessage

T = TypeVar("T")
CALL_TIMEOUT = 120.0


class Simulator:
    """Kick's Pusher app, REST API, OAuth and web API on loopback, plus fault controls."""

    def __init__(self, config: SimConfig | None = None) -> None:
        self.config = config or SimConfig()
        self._engine: Engine | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop_event: asyncio.Event | None = None
        self._startup_error: BaseException | None = None
        self._urls: dict[str, str] = {}

    def start(self) -> None:
        """Start the loop thread; returns once every port listens (raises if one cannot bind)."""
        if self._thread is not None:
            raise RuntimeError("simulator already started")
        self._thread = threading.Thread(target=self._run, name="kick-sim", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._engine is None:
            self._thread.join()
            raise self._startup_error or RuntimeError("simulator loop died while starting; see the log")

    def stop(self) -> None:
        """Close every connection and server, then join the loop thread. Idempotent."""
        thread, loop, stop_event = self._thread, self._loop, self._stop_event
        if thread is None or loop is None or stop_event is None or not thread.is_alive():
            return
        loop.call_soon_threadsafe(stop_event.set)
        thread.join(timeout=30)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def pusher_url(self) -> str:
        return self._urls["pusher_url"]

    @property
    def api_base_url(self) -> str:
        return self._urls["api_base_url"]

    @property
    def oauth_token_url(self) -> str:
        return self._urls["oauth_token_url"]

    @property
    def web_api_base_url(self) -> str:
        return self._urls["web_api_base_url"]

    @property
    def control_url(self) -> str:
        return self._urls["control_url"]

    def urls(self) -> dict[str, str]:
        return dict(self._urls)

    def create_streamers(self, count: int, prefix: str = "streamer", live_fraction: float = 0.0) -> list[SimStreamer]:
        """Add streamers (slugs `{prefix}_{n}`); initial states are not transitions."""
        return self._call(lambda: self._core.world.create_streamers(count, prefix, live_fraction))

    def streamers(self) -> list[SimStreamer]:
        return self._call(lambda: [state.streamer for state in self._core.world.states])

    def is_live(self, slug: str) -> bool:
        """The REST truth for one streamer."""
        return self._call(lambda: self._core.world.get(slug).live)

    def set_live(self, slug: str, live: bool, title: str | None = None, send_event: bool = True) -> Transition:
        """Go live/offline; send_event=False is the "missed event" case (REST changes, no frame)."""
        return self._call(lambda: self._core.set_live(slug, live, title, send_event))

    def update_title(self, slug: str, title: str, send_event: bool = True) -> Transition:
        """LivestreamUpdated for a live streamer; recorded in truth() with status unchanged."""
        return self._call(lambda: self._core.update_title(slug, title, send_event))

    def start_flipping(
        self,
        rate: float = 200.0,
        duration: float | None = None,
        burst: int | None = None,
        spacing: str = "poisson",
        missed_fraction: float = 0.0,
    ) -> None:
        """Random flips at `rate`/s (groups of `burst` back to back); replaces a running flipper."""
        self._call(lambda: self._core.start_flipping(rate, duration, burst, spacing, missed_fraction))

    def stop_flipping(self) -> int:
        """Stop flipping; returns the number of flips made so far."""
        return self._call(self._core.flipper.stop)

    def wait_flipping_done(self, timeout: float | None = None) -> bool:
        """Block until the flipper's duration ran out; False on timeout."""

        async def wait() -> bool:
            try:
                await asyncio.wait_for(self._core.flipper.wait_done(), timeout)
            except TimeoutError:
                return False
            return True

        return self._await(wait, timeout=None)

    def set_noise_rate(self, rate: float) -> None:
        """Background chat/goal frames per second (0 stops them)."""
        self._call(lambda: self._core.noise.set_rate(rate))

    def drop_connections(self, count: int | None = None) -> int:
        """Abort all (or `count` random) Pusher TCP connections without a close frame."""
        return self._call(lambda: self._core.pusher.drop(count))

    def send_pusher_error(
        self,
        code: int = 4200,
        message: str = "Please reconnect immediately",
        close: bool = True,
        count: int | None = None,
    ) -> int:
        """pusher:error {code, message} then close with `code`, to all (or `count`) non-silent sockets."""
        return self._await(lambda: self._core.pusher.send_error(code, message, close, count))

    def send_malformed(self, kind: str) -> int:
        """Send malformed frames of `kind` to every non-silent socket; returns frames sent."""
        return self._call(lambda: self._core.send_malformed(kind))

    def set_silent(self, silent: bool = True) -> int:
        """Mute current sockets (no pong, no frames at all); new sockets stay normal."""
        return self._call(lambda: self._core.pusher.set_silent(silent))

    def refuse_connections(self, refuse: bool = True) -> None:
        """While set, websocket handshakes get HTTP 503."""
        self._call(lambda: self._core.pusher.refuse(refuse))

    def set_api_mode(
        self,
        mode: str | None,
        surface: str = "all",
        error_status: int = 500,
        retry_after: int = 1,
        cloudflare_body: str = "html",
    ) -> None:
        """None | "error_500" | "rate_limit" | "cloudflare_403" | "slow" for all or one surface."""
        self._call(lambda: self._core.faults.set_mode(mode, surface, error_status, retry_after, cloudflare_body))

    def set_api_delay(self, seconds: float) -> None:
        """How long each answer waits in "slow" mode."""
        self._call(lambda: self._core.faults.set_delay(seconds))

    def set_rate_limit(self, requests: int | None, per_seconds: float = 60.0) -> None:
        """Answer 429 + Retry-After beyond `requests` per `per_seconds`; None removes the limit."""
        self._call(lambda: self._core.faults.set_rate_limit(requests, per_seconds))

    def set_livestreams_v1(self, mode: str) -> None:
        """/public/v1/livestreams: "ok", "deprecated" (Deprecation header), "404" or "410"."""
        self._call(lambda: self._core.api.set_livestreams_v1(mode))

    def set_wrong_data_over(self, over: int | None, kind: str = "live") -> None:
        """Channels requests naming more than `over` streamers get wrong data (None = off).

        kind "live": inverted live data for every second item (Kick's reported big-batch bug);
        "ids": the answer also names a streamer not asked for and one item twice.
        """
        self._call(lambda: self._core.api.set_wrong_data_over(over, kind))

    def api_arrivals(self, surface: str | None = "official") -> list[float]:
        """Monotonic arrival times of API requests (of one surface, or all), oldest first."""
        return self._call(lambda: [t for t, s in self._core.api.arrivals if surface in (None, s)])

    def broadcasts(self) -> list[Broadcast]:
        """Every broadcast started so far (uuid, livestream id, start, end), in start order."""
        return self._call(lambda: [Broadcast(**vars_of(b)) for b in self._core.world.broadcasts])

    def expire_tokens(self) -> int:
        return self._call(self._core.tokens.expire_all)

    def revoke_secret(self, revoked: bool = True) -> None:
        """While revoked, the token endpoint answers 401 invalid_client; issued tokens stay valid."""
        self._call(lambda: self._core.tokens.revoke(revoked))

    def rotate_secret(self, client_secret: str) -> None:
        """Kick's "regenerate secret": from now on only `client_secret` gets tokens (401 for the old one)."""
        self._call(lambda: self._core.tokens.rotate(client_secret))

    def set_token_ttl(self, seconds: float) -> None:
        self._call(lambda: self._core.tokens.set_ttl(seconds))

    def connection_count(self) -> int:
        return self._call(lambda: len(self._core.pusher.clients))

    def subscription_count(self) -> int:
        return self._call(lambda: self._core.pusher.index.total)

    def subscribed_channels(self) -> set[str]:
        return self._call(lambda: set(self._core.pusher.index.channels))

    # issue 17: every subscribe/unsubscribe as the server applied it, to measure hand-over gaps
    def record_subscriptions(self, on: bool = True) -> None:
        """Start (afresh) or stop recording `subscription_journal()`."""
        def switch() -> None:
            self._core.pusher.index.journal = [] if on else None
        self._call(switch)

    def subscription_journal(self) -> list[tuple[float, str, int, int, str]]:
        """(wall time, channel, +1 subscribed / -1 gone, subscribers after it, socket id), in order."""
        return self._call(lambda: list(self._core.pusher.index.journal or ()))

    def truth(self) -> list[Transition]:
        """Every transition so far, in order."""
        return self._call(lambda: list(self._core.world.truth))

    def export_truth(self, path: str | os.PathLike[str]) -> int:
        """Write truth() as JSON lines (written from the calling thread); returns the count."""
        return export_truth(self.truth(), path)

    def stats(self) -> dict[str, Any]:
        return self._call(self._core.stats)

    # --- Events API (issue 16) ---

    def event_subscriptions(self, user_id: int | None = None) -> list[EventSubscription]:
        """The app's webhook subscriptions (all, or one broadcaster's), oldest first."""
        return self._call(lambda: self._core.event_subscriptions.list_all(user_id))

    def drop_event_subscriptions(self, count: int) -> list[str]:
        """Kick dropping `count` random subscriptions on its own; returns their ids."""
        return self._call(lambda: self._core.drop_event_subscriptions(count))

    @property
    def webhook_signer(self) -> WebhookSigner:
        """The key the simulator signs deliveries with (thread-safe): `.sign(id, ts, body)`,
        `.public_key_pem()`, `.private_key_pem()`, for tests that forge deliveries of their own."""
        return self._core.signer

    def set_event_subscription_limit(self, limit: int) -> None:
        """Most subscriptions the app may hold; more answer "event subscription limit reached"."""
        self._call(lambda: self._core.event_subscriptions.set_limit(limit))

    def set_webhook_url(self, url: str | None) -> None:
        """Deliver webhooks to `url` (http:// on loopback) from now on; None stops making them."""
        self._core.signer.private_key  # noqa: B018 - make the key here, not on the first sender
        self._core.webhooks.set_url(url)

    def set_webhook_faults(self, faults: WebhookFaults | None = None, **changes: Any) -> WebhookFaults:
        """Replace the faults (`faults`), or change some (`drop=0.1, delay=(2, 60)`); returns them."""
        deliverer = self._core.webhooks
        updated = (faults or deliverer.faults).updated(changes) if changes else (faults or WebhookFaults())
        deliverer.set_faults(updated)
        return updated

    def webhook_messages(self, since: int = 0) -> list[WebhookMessage]:
        """Every message made (one per event per subscription), in order, as copies."""
        return [replace(message) for message in self._core.webhooks.snapshot_messages(since)]

    def webhook_attempts(self, since: int = 0) -> list[DeliveryAttempt]:
        """Every POST tried (sends, retries, duplicates, replays) with its outcome, in order."""
        return self._core.webhooks.snapshot_attempts(since)

    def webhook_unsubscribed(self) -> list[str]:
        """Subscription ids Kick dropped on its own after failed deliveries."""
        return list(self._core.webhooks.unsubscribed)

    def replay_webhooks(self, message_ids: list[str] | None = None, count: int = 1) -> list[str]:
        """Re-send delivered messages now, unchanged (old timestamp and signature)."""
        return self._core.webhooks.replay(message_ids, count)

    def wait_webhooks_idle(self, timeout: float | None = 30.0) -> bool:
        """Block until no message is queued, held back, retrying or in flight; False on timeout."""
        return self._core.webhooks.wait_idle(timeout)

    @property
    def _core(self) -> Engine:
        assert self._engine is not None, "simulator not started"
        return self._engine

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        finally:
            self._ready.set()  # never leave start() waiting, even if the loop crashed

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        engine = Engine(self.config)
        try:
            await engine.start()
        except (OSError, ValueError) as exc:  # a port in use, a missing noise file
            self._startup_error = exc
            await engine.stop()
            return
        self._engine = engine
        self._urls = engine.urls()
        self._ready.set()
        try:
            await self._stop_event.wait()
        finally:
            await engine.stop()

    def _call(self, fn: Callable[[], T]) -> T:
        """Run a plain function on the loop thread and return its result (or raise its error)."""

        async def invoke() -> T:
            return fn()

        return self._await(invoke)

    def _await(self, make: Callable[[], Awaitable[T]], timeout: float | None = CALL_TIMEOUT) -> T:
        loop = self._loop
        if loop is None or self._engine is None:
            raise RuntimeError("simulator not started")
        if threading.current_thread() is self._thread:
            raise RuntimeError("Simulator methods must not be called from the simulator's own thread")

        async def run() -> T:
            return await make()

        return asyncio.run_coroutine_threadsafe(run(), loop).result(timeout)


def vars_of(broadcast: Broadcast) -> dict[str, Any]:
    """A broadcast's fields (slots dataclass: no __dict__), for a copy the caller may keep."""
    return {name: getattr(broadcast, name) for name in Broadcast.__dataclass_fields__}
