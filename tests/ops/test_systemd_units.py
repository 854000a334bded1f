"""etc/systemd: the units pass `systemd-analyze verify`, keep their hardening score, and hold the
service's contracts (exit codes, drain bound, env file); the service speaks sd_notify as Type=notify expects.

`systemd-analyze` works offline (no running systemd needed): the units are copied to a
temporary unit path with ExecStart pointed at an executable that exists here.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from kick_monitor import __version__
from kick_monitor.config import FIELD_BY_KEY, SECRET_FIELDS, load_settings
from kick_sim import Simulator
from tests.service import REPO, Service, running, service_env, wait_until

pytestmark = pytest.mark.timeout(60)

UNITS = REPO / "etc" / "systemd"
EXEC = "/opt/kick-monitor/bin/kick-monitor"
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    ANALYZE is None, reason="systemd-analyze is not installed (Debian: apt-get install systemd)"
)
HARDENING = {
    "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
    "PrivateDevices": "yes", "ReadWritePaths": "/var/lib/kick-monitor",
    "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6", "CapabilityBoundingSet": "",
    "MemoryDenyWriteExecute": "yes", "LockPersonality": "yes", "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes", "ProtectKernelLogs": "yes", "ProtectControlGroups": "yes",
    "RestrictNamespaces": "yes", "RestrictRealtime": "yes", "RestrictSUIDSGID": "yes", "UMask": "0077",
}


def directives(path: Path) -> dict[str, list[str]]:
    """Key -> every value it is given in the unit file (comments and sections ignored)."""
    found: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        found.setdefault(key.strip(), []).append(value.strip())
    return found


@pytest.fixture
def unit_path(tmp_path: Path) -> Path:
    """The units, with ExecStart= pointing at an executable that exists on this machine."""
    program = tmp_path / "bin" / "kick-monitor"
    program.parent.mkdir()
    program.write_text("#!/bin/sh\nexit 0\n")
    program.chmod(0o755)
    staged = tmp_path / "units"
    staged.mkdir()
    for unit in UNITS.iterdir():
        text = unit.read_text()
        (staged / unit.name).write_text(text.replace(EXEC, str(program)))
    return staged


def analyze(unit_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert ANALYZE is not None
    return subprocess.run(
        [ANALYZE, *args], capture_output=True, text=True, timeout=30, check=False,
        env={"SYSTEMD_UNIT_PATH": f"{unit_path}:", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "SYSTEMD_PAGER": ""},
    )


@needs_analyze
def test_units_pass_systemd_analyze_verify(unit_path: Path) -> None:
    done = analyze(unit_path, "verify", "kick-monitor.service", "kick-monitor@3.service", "kick-monitor.target")
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr


@needs_analyze
def test_the_encrypted_credentials_drop_in_of_install_sh_verifies(unit_path: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("x-secret-value\n")
    shown = subprocess.run(["sh", str(REPO / "scripts" / "install.sh"), "--dry-run", "--encrypt",
                            "--client-secret-from", str(secret)], capture_output=True, text=True, timeout=30,
                           check=False, cwd=REPO)
    assert shown.returncode == 0, shown.stderr
    marker = "+ write /etc/systemd/system/kick-monitor.service.d/credentials.conf (mode 0644)\n"
    body = shown.stdout.split(marker, 1)[1].split("\n+ ", 1)[0]
    drop_in = "\n".join(line.removeprefix("    ") for line in body.splitlines()) + "\n"
    assert "LoadCredential=\n" in drop_in and "LoadCredentialEncrypted=client_secret" in drop_in
    for unit in ("kick-monitor.service", "kick-monitor@.service"):
        (unit_path / f"{unit}.d").mkdir()
        (unit_path / f"{unit}.d" / "credentials.conf").write_text(drop_in)
    done = analyze(unit_path, "verify", "kick-monitor.service", "kick-monitor@3.service")
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr
    security = analyze(unit_path, "security", "--offline=yes", "kick-monitor.service")
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", security.stdout)
    assert match and float(match.group(1)) <= 1.4, security.stdout[-500:]


@needs_analyze
def test_exposure_score_is_low_and_recorded_in_the_docs(unit_path: Path) -> None:
    docs = (REPO / "docs" / "deployment.md").read_text()
    for unit in ("kick-monitor.service", "kick-monitor@3.service"):
        done = analyze(unit_path, "security", "--offline=yes", unit)
        assert done.returncode == 0, done.stderr
        match = re.search(r"Overall exposure level for \S+: ([0-9.]+) (\w+)", done.stdout)
        assert match, done.stdout[-500:]
        score, verdict = float(match.group(1)), match.group(2)
        assert score <= 2.0, f"{unit}: exposure {score} {verdict}"
        assert f"exposure level {score} {verdict}" in docs, f"docs/deployment.md should record {score} {verdict}"


@pytest.mark.parametrize("name", ["kick-monitor.service", "kick-monitor@.service"])
def test_units_keep_the_service_contracts(name: str) -> None:
    unit = directives(UNITS / name)
    one = {key: values[-1] for key, values in unit.items()}
    assert one["Type"] == "notify"
    assert one["User"] == one["Group"] == "kick-monitor"
    assert one["Restart"] == "on-failure"
    assert set(one["RestartPreventExitStatus"].split()) == {"2", "78"}, "config errors are not retried"
    assert one["KillMode"] == "mixed"
    assert one["WatchdogSec"] == "30s", "the coordinator pings every 15 s; a hung one is restarted"
    drain = load_settings(environ={}).drain_timeout
    assert float(one["TimeoutStopSec"]) >= 2 * drain + 5, "workers' then writer's drain bound, plus the kill wait"
    assert "/etc/kick-monitor/kick-monitor.env" in unit["EnvironmentFile"]
    for setting in unit.get("Environment", []):
        assert setting.partition("=")[0] in FIELD_BY_KEY, setting
        assert FIELD_BY_KEY[setting.partition("=")[0]] not in SECRET_FIELDS, "secrets are credentials"
    assert set(unit["LoadCredential"]) == SECRET_FIELDS, "every secret can come as a credential, by its name"
    commented = re.findall(r"^#LoadCredentialEncrypted=(\w+)$", (UNITS / name).read_text(), re.MULTILINE)
    assert set(commented) == SECRET_FIELDS, "the encrypted alternative is shown for every secret"
    for key, value in HARDENING.items():
        assert one.get(key) == value, f"{name}: {key}={one.get(key)!r}, want {value!r}"
    assert "@system-service" in unit["SystemCallFilter"]
    if name == "kick-monitor@.service":
        assert one["ExecStart"] == f"{EXEC} run --shard-index %i --shard-count ${{KICK_MONITOR_SHARD_COUNT}}"
        assert one["PartOf"] == "kick-monitor.target" and one["WantedBy"] == "kick-monitor.target"
    else:
        assert one["ExecStart"] == f"{EXEC} run"


def test_service_tells_systemd_ready_and_stopping(database_url: str, tmp_path: Path) -> None:
    """Type=notify: READY=1 once the children run, STOPPING=1 on SIGTERM, on $NOTIFY_SOCKET."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify = tmp_path / "notify.sock"
    sock.bind(str(notify))
    sock.settimeout(0.2)
    messages: list[str] = []

    def received(text: str) -> bool:
        try:
            while True:
                messages.append(sock.recv(4096).decode())
        except TimeoutError:
            pass
        return any(text in m for m in messages)

    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": str(REPO), "NOTIFY_SOCKET": str(notify),
        "KICK_MONITOR_DATABASE_URL": database_url, "KICK_MONITOR_DATA_DIR": str(tmp_path / "data"),
        "KICK_MONITOR_LOG_FORMAT": "json",
        "KICK_MONITOR_PUSHER_URL": "ws://127.0.0.1:9/app/key", "KICK_MONITOR_SHARD_COUNT": "1",
    }
    service = Service(env, tmp_path / "service.log")
    try:
        with running(service):
            wait_until(lambda: received("READY=1"), 30, interval=0, what="READY=1 on $NOTIFY_SOCKET")
            assert service.worker_pids() and service.writer_pid(), "READY=1 comes after the children started"
            assert not received("STOPPING=1")
            assert service.stop() == 0
        assert received("STOPPING=1"), messages
    finally:
        sock.close()


class NotifyListener:
    """A bound AF_UNIX datagram socket standing in for systemd's $NOTIFY_SOCKET."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, str]] = []

    def collect(self, seconds: float = 0.0) -> list[str]:
        """Read what arrives within `seconds` (at least what is queued now); returns the new ones."""
        new: list[str] = []
        deadline = time.monotonic() + seconds
        while True:
            try:
                text = self.sock.recv(4096).decode()
            except TimeoutError:
                if time.monotonic() >= deadline:
                    return new
                continue
            self.messages.append((time.monotonic(), text))
            new.append(text)

    def pings(self, messages: list[str]) -> int:
        return sum(1 for m in messages if "WATCHDOG=1" in m.split("\n"))

    def close(self) -> None:
        self.sock.close()


@pytest.mark.slow  # long end to end: make test-slow
def test_watchdog_pings_stop_while_the_coordinator_hangs(sim: Simulator, database_url: str, tmp_path: Path) -> None:
    """WATCHDOG_USEC=2 s: a ping at least every 2 s while the loop runs, none while it is SIGSTOPped."""
    listener = NotifyListener(tmp_path / "notify.sock")
    env = service_env(sim, database_url, tmp_path / "data", shard_count="1")
    env.update(NOTIFY_SOCKET=str(listener.path), WATCHDOG_USEC="2000000")
    service = Service(env, tmp_path / "service.log")
    try:
        with running(service):
            wait_until(lambda: any("READY=1" in m for m in listener.collect()), 30, interval=0,
                       what="READY=1 on $NOTIFY_SOCKET")
            assert listener.pings(listener.collect(4.5)) >= 3, listener.messages  # one per 1-2 s

            os.kill(service.pid, signal.SIGSTOP)
            try:
                listener.collect()  # whatever was sent before the stop
                hung = listener.collect(3.0)
            finally:
                os.kill(service.pid, signal.SIGCONT)
            assert listener.pings(hung) == 0, f"a stopped coordinator cannot ping: {hung}"

            assert listener.pings(listener.collect(2.5)) >= 1, "pings resume after SIGCONT"
            assert service.children(), "children kept running meanwhile"
            assert service.stop() == 0
        listener.collect()
        assert any("STOPPING=1" in m for _, m in listener.messages)
        first = json.loads(service.log_text().splitlines()[0])
        assert first["msg"] == f"kick-monitor {__version__} starting (all)", "the version is the first log line"
    finally:
        listener.close()
