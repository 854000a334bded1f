"""Configuration: one pydantic model, filled from CLI flags > environment > config file > defaults.

The config file uses the systemd EnvironmentFile format (``KEY=VALUE`` lines, ``#``
comments, optional quotes), so one file serves systemd, supervisord and the CLI.
Every key is ``KICK_MONITOR_<FIELD>``; errors name that key, never echo a secret.
"""

from __future__ import annotations

import logging
import math
import os
import re
import shlex
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

ENV_PREFIX = "KICK_MONITOR_"
KICK_PUSHER_URL = (
    "wss://ws-us2.pusher.com/app/32cbd69e4b950bf97679?protocol=7&client=js&version=8.4.0&flash=false"
)
SECRET_MASK = "**********"
PUSHER_OFF = "off"  # KICK_MONITOR_PUSHER_URL=off: no Pusher connections (webhook-only deployments, issue 16)
CHANNEL_PATTERN = re.compile(r"[a-z_][a-z0-9_]{0,62}")

if TYPE_CHECKING:
    from .credentials import SecretSources

log = logging.getLogger(__name__)


class ConfigError(Exception):
    """A bad setting: one line naming the key and the problem (CLI exit code 2)."""


def _check_url(value: str, schemes: tuple[str, ...], key: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in schemes:
        raise ValueError(f"must be a URL starting with {' or '.join(s + '://' for s in schemes)}")
    if not parts.netloc and not (key == "database_url" and "host=" in parts.query):
        raise ValueError("must name a host")
    try:
        parts.port  # noqa: B018 - parsing the port is the check (it raises on "host:abc" or "host:99999")
    except ValueError:
        raise ValueError("has a malformed port") from None
    return value


# -- durations: retention periods
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", re.IGNORECASE)
FOREVER = ("0", "off", "forever", "none")


def parse_retention(text: str) -> float | None:
    """`400d` → seconds; `0`/`off` → None (keep forever). ValueError with a one-line reason."""
    cleaned = text.strip().lower()
    if cleaned in FOREVER:
        return None
    match = _DURATION.fullmatch(cleaned)
    if match is None:
        raise ValueError("must be a duration like 400d, 12h, 30m or 2w, or 0/off to keep forever")
    seconds = float(match.group(1)) * _UNITS[match.group(2).lower()]
    if seconds <= 0:
        return None
    return seconds



# -- reload policy: what a SIGHUP does with a changed value, declared on each field -------------
COORDINATOR, WRITER, PLANNER, WORKER, EXPORTER = "coordinator", "writer", "planner", "worker", "exporter"
MIRROR = "mirror"
WEBHOOK = "webhook"  # issue 16: the webhook receiver role
NOTIFIER = "notifier"  # notifier (issue 19)
ROLES = (COORDINATOR, WRITER, PLANNER, WORKER, EXPORTER, MIRROR, WEBHOOK, NOTIFIER)


@dataclass(frozen=True)
class ReloadPolicy:
    """How a new value reaches the running service on SIGHUP.

    - `live`: sent to the `roles` that read it; they apply it without restarting;
    - `restart`: each of `roles` is restarted (one at a time) and starts with the new value;
    - `service`: it shapes the process tree itself: only a restart of the service applies it
      (SIGHUP keeps the running value and says so).
    """

    action: Literal["live", "restart", "service"]
    roles: tuple[str, ...] = ()


def live(*roles: str) -> ReloadPolicy:
    return ReloadPolicy("live", roles)


def restart(*roles: str) -> ReloadPolicy:
    return ReloadPolicy("restart", roles)


SERVICE = ReloadPolicy("service")


class Settings(BaseModel):
    """Every setting of the service; the field name in upper case, prefixed, is its env key."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    # where things are
    database_url: Annotated[SecretStr | None, SERVICE] = Field(
        None, description="PostgreSQL URL; unset = an embedded PostgreSQL under the data dir"
    )
    data_dir: Annotated[Path, SERVICE] = Field(Path("./var"), description="embedded database, spool and runtime files")
    pusher_url: Annotated[str, restart(WORKER)] = Field(
        KICK_PUSHER_URL, description="Kick's Pusher websocket URL (app key included); off = no Pusher"
        " (webhooks and reconciliation only: every streamer is reconciled every reconcile_interval_without_pusher)",
    )
    api_base_url: Annotated[str, live(PLANNER)] = Field(
        "https://api.kick.com", description="Kick's official API",
    )
    oauth_token_url: Annotated[str, live(PLANNER)] = Field(
        "https://id.kick.com/oauth/token", description="OAuth token endpoint",
    )
    web_api_base_url: Annotated[str, live(PLANNER)] = Field(
        "https://kick.com", description="Kick's unofficial web API (id resolution)",
    )
    client_id: Annotated[str | None, live(PLANNER)] = Field(
        None, description="Kick app client id (optional; enables reconciliation)",
    )
    client_secret: Annotated[SecretStr | None, live(PLANNER)] = Field(
        None, description="Kick app client secret (never printed)",
    )
    database_password: Annotated[SecretStr | None, live(WRITER, PLANNER, MIRROR, WEBHOOK, NOTIFIER)] = Field(
        None, description="PostgreSQL password, kept out of the URL (best as a credential or _FILE; never printed)"
    )

    # observability
    metrics_host: Annotated[str, SERVICE] = Field("127.0.0.1", description="metrics bind address (loopback by default)")
    metrics_port: Annotated[int, SERVICE] = Field(0, ge=0, le=65535, description="metrics port; 0 = off")
    log_format: Annotated[Literal["auto", "json", "text"], SERVICE] = Field(
        "auto", description="json | text; auto = text on a TTY, JSON lines otherwise"
    )
    log_level: Annotated[Literal["DEBUG", "INFO", "WARNING", "ERROR"], live(*ROLES)] = Field(
        "INFO", description="log level",
    )

    # sharding
    shard_count: Annotated[int, SERVICE] = Field(
        0, ge=0, le=4096, description="shards; 0 = ceil(channels / channels_per_connection)",
    )
    shard_index: Annotated[int | None, SERVICE] = Field(
        None, ge=0, description="run only this shard (with shard_count)",
    )
    channels_per_connection: Annotated[int, SERVICE] = Field(
        10000, ge=2, le=100000, description="Pusher subscriptions per connection (2 per streamer)"
    )
    lifecycle_channels: Annotated[Literal["both", "dot", "underscore"], restart(WORKER)] = Field(
        "both", description="subscribe channel.{id}, channel_{id} or both (Kick's choice is disputed)"
    )

    worker_nice: Annotated[int, restart(WORKER)] = Field(
        5, ge=0, le=19,
        description="how much nicer (lower CPU priority) shard workers run than the rest of the service: the one"
        " writer is the serial stage behind every worker, and with equal shares a busy host gives it 1/(workers+1)"
        " of a core; 0 = equal",
    )

    # Pusher
    activity_timeout: Annotated[float, restart(WORKER)] = Field(
        120.0, gt=0, le=3600, description="seconds of silence before a ping",
    )
    pong_timeout: Annotated[float, restart(WORKER)] = Field(
        30.0, gt=0, le=600, description="seconds to wait for a pong",
    )
    connect_timeout: Annotated[float, restart(WORKER)] = Field(
        10.0, gt=0, le=300, description="websocket connect timeout, seconds",
    )

    # writer
    batch_size: Annotated[int, live(WRITER)] = Field(500, ge=1, le=100000, description="max changes per commit")
    flush_interval: Annotated[float, live(WRITER)] = Field(
        0.0, ge=0, le=10,
        description="seconds to keep gathering a batch while input keeps coming; 0 = group commit: commit what"
        " has arrived as soon as it is read (batches grow by themselves while a commit runs)",
    )
    memory_buffer: Annotated[int, live(WRITER)] = Field(
        100000, ge=100, description="changes held in memory while the DB is down",
    )
    spool_max_bytes: Annotated[int, restart(WRITER, WORKER)] = Field(
        1 << 30, ge=1 << 20, description="cap of the durable spool on disk (the writer's, and each worker's overflow)"
    )

    # hand-off
    handoff_max_unacked: Annotated[int, restart(WORKER)] = Field(
        500000, ge=100,
        description="changes a worker keeps in memory until the writer acknowledges them; beyond this the oldest"
        " spill to data_dir/spool/worker-N (capped by spool_max_bytes) and are sent from there first;"
        " only what that spool cannot take is dropped (counted, alerted)",
    )

    # Kick API
    reconcile_interval: Annotated[float, live(WORKER)] = Field(
        300.0, ge=0, description="seconds between reconciliations; 0 = only on connect",
    )
    reconcile_interval_without_pusher: Annotated[float, live(WORKER)] = Field(
        30.0, ge=0,
        description="seconds between reconciliations of streamers without a channel id (no Pusher:"
        " they are detected at this interval, not in milliseconds); 0 = only reconcile_interval",
    )
    broadcast_match_tolerance: Annotated[float, live(WORKER, WRITER)] = Field(
        60.0, ge=0, le=3600,
        description="seconds within which two reported starts of one streamer are one broadcast"
        " (Pusher's created_at, the API's start_time and a webhook's started_at differ by this much)",
    )
    api_batch_size: Annotated[int, live(PLANNER)] = Field(
        25, ge=1, le=50,
        description="slugs or user ids per /public/v1/channels request (50-item batches are reported to return"
        " wrong live data)",
    )
    api_rate: Annotated[float, live(PLANNER)] = Field(
        5.0, gt=0, le=100,
        description="API requests per second for the whole deployment (one budget per Kick app, shared by every"
        " process through the database; halved on a 429, recovers slowly)",
    )
    api_burst: Annotated[int, live(PLANNER)] = Field(
        10, ge=1, le=1000, description="API requests the shared budget lets through at once after a quiet spell",
    )
    web_api_backoff: Annotated[float, live(PLANNER)] = Field(
        21600.0, ge=60, le=7 * 86400,
        description="seconds the kick.com web API is left alone after Cloudflare blocked it (it is optional)",
    )
    api_timeout: Annotated[float, live(PLANNER)] = Field(
        10.0, gt=0, le=120, description="API request timeout, seconds",
    )

    # -- webhook subscriptions (issue 16, subscription sync; the receiver's WEBHOOK_* settings are its own) --
    webhook_subscribe: Annotated[Literal["auto", "on", "off"], live(PLANNER)] = Field(
        "auto",
        description="keep Kick's webhook subscriptions (livestream.status.updated and .metadata.updated of every"
        " streamer with a user id) in sync: on | off | auto = on when this host runs the webhook receiver"
        " (webhook_port set). Needs API credentials; one process of a deployment syncs at a time",
    )
    webhook_sync_interval: Annotated[float, live(PLANNER)] = Field(
        900.0, ge=30, le=86400,
        description="seconds between subscription syncs (also at start and when streamers are added or removed):"
        " re-creates what Kick dropped on its own",
    )
    # -- end webhook subscriptions --

    # coordinator
    heartbeat_timeout: Annotated[float, live(COORDINATOR, WRITER)] = Field(
        30.0, gt=0, le=3600, description="a worker silent this long is killed",
    )
    reload_interval: Annotated[float, live(PLANNER)] = Field(
        60.0, gt=0, description="seconds between full streamer-list reloads",
    )
    drain_timeout: Annotated[float, live(COORDINATOR, WORKER)] = Field(
        20.0, gt=0, le=600, description="graceful stop bound, seconds",
    )
    # --- issue 17 (cluster) ---
    lease_ttl: Annotated[float, restart(PLANNER)] = Field(
        15.0, ge=2, le=300,
        description="seconds a node's shard lease lasts without renewal (renewed every ttl/5); after it another"
        " node may take the shard over",
    )
    # --- end issue 17 ---

    # integration with an application's own tables (docs/integration.md)
    streamers_source: Annotated[str | None, restart(PLANNER)] = Field(
        None,
        description="read-only SQL query returning slug [, channel_id, user_id]: when set it IS the streamer"
        " list (synced at start, on streamers_source_channel and every reload_interval;"
        " `streamers add/remove/import` refuse)",
    )
    streamers_source_channel: Annotated[str | None, restart(PLANNER)] = Field(
        None, description="NOTIFY channel that makes the planner sync streamers_source at once (optional)",
    )
    status_mirror: Annotated[str | None, SERVICE] = Field(
        None,
        description="statement applied after each committed change, its own transaction, with %(slug)s"
        " %(user_id)s %(channel_id)s %(status)s %(is_live)s %(title)s %(started_at)s %(changed_at)s;"
        " set = the mirror role runs",
    )

    @field_validator("streamers_source", "status_mirror")
    @classmethod
    def _sql_text(cls, value: str | None) -> str | None:
        if value is not None:
            if not value.strip().rstrip(";").strip():
                raise ValueError("must not be blank")
            return value.strip().rstrip(";").strip()
        return value

    @field_validator("streamers_source_channel")
    @classmethod
    def _channel(cls, value: str | None) -> str | None:
        if value is not None and not CHANNEL_PATTERN.fullmatch(value):
            raise ValueError("must be a PostgreSQL identifier: lower-case letters, digits and '_', at most 63")
        return value

    # retention
    history_retention: Annotated[str, live(PLANNER)] = Field(
        "400d", description="how long status history is kept (e.g. 400d, 12h, 2w); 0 or off = forever. The"
        " planner prunes older rows in small batches, one process of a deployment at a time",
    )

    # -- issue 16: the webhook receiver (workers/webhook_receiver.py) -------------------------------
    webhook_port: Annotated[int, SERVICE] = Field(
        0, ge=0, le=65535, description="port of the webhook receiver (Kick's Events API); 0 = off",
    )
    webhook_host: Annotated[str, restart(WEBHOOK)] = Field(
        "127.0.0.1",
        description="webhook receiver bind address (loopback: production puts a TLS reverse proxy in front)",
    )
    webhook_path: Annotated[str, restart(WEBHOOK)] = Field(
        "/webhooks/kick", description="URL path Kick posts deliveries to (GET /healthz is served beside it)",
    )
    webhook_public_key: Annotated[Path | None, restart(WEBHOOK)] = Field(
        None, description="PEM file with the key webhook signatures are verified with; unset = fetched from"
        " api_base_url/public/v1/public-key at start, else the key Kick publishes (shipped)",
    )
    webhook_max_age: Annotated[float, live(WEBHOOK)] = Field(
        600.0, ge=10, le=86400, description="seconds after Kick-Event-Message-Timestamp a delivery is still taken;"
        " older ones are refused as replays (401)",
    )
    webhook_ack_timeout: Annotated[float, live(WEBHOOK)] = Field(
        5.0, gt=0, le=60, description="seconds a delivery waits for the writer to make it durable before it is"
        " answered 503 (Kick re-sends it); keep it above 2 s, the writer's wait before it spools while"
        " PostgreSQL is down",
    )
    webhook_max_connections: Annotated[int, restart(WEBHOOK)] = Field(
        200, ge=1, le=10000, description="open connections the webhook receiver accepts at once",
    )
    webhook_threads: Annotated[int, restart(WEBHOOK)] = Field(
        16, ge=1, le=256, description="deliveries handled at once (each waits for the writer's acknowledgement)",
    )
    webhook_read_timeout: Annotated[float, restart(WEBHOOK)] = Field(
        10.0, gt=0, le=300, description="seconds a client has to send a whole request (headers and body) from"
        " its first byte; slower ones are disconnected (slow-loris)",
    )

    @field_validator("webhook_path")
    @classmethod
    def _webhook_path(cls, value: str) -> str:
        if not value.startswith("/") or value == "/healthz" or any(c.isspace() for c in value):
            raise ValueError("must be a URL path starting with / (not /healthz), without spaces")
        return value
    # -- notifier (issue 19): go-live notifications (docs/notifications.md) -------------------
    notify: Annotated[Literal["auto", "on", "off"], SERVICE] = Field(
        "auto", description="the notifier role: auto = runs when at least one `kick-monitor notify` target exists"
        " at start (a first target added later takes a restart); on = always (idles cheaply); off = never",
    )
    notify_max_age: Annotated[float, live(NOTIFIER)] = Field(
        600.0, ge=0, le=86400, description="seconds: a broadcast found later than this after its start (or already"
        " ended) is not announced as live now; see notify_late",
    )
    notify_late: Annotated[Literal["skip", "was_live"], live(NOTIFIER)] = Field(
        "skip", description="what a late-found broadcast gets: skip = nothing (recorded as skipped), was_live ="
        " one \"was live\" message",
    )
    notify_regrace: Annotated[float, live(NOTIFIER)] = Field(
        300.0, ge=0, le=3600, description="flap guard, seconds: a broadcast that ends and the next that starts within"
        " this are announced once; offline announcements wait this long",
    )
    notify_timeout: Annotated[float, live(NOTIFIER)] = Field(
        10.0, gt=0, le=120, description="seconds for one webhook request (an answer not read in time: uncertain)",
    )
    notify_concurrency: Annotated[int, restart(NOTIFIER)] = Field(
        8, ge=1, le=64, description="targets sent to at once (one request in flight per target at most)",
    )
    # -- end notifier --------------------------------------------------------------------------

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            _check_url(value.get_secret_value(), ("postgresql", "postgres"), "database_url")
        return value

    @field_validator("history_retention")
    @classmethod
    def _retention(cls, value: str) -> str:
        parse_retention(value)
        return value.strip().lower()

    @field_validator("pusher_url")
    @classmethod
    def _pusher_url(cls, value: str) -> str:
        if value.strip().lower() == PUSHER_OFF:
            return PUSHER_OFF
        return _check_url(value, ("ws", "wss"), "pusher_url")

    @field_validator("api_base_url", "oauth_token_url", "web_api_base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        return _check_url(value, ("http", "https"), "url").rstrip("/")

    @field_validator("client_id", "metrics_host", "webhook_host")
    @classmethod
    def _not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must not be blank")
        return value

    @property
    def has_api_credentials(self) -> bool:
        return self.client_id is not None and self.client_secret is not None

    def resolve_shard_count(self, channel_count: int) -> int:
        """Configured shard count, or enough shards to keep each connection under its cap."""
        if self.shard_count:
            return self.shard_count
        return max(1, math.ceil(channel_count / self.channels_per_connection))

    def effective(self) -> dict[str, str]:
        """The settings as KEY=value text, secrets masked: what `--dry-run` shows."""
        shown: dict[str, str] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                text = SECRET_MASK
            elif value is None:
                text = ""
            else:
                text = str(value)
            shown[env_key(name)] = text
        return shown


def reload_policy(name: str, model: type[BaseModel] = Settings) -> ReloadPolicy:
    """The policy declared on field `name` (every field has one: a test checks)."""
    for item in model.model_fields[name].metadata:
        if isinstance(item, ReloadPolicy):
            return item
    raise LookupError(f"setting {name} declares no reload policy")


def changed_settings(old: Settings, new: Settings) -> set[str]:
    """Names of the fields whose values differ."""
    return {name for name in Settings.model_fields if getattr(old, name) != getattr(new, name)}


def env_key(field: str) -> str:
    return ENV_PREFIX + field.upper()


FIELD_BY_KEY = {env_key(name): name for name in Settings.model_fields}
# The secret settings: each also comes from KICK_MONITOR_<NAME>_FILE or the systemd credential
# <name>, is scrubbed from the environment and masked everywhere (kick_monitor/credentials.py).
# The webhook and notification secrets join this list when they arrive.
SECRET_FIELDS = frozenset({"client_secret", "database_url", "database_password"})


def parse_env_file(path: Path) -> dict[str, str]:
    """Read KEY=VALUE lines (systemd EnvironmentFile format); unknown keys are errors."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"--config {path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"--config {path}: not UTF-8 text") from None
    values: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("export "):
            line = line[len("export ") :].lstrip()
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--config {path}:{number}: expected KEY=VALUE")
        if key not in FIELD_BY_KEY:
            raise ConfigError(f"--config {path}:{number}: unknown key {key}")
        value = value.strip()
        if value[:1] in ("'", '"'):
            try:
                parts = shlex.split(value)
            except ValueError:
                raise ConfigError(f"--config {path}:{number}: {key}: unbalanced quotes") from None
            value = parts[0] if parts else ""
        values[key] = value
    _warn_if_exposed(path, values)
    return values


def _warn_if_exposed(path: Path, values: Mapping[str, str]) -> None:
    holds_secret = any(FIELD_BY_KEY[key] in SECRET_FIELDS and value for key, value in values.items())
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if holds_secret and mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning(
            "config file %s holds a secret and is readable by group or others (mode %o); chmod 600 it",
            path,
            stat.S_IMODE(mode),
        )


def env_values(environ: Mapping[str, str]) -> dict[str, str]:
    """The KICK_MONITOR_* variables we know; an unknown one is warned about (likely a typo)."""
    known: dict[str, str] = {}
    for key, value in environ.items():
        if not key.startswith(ENV_PREFIX):
            continue
        if key in FIELD_BY_KEY:
            known[key] = value
        elif key not in IGNORED_ENV and key not in SECRET_FILE_KEYS:
            log.warning("ignoring unknown environment variable %s", key)
    return known


# Variables of ours that are not settings (set by units and scripts for other purposes).
IGNORED_ENV = frozenset({ENV_PREFIX + "CONFIG"})
SECRET_FILE_KEYS = frozenset(env_key(name) + "_FILE" for name in SECRET_FIELDS)  # read by credentials.py


def load_settings(
    cli: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    config_file: Path | None = None,
    sources: SecretSources | None = None,
) -> Settings:
    """Merge the sources in precedence order and validate once; raise ConfigError on bad input.

    `cli` is keyed by field name and holds only flags the user actually gave. Secrets come
    from `sources` (captured from the environment at start, see kick_monitor/credentials.py;
    by default from `environ` now): they win over the config file, flags win over them.
    """
    from .credentials import SecretSources  # credentials builds on this module

    environ = os.environ if environ is None else environ
    sources = SecretSources.capture(environ) if sources is None else sources
    merged: dict[str, Any] = {}
    origin: dict[str, str] = {}
    if config_file is not None:
        for key, value in parse_env_file(config_file).items():
            merged[FIELD_BY_KEY[key]] = value
            origin[FIELD_BY_KEY[key]] = f"{key} (from {config_file})"
    for key, value in env_values(environ).items():
        if FIELD_BY_KEY[key] in SECRET_FIELDS:
            continue  # captured in `sources`: the environment may have been scrubbed since
        merged[FIELD_BY_KEY[key]] = value
        origin[FIELD_BY_KEY[key]] = key
    for name, (value, where) in sources.read().items():
        if name in origin and where != env_key(name):
            log.warning("%s is ignored: %s takes precedence", origin[name], where)
        merged[name] = value
        origin[name] = where
    for name, value in (cli or {}).items():
        if value is None:
            continue
        if name not in Settings.model_fields:
            raise ConfigError(f"unknown setting {name}")
        merged[name] = value
        origin[name] = "--" + name.replace("_", "-")
    for name, value in list(merged.items()):
        if value == "":  # an empty optional setting (e.g. KICK_MONITOR_CLIENT_ID=) means unset
            merged[name] = None if Settings.model_fields[name].default is None else value
    try:
        return Settings(**merged)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, origin)) from None


def _describe(exc: ValidationError, origin: Mapping[str, str]) -> str:
    """First validation error as one line: the key, where it came from, the problem — no value."""
    first = exc.errors(include_url=False, include_input=False)[0]
    loc = first.get("loc") or ("?",)
    name = str(loc[0])
    where = origin.get(name, env_key(name))
    message = str(first.get("msg", "invalid value"))
    message = message.removeprefix("Value error, ")
    more = len(exc.errors()) - 1
    suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
    return f"{where}: {message}{suffix}"
