"""Where each secret setting comes from, and keeping every secret out of process environments.

A secret (`config.SECRET_FIELDS`: the client secret, the database URL or password, and the
webhook and notification secrets to come) can be given four ways, the first found wins:

1. a systemd credential, `$CREDENTIALS_DIRECTORY/<name>` (`LoadCredential[Encrypted]=`);
2. a file named by `KICK_MONITOR_<NAME>_FILE` (containers, orchestrators, supervisord);
3. the variable `KICK_MONITOR_<NAME>` itself (the old EnvironmentFile way);
4. the `--config` file (read by `config.load_settings`, below all of these).

The more deliberate and better-protected source wins instead of two sources being an
error, so a host can move from its EnvironmentFile to a credential step by step: the
warning names the source that was ignored (never a value) so the leftover gets removed.

The environment is captured once (`SecretSources.capture`) and then scrubbed
(`scrub_environment`) before the service forks anything: `/proc/PID/environ`, `systemctl
show`, crash reports and every subprocess would otherwise carry the secrets. Files and
credentials are re-read on every `read()` (SIGHUP); an environment value cannot be, so
rotating one of those takes a restart.

>>> sources = SecretSources.capture(os.environ)
>>> scrub_environment(os.environ)
>>> values = sources.read()  # {"client_secret": ("...", "credential client_secret"), ...}
"""

from __future__ import annotations

import ctypes
import logging
import os
import stat
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path

from .config import SECRET_FIELDS, ConfigError, Settings, env_key

CREDENTIALS_ENV = "CREDENTIALS_DIRECTORY"  # set by systemd when a unit has LoadCredential*=
FILE_SUFFIX = "_FILE"
MAX_SECRET_BYTES = 64 * 1024  # a secret, not a data file: refuse to slurp something huge by mistake

log = logging.getLogger(__name__)


def file_key(name: str) -> str:
    """`client_secret` -> `KICK_MONITOR_CLIENT_SECRET_FILE`."""
    return env_key(name) + FILE_SUFFIX


def environment_keys() -> frozenset[str]:
    """Every variable `scrub_environment` removes: secrets, their `_FILE` pointers, the credential dir."""
    return frozenset(
        {env_key(name) for name in SECRET_FIELDS} | {file_key(name) for name in SECRET_FIELDS} | {CREDENTIALS_ENV}
    )


def scrub_environment(environ: MutableMapping[str, str] | None = None) -> list[str]:
    """Remove every secret variable (and the pointers to secrets) from `environ`; return their names.

    On `os.environ` this also unsets them in the C environment, which forked children and
    every subprocess inherit.
    """
    real = environ is None or environ is os.environ
    environ = os.environ if environ is None else environ
    removed = sorted(key for key in environment_keys() if key in environ)
    for key in removed:
        del environ[key]
    if real:
        wipe_environment_block(environment_keys())
    return removed


def wipe_environment_block(keys: frozenset[str]) -> int:
    """Zero the `keys` entries of the environment block the process started with; return how many.

    `unsetenv` only drops the pointers: the strings stay in the block the kernel shows as
    /proc/PID/environ (and forks copy it). No pointer refers to a removed entry any more,
    so overwriting it is safe; the other entries are left exactly as they are.
    """
    try:  # fields 50 and 51 of /proc/self/stat: env_start, env_end (Linux 3.5+)
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        start, end = int(fields[47]), int(fields[48])
    except (OSError, IndexError, ValueError):
        return 0
    if not 0 < start < end:
        return 0
    wiped, offset = 0, 0
    for entry in ctypes.string_at(start, end - start).split(b"\0"):
        if entry.partition(b"=")[0].decode(errors="replace") in keys:
            ctypes.memset(start + offset, 0, len(entry))
            wiped += 1
        offset += len(entry) + 1
    return wiped


# The secrets each role uses; the rest are left out of the settings it is handed.
ROLE_SECRETS = {
    "writer": frozenset(),  # it gets the connection string itself, password included
    "worker": frozenset(),  # the planner asks Kick's API for it (kick_monitor.reconcile_service)
    "planner": frozenset({"client_secret"}),  # the tree's API client; it gets the connection string itself too
}


def for_role(settings: Settings, role: str) -> Settings:
    """`settings` without the secrets `role` does not use (unknown roles get none)."""
    drop = SECRET_FIELDS - ROLE_SECRETS.get(role, frozenset())
    return settings.model_copy(update=dict.fromkeys(drop))


def read_secret_file(path: Path, what: str) -> str:
    """The secret in `path` (one trailing newline dropped), after the permission checks.

    Refused with one line (ConfigError, exit 2): not a regular file, writable by others,
    owned by someone other than this user or root, empty, not UTF-8, unreadable. Readable
    by group or others (containers mount secrets 0444, Kubernetes 0644) draws a warning.
    `what` names the source in messages, e.g. `KICK_MONITOR_CLIENT_SECRET_FILE=/run/secrets/x`.
    """
    try:  # non-blocking: a FIFO put there by mistake must not hang the start
        with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC), "rb") as handle:
            info = os.fstat(handle.fileno())
            problem = _refusal(info)
            if problem:
                raise ConfigError(f"{what}: {problem}")
            data = handle.read(MAX_SECRET_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{what}: cannot read: {exc.strerror or exc}") from None
    if len(data) > MAX_SECRET_BYTES:
        raise ConfigError(f"{what}: larger than {MAX_SECRET_BYTES} bytes; is this the right file?")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{what}: not UTF-8 text") from None
    text = text.removesuffix("\n").removesuffix("\r")
    if not text:
        raise ConfigError(f"{what}: is empty")
    mode = stat.S_IMODE(info.st_mode)
    if mode & (stat.S_IRGRP | stat.S_IWGRP | stat.S_IROTH):
        log.warning("%s is readable by group or others (mode %o); chmod 600 it if you can", what, mode)
    return text


def _refusal(info: os.stat_result) -> str | None:
    if not stat.S_ISREG(info.st_mode):
        return "not a regular file"
    if info.st_mode & stat.S_IWOTH:
        return f"writable by others (mode {stat.S_IMODE(info.st_mode):o}); anyone could swap the secret"
    if info.st_uid not in (os.geteuid(), 0):
        return f"owned by uid {info.st_uid}, not by this service's user ({os.geteuid()}) or root"
    return None


@dataclass(frozen=True)
class SecretSources:
    """The secret sources as found in the environment at start; `read()` yields the values."""

    credentials_dir: Path | None = None
    files: Mapping[str, Path] = field(default_factory=dict)  # name -> path from KICK_MONITOR_<NAME>_FILE
    captured: Mapping[str, str] = field(default_factory=dict, repr=False)  # name -> KICK_MONITOR_<NAME>

    @classmethod
    def capture(cls, environ: Mapping[str, str]) -> SecretSources:
        """Note where each secret is; keep environment values (the environment is scrubbed next)."""
        directory = environ.get(CREDENTIALS_ENV) or None
        files = {name: Path(environ[file_key(name)]) for name in SECRET_FIELDS if environ.get(file_key(name))}
        captured = {name: environ[env_key(name)] for name in SECRET_FIELDS if environ.get(env_key(name))}
        return cls(Path(directory) if directory else None, files, captured)

    def read(self) -> dict[str, tuple[str, str]]:
        """name -> (value, where it came from), files and credentials read now; ConfigError if one is bad."""
        found: dict[str, tuple[str, str]] = {}
        for name in sorted(SECRET_FIELDS):
            candidates = self._candidates(name)
            if not candidates:
                continue
            where, load = candidates[0]
            found[name] = (load(), where)
            for ignored, _ in candidates[1:]:
                log.warning("%s is ignored: %s takes precedence (remove the one you do not use)", ignored, where)
        return found

    def _candidates(self, name: str) -> list[tuple[str, _Loader]]:
        """The sources that give `name`, best first, each with how to get its value."""
        candidates: list[tuple[str, _Loader]] = []
        if self.credentials_dir is not None:
            path = self.credentials_dir / name
            if path.exists():
                where = f"credential {name} (${CREDENTIALS_ENV}/{name})"
                candidates.append((where, _FileLoader(path, where)))
        if name in self.files:
            where = f"{file_key(name)}={self.files[name]}"
            candidates.append((where, _FileLoader(self.files[name], where)))
        if name in self.captured:
            candidates.append((env_key(name), _ValueLoader(self.captured[name])))
        return candidates


@dataclass(frozen=True)
class _FileLoader:
    path: Path
    where: str

    def __call__(self) -> str:
        return read_secret_file(self.path, self.where)


@dataclass(frozen=True, repr=False)
class _ValueLoader:
    value: str

    def __call__(self) -> str:
        return self.value


_Loader = _FileLoader | _ValueLoader
