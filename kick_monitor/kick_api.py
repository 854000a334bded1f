"""Kick's REST APIs: the client (OAuth app token, pacing, retries) and id resolution.

The official API (`/public/v1/channels`, app token from OAuth client credentials) is what
reconciliation asks (`kick_monitor.reconcile`) and what resolves a slug to its broadcaster
user id. A channel id (needed only for Pusher) comes from the deprecated
`/public/v1/livestreams` while a streamer is live and while that endpoint still answers
(a 404/410 switches it off for the run, said once), or from the unofficial web API
(`/api/v2/channels/{slug}`) when it happens to be reachable: since 2026-03 Cloudflare
blocks it for servers, so a block is said once and the web API is left alone for
`web_backoff` seconds (hours). Nothing depends on either.

    client = KickApiClient(api_url, token_url, web_url, client_id, SecretStr(secret))
    found = client.resolve_slugs(["xqc", "trainwreckstv"])   # {slug: Resolution}

Thread safety: one client may be used from several threads at once (the worker's main
loop and its reconcile thread). The token cache, the rate limiter, the counters and the
HTTP session each have their own lock; HTTP calls are serialised (pacing spaces them out
anyway). A client carried across `fork()` builds a fresh session in the child, but build
clients after forking. The client secret is a `SecretStr` and the access token a private
attribute: neither is logged, put in an exception or shown by `repr`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Self, TypeVar
from urllib.parse import quote

import requests
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from kick_monitor import __version__
from kick_monitor.ratelimit import (
    RateBudget,
    RetryPolicy,
    TokenBucket,
    backoff_delay,
    parse_retry_after,
)
from kick_monitor.tls import new_session

if TYPE_CHECKING:
    from kick_monitor.config import Settings

log = logging.getLogger(__name__)

MAX_BATCH = 50  # Kick's documented cap on slugs / user ids per official request
# 50-item batches are reported to return wrong live data for about half of the live
# streamers (Kick facts, section 2): the default stays well below.
DEFAULT_BATCH = 25
USERS_LIVESTREAMS_BATCH = 100  # /public/v1/users/livestreams takes up to 100 user ids
V2_PAGE = 1000  # the largest page /public/v2/livestreams serves
WEB_BACKOFF = 6 * 3600.0  # seconds the web API is left alone after a Cloudflare block
TOKEN_ENDPOINT = "/oauth/token"
CHANNELS = "/public/v1/channels"
LIVESTREAMS = "/public/v1/livestreams"
LIVESTREAMS_V2 = "/public/v2/livestreams"
USERS_LIVESTREAMS = "/public/v1/users/livestreams"
WEB_CHANNEL = "/api/v2/channels"  # metrics label; the slug is left out to bound cardinality
EVENT_SUBSCRIPTIONS = "/public/v1/events/subscriptions"  # webhooks (Events API): list, create, delete
DELETE_BATCH = 50  # subscription ids per DELETE (repeated `id=`): keeps the URL short


class KickApiError(Exception):
    """Kick answered something this client cannot use (base of all errors here)."""


class KickAuthError(KickApiError):
    """The client credentials were rejected: fatal, fix the configuration."""


class KickNoCredentialsError(KickAuthError):
    """An official-API call was made without a client id and secret."""


class KickApiUnavailable(KickApiError):
    """Kick failed (5xx, timeouts, network, persistent 429) after bounded retries: try later."""


class KickBlockedError(KickApiError):
    """Cloudflare refused the request (403 JSON or an HTML challenge page)."""


class KickNotFoundError(KickApiError):
    """Kick has no such channel."""


class KickEndpointGone(KickApiError):
    """An endpoint answered 404/410 as a whole (removed upstream): stop using it."""


class KickSubscriptionLimitError(KickApiError):
    """Kick refused a new event subscription: the app's subscription limit is reached.

    Not retried: asking again cannot succeed until subscriptions are removed or Kick
    raises the app's limit (verified apps get more).
    """


# ---------------------------------------------------------------- answers, validated


class _Model(BaseModel):
    """Strict types (no "12" for 12), unknown fields ignored: Kick adds fields freely.

    JSON string values are not cached (`cache_strings="keys"`): pydantic-core's default keeps up to
    16,384 of them (slugs, titles) for the life of the process, ~0.3 MB in every worker (measured,
    tracemalloc); keys repeat, values rarely do."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True, cache_strings="keys")


class StreamInfo(_Model):
    is_live: bool
    start_time: str | None = None
    viewer_count: int | None = None


class ChannelInfo(_Model):
    """One item of `/public/v1/channels`."""

    broadcaster_user_id: int
    slug: str
    stream_title: str | None = None
    stream: StreamInfo

    @property
    def is_live(self) -> bool:
        return self.stream.is_live

    @property
    def started_at(self) -> float | None:
        """Epoch seconds the current stream started; None when offline or unreadable."""
        return parse_time(self.stream.start_time) if self.stream.is_live else None


class LiveStream(_Model):
    """One item of `/public/v1/livestreams` (only live streams are listed)."""

    broadcaster_user_id: int
    channel_id: int
    slug: str | None = None
    stream_title: str | None = None
    started_at: str | None = None


class WebChatroom(_Model):
    id: int


class WebLivestream(_Model):
    id: int
    is_live: bool = True
    session_title: str | None = None
    created_at: str | None = None


class WebChannel(_Model):
    """`/api/v2/channels/{slug}`: the only place that gives an offline channel's ids."""

    id: int  # the channel id Pusher channels are named after
    user_id: int
    slug: str
    chatroom: WebChatroom
    livestream: WebLivestream | None = None


class V2User(_Model):
    id: int
    username: str | None = None


class V2Channel(_Model):
    slug: str


class LiveStreamV2(_Model):
    """One item of `/public/v2/livestreams` or `/public/v1/users/livestreams`."""

    id: str  # a UUID: the first official stream id
    title: str | None = None
    started_at: str | None = None
    broadcaster_user: V2User
    channel: V2Channel | None = None

    @property
    def user_id(self) -> int:
        return self.broadcaster_user.id


class _Pagination(_Model):
    next_cursor: str | None = None


class _LivestreamsV2Answer(_Model):
    data: list[LiveStreamV2]
    pagination: _Pagination | None = None


class _ChannelsAnswer(_Model):
    data: list[ChannelInfo]


class _LivestreamsAnswer(_Model):
    data: list[LiveStream]


class EventSubscription(_Model):
    """One item of `GET /public/v1/events/subscriptions`: a subscription of this app."""

    id: str = Field(min_length=1)
    event: str
    version: int = 1
    broadcaster_user_id: int | None = None
    method: str | None = None


class _SubscriptionsAnswer(_Model):
    data: list[EventSubscription]
    pagination: _Pagination | None = None


class CreatedSubscription(_Model):
    """One item of the answer to `POST /public/v1/events/subscriptions`: made, or why not."""

    name: str | None = None
    version: int | None = None
    subscription_id: str | None = None
    error: str | None = None


class _CreatedAnswer(_Model):
    data: list[CreatedSubscription]


class _TokenAnswer(_Model):
    access_token: str = Field(min_length=1)
    expires_in: float = Field(ge=0)
    token_type: str = "Bearer"


M = TypeVar("M", bound=BaseModel)


def _parse(model: type[M], resp: requests.Response, label: str) -> M:
    """Validate a JSON body; any mismatch becomes one readable KickApiError."""
    try:
        return model.model_validate_json(resp.content)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        raise KickApiError(
            f"malformed answer from {label}: {where}: {first['msg']} ({exc.error_count()} errors)"
        ) from None


def parse_time(text: str | None) -> float | None:
    """ISO 8601 (Kick's `...Z`, `+11:00` or naive UTC) to epoch seconds; None if unusable."""
    if not text:
        return None
    try:
        when = datetime.fromisoformat(text.replace(" ", "T", 1))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    if when.year < 2000:  # Kick sends 0001-01-01 for "never started"
        return None
    return when.timestamp()


# ---------------------------------------------------------------- counters


@dataclass(frozen=True, slots=True)
class ApiStatsSnapshot:
    """Counter values at one moment; `requests` is keyed by (endpoint, status or error)."""

    requests: dict[tuple[str, str], int]
    token_refreshes: int
    retries: int
    rate_limited: int
    throttled_seconds: float
    current_rate: float = 0.0  # requests/s the (shared) budget allows now


class ApiStats:
    """Counters for metrics; updated from any thread, read with `snapshot()`."""

    def __init__(self, bucket: RateBudget) -> None:
        self._lock = threading.Lock()
        self._requests: Counter[tuple[str, str]] = Counter()
        self._counts: Counter[str] = Counter()
        self._bucket = bucket

    def count(self, endpoint: str, outcome: str) -> None:
        with self._lock:
            self._requests[(endpoint, outcome)] += 1

    def add(self, name: str) -> None:
        with self._lock:
            self._counts[name] += 1

    def snapshot(self) -> ApiStatsSnapshot:
        with self._lock:
            return ApiStatsSnapshot(
                requests=dict(self._requests),
                token_refreshes=self._counts["token_refreshes"],
                retries=self._counts["retries"],
                rate_limited=self._counts["rate_limited"],
                throttled_seconds=self._bucket.waited,
                current_rate=self._bucket.current_rate,
            )

    def total(self, endpoint: str | None = None) -> int:
        """Requests sent (to one endpoint, or to all)."""
        with self._lock:
            return sum(n for (ep, _), n in self._requests.items() if endpoint in (None, ep))


# ---------------------------------------------------------------- transport


def _is_cloudflare_block(resp: requests.Response) -> bool:
    """403 challenge/deny pages (HTML or `{"error": ...}`), or a 503 JS challenge."""
    if resp.status_code not in (403, 503):
        return False
    head = resp.content[:4096]
    if resp.headers.get("cf-mitigated") or b"Just a moment" in head:
        return True
    if resp.status_code == 503:  # other 503s are outages: retry them
        return False
    if "html" in resp.headers.get("Content-Type", "").lower() or head.lstrip()[:1] == b"<":
        return True
    return b"Request blocked" in head or b"security policy" in head


def _detail(resp: requests.Response) -> str:
    """Kick's own short error message, if any, for an exception text."""
    try:
        body = resp.json()
    except ValueError:
        return ""
    message = body.get("message") if isinstance(body, dict) else None
    return f": {message[:200]}" if isinstance(message, str) and message.isprintable() else ""


def _refusal(resp: requests.Response) -> str:
    """Why Kick refused a request: `data` when it is a string (the Events API puts the reason
    there, e.g. "event subscription limit reached"), else `message`; printable, ≤ 200 chars."""
    try:
        body = resp.json()
    except ValueError:
        return "no reason given"
    parts = [body.get(key) for key in ("data", "message")] if isinstance(body, dict) else []
    text = "; ".join(part for part in parts if isinstance(part, str) and part.strip())
    return text[:200] if text.isprintable() and text else "no reason given"


def is_limit_message(text: str) -> bool:
    """Kick's "event subscription limit reached" (exact wording undocumented: matched loosely;
    a rate limit is something else, handled by the transport)."""
    lowered = text.lower()
    return "limit" in lowered and "rate limit" not in lowered and "too many requests" not in lowered


def _interruptible_sleep(closed: threading.Event, seconds: float) -> None:
    """Wait, unless the client is closed meanwhile (so shutdown never waits out a 429)."""
    if closed.wait(seconds):
        raise KickApiUnavailable("Kick API client closed")


class _Transport:
    """Paced, retried HTTP on lazily created sessions, one per request in flight.

    requests.Session is not documented as thread-safe, so a session serves one request at a
    time; threads asking at once (the planner's reconcile threads) each take an idle one or a
    new one. As many sessions exist as requests were ever in flight together (at most a thread each).
    """

    def __init__(self, timeout: tuple[float, float], bucket: RateBudget, retry: RetryPolicy,
                 stats: ApiStats, closed: threading.Event) -> None:
        self.timeout = timeout
        self.bucket = bucket
        self.retry = retry
        self.stats = stats
        self._closed = closed
        self._lock = threading.Lock()
        self._idle: list[requests.Session] = []  # sessions in use are held by the thread using them
        self._pid = os.getpid()

    def _http(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        session = self._take_session()
        try:
            return session.request(method, url, timeout=self.timeout, allow_redirects=False, **kwargs)
        finally:
            self._give_back(session)

    def _take_session(self) -> requests.Session:
        if self._pid != os.getpid():  # forked child: never reuse the parent's sockets
            self._lock, self._idle, self._pid = threading.Lock(), [], os.getpid()
        with self._lock:
            if self._closed.is_set():
                raise KickApiUnavailable("Kick API client closed")
            if self._idle:
                return self._idle.pop()
            session = new_session()  # verified HTTPS shares one TLS context (kick_monitor/tls.py)
            session.headers["User-Agent"] = f"kick-monitor/{__version__}"
            session.headers["Accept"] = "application/json"
            return session

    def _give_back(self, session: requests.Session) -> None:
        with self._lock:
            if not self._closed.is_set():
                self._idle.append(session)
                return
        session.close()  # the client closed while it was in use

    def send(self, method: str, url: str, label: str, **kwargs: Any) -> requests.Response:
        """Send with pacing; retry 429 / 5xx / network errors; raise on Cloudflare blocks.

        Returns the response for every other status (2xx and 4xx) for the caller to judge.
        """
        failures = limited = 0
        while True:
            self.bucket.acquire()
            retry_after: float | None = None
            try:
                resp = self._http(method, url, **kwargs)
            except (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
                    requests.exceptions.InvalidSchema) as exc:
                raise KickApiError(f"{label}: bad URL {url!r} ({type(exc).__name__})") from None
            except requests.ConnectTimeout:
                self.stats.count(label, "timeout")
                problem = f"no connection within {self.timeout[0]:g} s"
            except requests.Timeout:
                self.stats.count(label, "timeout")
                problem = f"no answer within {self.timeout[1]:g} s"
            except requests.RequestException as exc:
                self.stats.count(label, "error")
                problem = f"network error ({type(exc).__name__})"
                log.debug("Kick API %s: %s", label, exc)  # URL and cause; bodies never appear
            else:
                code = resp.status_code
                self.stats.count(label, str(code))
                retry_after = parse_retry_after(
                    resp.headers.get("Retry-After"), cap=self.retry.retry_after_cap
                )
                if code == 429:
                    limited += 1
                    self.stats.add("rate_limited")
                    if limited > self.retry.rate_limited_retries:
                        raise KickApiUnavailable(f"{label}: still rate limited after {limited} tries")
                    delay = retry_after if retry_after is not None else backoff_delay(limited, self.retry)
                    log.warning("Kick API %s: rate limited (429), waiting %.1f s", label, delay)
                    self.stats.add("retries")
                    self.bucket.defer(delay)  # every caller of the budget waits, not just this one
                    continue
                if _is_cloudflare_block(resp):
                    raise KickBlockedError(f"blocked by Cloudflare on {label} (HTTP {code})")
                if code < 500:
                    return resp
                problem = f"HTTP {code}"
            failures += 1
            if failures >= self.retry.attempts:
                raise KickApiUnavailable(f"{label}: {problem} after {failures} attempts")
            delay = retry_after if retry_after is not None else backoff_delay(failures, self.retry)
            log.warning("Kick API %s: %s, retry %d in %.1f s", label, problem, failures, delay)
            self.stats.add("retries")
            _interruptible_sleep(self._closed, delay)

    def close(self) -> None:
        """Close the idle sessions; one in use is closed when its request returns."""
        with self._lock:
            idle = self._idle if self._pid == os.getpid() else []
            self._idle = []
        for session in idle:
            session.close()


# ---------------------------------------------------------------- token


class TokenProvider:
    """App access token from OAuth client credentials: fetched lazily, cached, renewed early.

    Renewal happens `min(10 % of expires_in, 60 s)` before expiry so in-flight requests
    never carry a dying token; `invalidate()` after a 401 forces one fresh fetch. A rejected
    secret raises KickAuthError and is remembered: later calls fail at once, without traffic,
    because a wrong secret does not fix itself.
    """

    def __init__(self, transport: _Transport, token_url: str, client_id: str,
                 client_secret: SecretStr, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._transport = transport
        self.token_url = token_url
        self.client_id = client_id
        self._secret = client_secret
        self._clock = clock
        self._lock = threading.Lock()  # held across the fetch: concurrent callers share one
        self._token: str | None = None
        self._renew_at = 0.0
        self._refused: str | None = None  # why the token endpoint refused our credentials

    def __repr__(self) -> str:
        return f"TokenProvider(token_url={self.token_url!r}, client_id={self.client_id!r})"

    def token(self) -> str:
        """A valid access token, fetching one if none is cached or it is about to expire."""
        with self._lock:
            if self._token is None or self._clock() >= self._renew_at:
                self._token = self._fetch()
            return self._token

    def invalidate(self, token: str) -> None:
        """Forget `token` (the server refused it) unless another thread already replaced it."""
        with self._lock:
            if self._token == token:
                self._token = None

    def _fetch(self) -> str:
        if self._refused is not None:
            raise KickAuthError(self._refused)
        form = {
            "grant_type": "client_credentials",
            "client_id": self.client_id,
            "client_secret": self._secret.get_secret_value(),
        }
        resp = self._transport.send("POST", self.token_url, TOKEN_ENDPOINT, data=form)
        if resp.status_code in (400, 401, 403):
            # The body is not quoted: an OAuth server may echo the request back.
            self._refused = (
                f"Kick rejected the client credentials (HTTP {resp.status_code} from "
                f"{TOKEN_ENDPOINT}); check the client id and secret"
            )
            raise KickAuthError(self._refused)
        if resp.status_code != 200:
            raise KickApiError(f"unexpected HTTP {resp.status_code} from {TOKEN_ENDPOINT}")
        answer = _parse(_TokenAnswer, resp, TOKEN_ENDPOINT)
        lifetime = answer.expires_in
        self._renew_at = self._clock() + lifetime - min(0.1 * lifetime, 60.0)
        self._transport.stats.add("token_refreshes")
        log.info("fetched a Kick app access token (expires in %.0f s)", lifetime)
        return answer.access_token


# ---------------------------------------------------------------- client


@dataclass(frozen=True, slots=True)
class ResolvedIds:
    """Every id a streamer needs: Pusher listens on `channel.{channel_id}`."""

    slug: str
    channel_id: int
    user_id: int
    chatroom_id: int | None  # only the web API tells it; not needed for live status


@dataclass(frozen=True, slots=True)
class Unresolved:
    """Why a streamer could not be resolved; `retryable` if trying later may help."""

    slug: str
    reason: str
    retryable: bool = False


@dataclass(frozen=True, slots=True)
class Resolution:
    """What is known about a slug after one resolution round.

    `user_id` is enough to monitor a streamer by reconciliation; `channel_id` (Pusher)
    may stay None for long. `reason` says why something is missing (None when complete);
    `found` is False when Kick has no such channel; `retryable` when asking later may help.
    """

    slug: str
    user_id: int | None = None
    channel_id: int | None = None
    chatroom_id: int | None = None
    reason: str | None = None
    found: bool = True
    retryable: bool = True


def chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _unique_slugs(slugs: Iterable[str]) -> list[str]:
    """Kick slugs are lower case; the API matches them exactly, so normalise and dedupe."""
    return list(dict.fromkeys(s.strip().lower() for s in slugs if s and s.strip()))


class KickApiClient:
    """Kick's official API (app token) and unofficial web API, paced and retried.

    `rate=(per_second, burst)` is the client-side limit; the default (5/s, i.e. 300/min)
    stays far below the ~690/min at which 429s were reported. `budget` replaces it with
    a budget shared by every process of the deployment (`kick_monitor.api_budget`).
    `batch_size` (≤ 50, default 25) is how many slugs or user ids go in one request:
    reports say large batches return wrong data. `timeout` is (connect, read) seconds, or
    one number for the read timeout (connect then gets at most 3.05 s).
    `use_deprecated_livestreams`: keep asking `/public/v1/livestreams` for channel ids
    after it announced its deprecation (it is the only official source of channel ids).
    """

    def __init__(
        self,
        api_base_url: str,
        oauth_token_url: str,
        web_api_base_url: str,
        client_id: str | None,
        client_secret: SecretStr | None,
        *,
        timeout: float | tuple[float, float] = (3.05, 10.0),
        batch_size: int = DEFAULT_BATCH,
        rate: tuple[float, int] = (5.0, 10),
        retry: RetryPolicy | None = None,
        budget: RateBudget | None = None,
        web_backoff: float = WEB_BACKOFF,
        use_deprecated_livestreams: bool = True,
    ) -> None:
        if not 1 <= batch_size <= MAX_BATCH:
            raise ValueError(f"batch_size must be 1..{MAX_BATCH}, got {batch_size}")
        self.api_base_url = api_base_url.rstrip("/")
        self.web_api_base_url = web_api_base_url.rstrip("/")
        self.batch_size = batch_size
        self._closed = threading.Event()
        bucket: RateBudget = budget or TokenBucket(
            rate[0], rate[1], sleep=lambda seconds: _interruptible_sleep(self._closed, seconds)
        )
        self.budget = bucket
        self.stats = ApiStats(bucket)
        self.web_backoff = web_backoff
        self.use_deprecated_livestreams = use_deprecated_livestreams
        self._state_lock = threading.Lock()
        self.web_blocked_until = 0.0  # monotonic; the web API is not asked before then
        self.livestreams_off: str | None = None  # why /public/v1/livestreams is no longer asked
        self._deprecation_said = False
        if not isinstance(timeout, tuple):
            timeout = (min(3.05, timeout), timeout)
        self._transport = _Transport(timeout, bucket, retry or RetryPolicy(), self.stats,
                                     self._closed)
        self.tokens: TokenProvider | None = None
        if client_id and client_secret is not None and client_secret.get_secret_value():
            self.tokens = TokenProvider(self._transport, oauth_token_url, client_id, client_secret)

    def __repr__(self) -> str:
        return (f"KickApiClient(api_base_url={self.api_base_url!r}, "
                f"has_credentials={self.has_credentials})")

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def has_credentials(self) -> bool:
        """False without a client id and secret: only the web API can be used."""
        return self.tokens is not None

    def close(self) -> None:
        """Stop: waits in progress end with KickApiUnavailable, the session is closed."""
        self._closed.set()
        self._transport.close()
        close = getattr(self.budget, "close", None)
        if close is not None:
            close()

    def carry_state(self, old: KickApiClient | None) -> None:
        """Keep what a replaced client learnt (web API blocked, v1 livestreams gone) on SIGHUP."""
        if old is not None:
            self.web_blocked_until = old.web_blocked_until
            self.livestreams_off = old.livestreams_off
            self._deprecation_said = old._deprecation_said

    # -- official API

    def _official_get(self, path: str, params: list[tuple[str, str | int]]) -> requests.Response:
        """GET with the app token; on a 401 renew the token once and retry once."""
        return self._official("GET", path, params)

    def _official(self, method: str, path: str, params: list[tuple[str, str | int]], *,
                  json: Any = None, ok: tuple[int, ...] = (200,)) -> requests.Response:
        """A request with the app token; on a 401 renew the token once and retry once.

        Answers in `ok` are returned; 401 → KickAuthError, 404/410 → KickEndpointGone,
        anything else → KickApiError with Kick's own short message.
        """
        if self.tokens is None:
            raise KickNoCredentialsError(f"{path} needs Kick API credentials (client id and secret)")
        url = self.api_base_url + path
        extra: dict[str, Any] = {} if json is None else {"json": json}
        for attempt in (1, 2):
            token = self.tokens.token()
            resp = self._transport.send(
                method, url, path, params=params, headers={"Authorization": f"Bearer {token}"}, **extra
            )
            if resp.status_code != 401:
                break
            self.tokens.invalidate(token)
            if attempt == 1:
                log.info("Kick API %s: token refused (401), renewing it once", path)
        if resp.status_code in ok:
            return resp
        if resp.status_code == 401:
            raise KickAuthError(f"{path}: Kick refused a freshly issued app token (HTTP 401)")
        if resp.status_code in (404, 410):
            raise KickEndpointGone(f"{path}: HTTP {resp.status_code}{_detail(resp)}")
        raise KickApiError(f"{path}: unexpected HTTP {resp.status_code}{_detail(resp)}")

    def _channels(self, key: str, values: Sequence[str | int]) -> list[ChannelInfo]:
        found: list[ChannelInfo] = []
        for batch in chunks(values, self.batch_size):
            resp = self._official_get(CHANNELS, [(key, v) for v in batch])
            found.extend(_parse(_ChannelsAnswer, resp, CHANNELS).data)
        return found

    def channels_by_slug(self, slugs: Iterable[str]) -> list[ChannelInfo]:
        """Channels for these slugs, `batch_size` per request; unknown slugs are left out."""
        return self._channels("slug", _unique_slugs(slugs))

    def channels_by_user_id(self, user_ids: Iterable[int]) -> list[ChannelInfo]:
        """Channels for these broadcaster user ids, `batch_size` per request."""
        return self._channels("broadcaster_user_id", list(dict.fromkeys(user_ids)))

    def livestreams(self, user_ids: Iterable[int]) -> list[LiveStream]:
        """Live streams of these broadcasters (offline ones are absent); [] for no ids.

        An empty filter would list all of Kick, so no ids means no request. This endpoint
        is deprecated (2026-06-23): a 404/410 switches it off for the life of the client
        (one log line) and later calls return [] without traffic; a Deprecation header is
        said once (and, with `use_deprecated_livestreams=False`, switches it off too).
        """
        found: list[LiveStream] = []
        for batch in chunks(list(dict.fromkeys(user_ids)), self.batch_size):
            if self.livestreams_off is not None:
                break
            # `limit` ≥ batch so pagination never hides a live broadcaster of the batch.
            params: list[tuple[str, str | int]] = [("broadcaster_user_id", u) for u in batch]
            try:
                resp = self._official_get(LIVESTREAMS, [*params, ("limit", 100)])
            except KickEndpointGone as exc:
                self._switch_off_livestreams(f"it answered {str(exc).split(': ', 1)[1]}")
                break
            found.extend(_parse(_LivestreamsAnswer, resp, LIVESTREAMS).data)
            if resp.headers.get("Deprecation") or resp.headers.get("Sunset"):
                self._deprecated(resp)
        return found

    @property
    def livestreams_available(self) -> bool:
        """False once /public/v1/livestreams was switched off for this run."""
        return self.livestreams_off is None and self.has_credentials

    def _deprecated(self, resp: requests.Response) -> None:
        with self._state_lock:
            if self._deprecation_said:
                return
            self._deprecation_said = True
        if not self.use_deprecated_livestreams:
            self._switch_off_livestreams("Kick marks it deprecated")
            return
        log.warning(
            "Kick marks %s deprecated (Deprecation: %s): still using it for channel ids of live streamers"
            " while it answers; status comes from %s either way", LIVESTREAMS,
            resp.headers.get("Deprecation", "")[:40], CHANNELS,
        )

    def _switch_off_livestreams(self, why: str) -> None:
        with self._state_lock:
            if self.livestreams_off is not None:
                return
            self.livestreams_off = why
        log.warning(
            "%s switched off for this run (%s): channel ids now come only from the web API (when reachable)"
            " or from --channel-id; resolution of user ids and reconciliation go on", LIVESTREAMS, why,
        )

    def users_livestreams(self, user_ids: Iterable[int]) -> list[LiveStreamV2]:
        """Live streams of these users, 100 ids per request (offline ones are absent)."""
        found: list[LiveStreamV2] = []
        for batch in chunks(list(dict.fromkeys(user_ids)), USERS_LIVESTREAMS_BATCH):
            resp = self._official_get(USERS_LIVESTREAMS, [("user_id", u) for u in batch])
            found.extend(_parse(_LivestreamsV2Answer, resp, USERS_LIVESTREAMS).data)
        return found

    def livestreams_v2(self, limit: int = V2_PAGE, max_pages: int = 10_000) -> list[LiveStreamV2]:
        """Every live stream on Kick, oldest first, following the cursor to the end."""
        found: list[LiveStreamV2] = []
        cursor: str | None = None
        for _ in range(max_pages):
            params: list[tuple[str, str | int]] = [("limit", limit)]
            if cursor:
                params.append(("cursor", cursor))
            answer = _parse(_LivestreamsV2Answer, self._official_get(LIVESTREAMS_V2, params), LIVESTREAMS_V2)
            found.extend(answer.data)
            cursor = answer.pagination.next_cursor if answer.pagination else None
            if not cursor or not answer.data:
                break
        return found

    # -- event subscriptions (webhooks)

    def event_subscriptions(self, max_pages: int = 1000) -> list[EventSubscription]:
        """Every event subscription of this app (Kick lists them per app, all broadcasters).

        Kick documents no pagination for this list; a `pagination.next_cursor`, if Kick
        ever sends one, is followed so a long list is never cut short.
        """
        found: list[EventSubscription] = []
        cursor: str | None = None
        for _ in range(max_pages):
            params: list[tuple[str, str | int]] = [("cursor", cursor)] if cursor else []
            answer = _parse(_SubscriptionsAnswer, self._official_get(EVENT_SUBSCRIPTIONS, params),
                            EVENT_SUBSCRIPTIONS)
            found.extend(answer.data)
            cursor = answer.pagination.next_cursor if answer.pagination else None
            if not cursor or not answer.data:
                break
        return found

    def create_event_subscriptions(
        self, broadcaster_user_id: int, events: Sequence[tuple[str, int]], method: str = "webhook",
    ) -> list[CreatedSubscription]:
        """Subscribe this app to `events` [(name, version)] of one broadcaster: one request.

        Kick takes one broadcaster per request and several events in it; each event's
        outcome comes back on its own (a `subscription_id`, or an `error`). The app's
        subscription limit — refused as a whole or for an event — raises
        KickSubscriptionLimitError (not retried); other refusals raise KickApiError.
        """
        body = {
            "broadcaster_user_id": broadcaster_user_id,
            "events": [{"name": name, "version": version} for name, version in events],
            "method": method,
        }
        resp = self._official("POST", EVENT_SUBSCRIPTIONS, [], json=body, ok=(200, 201, 400, 403, 409, 422))
        if resp.status_code >= 400:  # Kick puts the reason in `data` (a string) or `message`
            said = _refusal(resp)
            if is_limit_message(said):
                raise KickSubscriptionLimitError(f"{EVENT_SUBSCRIPTIONS}: {said}")
            raise KickApiError(f"{EVENT_SUBSCRIPTIONS}: HTTP {resp.status_code}: {said}")
        made = _parse(_CreatedAnswer, resp, EVENT_SUBSCRIPTIONS).data
        refused = [item.error for item in made if item.error and is_limit_message(item.error)]
        if refused and not any(item.subscription_id for item in made):
            raise KickSubscriptionLimitError(f"{EVENT_SUBSCRIPTIONS}: {refused[0][:200]}")
        return made

    def delete_event_subscriptions(self, subscription_ids: Iterable[str]) -> int:
        """Remove these subscriptions, `DELETE_BATCH` ids a request; returns how many were asked.

        An id Kick no longer has is not an error (deleting is what we wanted): Kick's 404
        for such a request is taken as done.
        """
        ids = list(dict.fromkeys(subscription_ids))
        for batch in chunks(ids, DELETE_BATCH):
            try:
                self._official("DELETE", EVENT_SUBSCRIPTIONS, [("id", i) for i in batch], ok=(200, 202, 204))
            except KickEndpointGone as exc:
                if "410" in str(exc):
                    raise
        return len(ids)

    # -- unofficial web API

    @property
    def web_api_blocked(self) -> bool:
        """True while the web API is left alone after a Cloudflare block."""
        return time.monotonic() < self.web_blocked_until

    def channel_v2(self, slug: str) -> WebChannel:
        """`GET /api/v2/channels/{slug}` (no credentials; Cloudflare usually blocks it).

        After a block the web API is not asked for `web_backoff` seconds: calls raise
        KickBlockedError at once, without traffic. The block is logged once per backoff.
        """
        slug = slug.strip().lower()
        if self.web_api_blocked:
            raise KickBlockedError(f"{WEB_CHANNEL}: blocked by Cloudflare (not asked again before the backoff ends)")
        url = f"{self.web_api_base_url}{WEB_CHANNEL}/{quote(slug, safe='')}"
        try:
            resp = self._transport.send("GET", url, WEB_CHANNEL)
        except KickBlockedError:
            self._web_blocked()
            raise
        if resp.status_code == 404:
            raise KickNotFoundError(f"channel {slug!r} not found on Kick")
        if resp.status_code != 200:
            raise KickApiError(f"{WEB_CHANNEL}: unexpected HTTP {resp.status_code}{_detail(resp)}")
        return _parse(WebChannel, resp, f"{WEB_CHANNEL}/{slug}")

    def _web_blocked(self) -> None:
        with self._state_lock:
            if self.web_api_blocked:
                return
            self.web_blocked_until = time.monotonic() + self.web_backoff
        log.warning(
            "the kick.com web API is blocked by Cloudflare (normal for servers since 2026-03): it only"
            " supplied channel ids of offline streamers. Resolution by the official API, reconciliation and"
            " Pusher for known channel ids go on; not asking it again for %.1f h", self.web_backoff / 3600,
        )

    # -- id resolution

    def resolve_slugs(
        self, slugs: Iterable[str], known_user_ids: Mapping[str, int] | None = None, *, web_limit: int = 10,
        deadline: float | None = None,
    ) -> dict[str, Resolution]:
        """Resolve many slugs at once: user ids in batches, channel ids where Kick still tells them.

        1. `/public/v1/channels?slug=` in batches (skipped for slugs in `known_user_ids`);
           a slug missing from a batch's answer is asked alone once before it is "not found".
        2. Channel ids of live streamers from `/public/v1/livestreams` (batched) while it answers.
        3. The web API for up to `web_limit` of the rest, unless Cloudflare blocked it lately.
        Only KickAuthError is raised; everything else becomes a `Resolution` with a reason.
        `deadline` (monotonic) stops starting new requests; unasked slugs are left out.
        """
        wanted = _unique_slugs(slugs)
        known = {slug.lower(): uid for slug, uid in (known_user_ids or {}).items()}
        out: dict[str, Resolution] = {}
        user_ids: dict[str, int] = {s: known[s] for s in wanted if s in known}
        if self.tokens is None:
            for slug in wanted:
                if slug not in user_ids:
                    out[slug] = Resolution(slug, reason="no API credentials to look the slug up", retryable=False)
        else:
            self._user_ids_by_slug([s for s in wanted if s not in user_ids], user_ids, out, deadline)
        channel_ids: dict[str, int] = {}
        why_live = self._channel_ids_from_livestreams(user_ids, channel_ids, deadline)
        web: dict[str, WebChannel] = {}
        why_web = self._channel_ids_from_web(
            [s for s in user_ids if s not in channel_ids] + ([] if self.tokens else list(out)),
            web, web_limit, deadline,
        )
        if self.tokens is None and why_web:
            for slug in list(out):
                if slug not in web:
                    out[slug] = Resolution(slug, reason=f"no API credentials, and {why_web}",
                                           retryable=not self.web_api_blocked)
        for slug, info in web.items():
            if info.user_id != user_ids.get(slug, info.user_id):
                log.warning("streamer %s: official API says user %d, web API says %d; using the official",
                            slug, user_ids[slug], info.user_id)
            user_ids.setdefault(slug, info.user_id)
            channel_ids.setdefault(slug, info.id)
            out.pop(slug, None)
        for slug, user_id in user_ids.items():
            channel_id = channel_ids.get(slug)
            chatroom = web[slug].chatroom.id if slug in web else None
            reason = None if channel_id else (
                f"no channel id yet ({why_live}; {why_web}); monitored by reconciliation by user id,"
                " --channel-id adds Pusher"
            )
            out[slug] = Resolution(slug, user_id, channel_id, chatroom, reason)
        return out

    def _user_ids_by_slug(self, slugs: list[str], user_ids: dict[str, int], out: dict[str, Resolution],
                          deadline: float | None) -> None:
        missing: list[str] = []
        for batch in chunks(slugs, self.batch_size):
            if deadline is not None and time.monotonic() >= deadline:
                return
            try:
                answer = self.channels_by_slug(batch)
            except KickAuthError:
                raise
            except KickApiError as exc:
                for slug in batch:
                    out[slug] = Resolution(slug, reason=f"retrying: {exc}")
                if isinstance(exc, (KickApiUnavailable, KickBlockedError)):
                    return  # Kick is down or blocking us: the next round tries again
                continue
            asked = set(batch)
            for info in answer:
                if info.slug.lower() in asked:  # a confused answer's extra channels are ignored
                    user_ids[info.slug.lower()] = info.broadcaster_user_id
            missing.extend(slug for slug in batch if slug not in user_ids)
        for slug in missing:  # alone, so a batch that lost an item cannot fake "not found"
            if deadline is not None and time.monotonic() >= deadline:
                return
            try:
                alone = [c for c in self.channels_by_slug([slug]) if c.slug.lower() == slug]
            except KickAuthError:
                raise
            except KickApiError as exc:
                out[slug] = Resolution(slug, reason=f"retrying: {exc}")
                continue
            if alone:
                user_ids[slug] = alone[0].broadcaster_user_id
            else:
                out[slug] = Resolution(slug, reason="not found on Kick", found=False, retryable=False)

    def _channel_ids_from_livestreams(self, user_ids: Mapping[str, int], channel_ids: dict[str, int],
                                      deadline: float | None) -> str:
        """Fill channel ids of live streamers; returns what to say about the others."""
        if not user_ids:
            return ""
        if not self.livestreams_available:
            return f"{LIVESTREAMS} is off: {self.livestreams_off or 'no API credentials'}"
        slug_of = {user_id: slug for slug, user_id in user_ids.items()}
        for batch in chunks(list(slug_of), self.batch_size):
            if deadline is not None and time.monotonic() >= deadline:
                break
            try:
                streams = self.livestreams(batch)
            except KickAuthError:
                raise
            except KickApiError as exc:
                return f"{LIVESTREAMS} failed: {exc}"
            for stream in streams:
                if stream.broadcaster_user_id in slug_of and stream.broadcaster_user_id in batch:
                    channel_ids[slug_of[stream.broadcaster_user_id]] = stream.channel_id
        if self.livestreams_off is not None:
            return f"{LIVESTREAMS} is off: {self.livestreams_off}"
        return f"offline, and {LIVESTREAMS} gives channel ids only while live"

    def _channel_ids_from_web(self, slugs: list[str], web: dict[str, WebChannel], limit: int,
                              deadline: float | None) -> str:
        """Ask the web API for up to `limit` slugs unless it is backed off; returns what to say."""
        if not slugs:
            return ""
        if self.web_api_blocked:
            return "the web API is blocked by Cloudflare"
        for slug in slugs[:limit]:
            if deadline is not None and time.monotonic() >= deadline:
                break
            try:
                web[slug] = self.channel_v2(slug)
            except KickBlockedError:
                return "the web API is blocked by Cloudflare"
            except KickApiError as exc:  # not found, unavailable, malformed: the official answer stands
                log.info("web API for %s: %s", slug, exc)
        return "the web API is asked a few per round"

    def resolve_streamer(self, slug: str) -> ResolvedIds | Unresolved:
        """One slug's channel id (and user and chatroom ids), for callers that need all of them.

        `resolve_slugs` is the batched form the service uses; this one answers
        `Unresolved` (with the reason) when no channel id can be had. Only KickAuthError is
        raised.
        """
        slug = slug.strip().lower()
        if not slug:
            return Unresolved(slug, "empty name")
        found = self.resolve_slugs([slug]).get(slug)
        if found is None:
            return Unresolved(slug, "not asked (deadline)", retryable=True)
        if found.user_id is not None and found.channel_id is not None:
            return ResolvedIds(slug, found.channel_id, found.user_id, found.chatroom_id)
        return Unresolved(slug, found.reason or "unresolved", retryable=found.retryable and found.found)


def client_from_settings(settings: Settings, database_url: str | None = None) -> KickApiClient:
    """The API client every role builds from the same settings (one place, not one per role).

    With `database_url`, the client draws from the deployment's shared rate budget
    (`kick_monitor.api_budget`); without, from a bucket of its own.
    """
    budget: RateBudget | None = None
    if database_url and settings.has_api_credentials:
        from kick_monitor.api_budget import SharedBudget

        budget = SharedBudget(database_url, settings.client_id, settings.api_rate, settings.api_burst,
                              fallback_share=settings.shard_count + 1)
    return KickApiClient(
        settings.api_base_url, settings.oauth_token_url, settings.web_api_base_url,
        settings.client_id, settings.client_secret,
        timeout=(min(3.05, settings.api_timeout), settings.api_timeout),
        batch_size=settings.api_batch_size, rate=(settings.api_rate, settings.api_burst),
        budget=budget, web_backoff=settings.web_api_backoff,
    )
