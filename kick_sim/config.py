"""Simulator settings: one frozen dataclass, validated once at construction.

Every behaviour of Kick that public sources disagree on (which channel carries lifecycle
events, how subscription errors look, activity timeouts) is a field here rather than a
guess baked into the servers.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from kick_sim.data import CAPTURED_FRAMES
from kick_sim.webhook_settings import DeliverySettings, WebhookFaults

LifecycleChannels = Literal["dot", "underscore", "both"]
SubscriptionErrorStyle = Literal["subscription_error", "pusher_error"]
# "today": Kick as a server sees it since mid-2026 (web API behind Cloudflare, v1 livestreams
# deprecated); "classic": the older, open behaviour, for tests that need a reachable web API.
Profile = Literal["today", "classic"]
LivestreamsV1Mode = Literal["ok", "deprecated", "404", "410"]
LIVESTREAMS_V1_MODES: tuple[str, ...] = ("ok", "deprecated", "404", "410")

KICK_APP_KEY = "32cbd69e4b950bf97679"
# Fake credentials for tests and benchmarks: they open nothing but this simulator.
TEST_CLIENT_ID = "sim-client-id"
TEST_CLIENT_SECRET = "sim-client-secret"
NOISE_FILE_ENV = "KICK_SIM_NOISE_FILE"
PUSHER_QUERY = "protocol=7&client=js&version=8.4.0&flash=false"


def default_noise_file() -> Path:
    """Locate the captured Kick frames: $KICK_SIM_NOISE_FILE, else the copy shipped in the package."""
    env = os.environ.get(NOISE_FILE_ENV)
    if env:
        return Path(env)
    return CAPTURED_FRAMES


def is_loopback(host: str) -> bool:
    """True for names and addresses that never leave this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(url: str) -> tuple[str, int, str]:
    """(host, port, path) of an http:// URL on loopback; ValueError with one clear line otherwise."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"webhook URL must be http://HOST[:PORT]/PATH on loopback, got {url!r}")
    if not is_loopback(parts.hostname):
        raise ValueError(f"webhook URL must point at loopback (127.0.0.1, ::1, localhost), got {parts.hostname!r}")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return parts.hostname, parts.port or 80, path


def url_host(host: str) -> str:
    """Host part for URLs: a wildcard bind is reached through loopback, IPv6 in brackets."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


@dataclass(frozen=True, slots=True)
class SimConfig:
    """Everything the simulator can be told at start; runtime faults live on Simulator."""

    app_key: str = KICK_APP_KEY
    host: str = "127.0.0.1"
    port: int = 0  # Pusher websocket; 0 lets the OS choose
    http_port: int = 0  # official API, OAuth and the unofficial web API
    control_port: int = 0  # control API (loopback only unless force_public_control)
    activity_timeout: int = 120  # advertised in pusher:connection_established
    # Close a client with 4201 after this many seconds without a frame from it;
    # None = activity_timeout + 30 (pusher-js' pong timeout).
    idle_timeout: float | None = None
    server_pings: bool = True  # send pusher:ping to clients silent for activity_timeout
    protocols: tuple[int, ...] = (7,)
    lifecycle_channels: LifecycleChannels = "both"
    subscription_error_style: SubscriptionErrorStyle = "subscription_error"
    client_id: str = TEST_CLIENT_ID
    client_secret: str = TEST_CLIENT_SECRET
    token_ttl: float = 3600.0
    max_batch: int = 50  # most slugs/user ids one official API request may carry
    rate_limit: tuple[int, float] | None = None  # (requests, per_seconds) or no limit
    api_delay: float = 5.0  # how long "slow" API mode waits before answering
    noise_rate: float = 0.0  # background chat/goal frames per second
    noise_file: str | None = None  # captured frames; None = default_noise_file()
    seed: int | None = 1
    force_public_control: bool = False
    profile: Profile = "today"
    # None = what the profile says (today: "deprecated"; classic: "ok").
    livestreams_v1: LivestreamsV1Mode | None = None
    # None = what the profile says (today: blocked by Cloudflare; classic: open).
    web_api_blocked: bool | None = None
    # "Wrong data in big batches": a channels request naming more than this many streamers
    # gets wrong live data for some of its items (None = never).
    wrong_data_over: int | None = None
    # Events API (issue 16): most subscriptions the app may hold ("event subscription limit
    # reached" beyond it; Kick's are reported between 1,000 and 10,000).
    event_subscription_limit: int = 10_000
    # The webhook signing key (PEM, RSA): loaded if the file exists, else generated at first
    # use and written there (0600); None = generated, held in memory only.
    webhook_key_file: str | None = None
    # Where webhooks are delivered (http:// on loopback); None = no deliveries until set at runtime.
    webhook_url: str | None = None
    webhook_delivery: DeliverySettings = field(default_factory=DeliverySettings)
    webhook_faults: WebhookFaults = field(default_factory=WebhookFaults)

    def __post_init__(self) -> None:
        if not self.app_key:
            raise ValueError("app_key must not be empty")
        for name in ("port", "http_port", "control_port"):
            value = getattr(self, name)
            if not 0 <= value <= 65535:
                raise ValueError(f"{name} must be 0..65535, got {value}")
        if self.lifecycle_channels not in ("dot", "underscore", "both"):
            raise ValueError(f"lifecycle_channels must be dot|underscore|both, got {self.lifecycle_channels!r}")
        if self.subscription_error_style not in ("subscription_error", "pusher_error"):
            raise ValueError(f"bad subscription_error_style {self.subscription_error_style!r}")
        if self.activity_timeout <= 0 or self.token_ttl <= 0 or self.effective_idle_timeout <= 0:
            raise ValueError("activity_timeout, idle_timeout and token_ttl must be positive")
        if self.noise_rate < 0 or self.api_delay < 0 or self.max_batch < 1:
            raise ValueError("noise_rate and api_delay must be >= 0, max_batch >= 1")
        if self.rate_limit is not None and (self.rate_limit[0] < 1 or self.rate_limit[1] <= 0):
            raise ValueError("rate_limit must be (requests >= 1, per_seconds > 0)")
        if self.profile not in ("today", "classic"):
            raise ValueError(f"profile must be today|classic, got {self.profile!r}")
        if self.livestreams_v1 is not None and self.livestreams_v1 not in LIVESTREAMS_V1_MODES:
            raise ValueError(f"livestreams_v1 must be one of {LIVESTREAMS_V1_MODES}, got {self.livestreams_v1!r}")
        if self.webhook_url is not None:
            check_url(self.webhook_url)
        if self.event_subscription_limit < 0:
            raise ValueError("event_subscription_limit must be >= 0")
        if self.wrong_data_over is not None and self.wrong_data_over < 1:
            raise ValueError("wrong_data_over must be >= 1 or None")
        if not self.force_public_control and not is_loopback(self.host):
            raise ValueError(
                f"refusing to serve the control API on non-loopback host {self.host!r}; "
                "set force_public_control=True (--force-public-control) to override"
            )

    @property
    def effective_idle_timeout(self) -> float:
        """Silence after which a client is closed with 4201."""
        return self.idle_timeout if self.idle_timeout is not None else self.activity_timeout + 30.0

    @property
    def effective_livestreams_v1(self) -> str:
        """How /public/v1/livestreams answers at start."""
        if self.livestreams_v1 is not None:
            return self.livestreams_v1
        return "deprecated" if self.profile == "today" else "ok"

    @property
    def effective_web_api_blocked(self) -> bool:
        """Whether kick.com/api/v2 answers Cloudflare blocks from the start."""
        if self.web_api_blocked is not None:
            return self.web_api_blocked
        return self.profile == "today"

    @property
    def noise_path(self) -> Path:
        """Where the captured frames for noise replay are read from."""
        return Path(self.noise_file) if self.noise_file else default_noise_file()
