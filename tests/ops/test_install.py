"""scripts/install.sh, scripts/ops.sh and the Makefile's ops targets.

`--dry-run` lists every action and changes nothing on this machine; `--destdir` lays the
files out for real in a staging directory (modes, the env file kept on a second run);
ops.sh refuses bad input with one line; `make help` lists the ops targets.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.service import REPO

pytestmark = pytest.mark.timeout(60)

INSTALL = REPO / "scripts" / "install.sh"
OPS = REPO / "scripts" / "ops.sh"
SYSTEM_PATHS = ("/etc/kick-monitor", "/var/lib/kick-monitor", "/opt/kick-monitor",
                "/etc/systemd/system/kick-monitor.service", "/etc/systemd/system/kick-monitor@.service")


def sh(script: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", str(script), *args], capture_output=True, text=True, timeout=30, check=False,
                          env={**os.environ, **(env or {})}, cwd=REPO)


def user_exists(name: str) -> bool:
    return subprocess.run(["getent", "passwd", name], capture_output=True, check=False).returncode == 0


def test_dry_run_lists_every_action_and_changes_nothing() -> None:
    before = {path: os.path.exists(path) for path in SYSTEM_PATHS}
    had_user = user_exists("kick-monitor")
    done = sh(INSTALL, "--dry-run", "--shards", "2")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    if not had_user:
        assert "+ useradd --system --user-group --home-dir /var/lib/kick-monitor" in out
    assert "+ install -d -m 0750 -o kick-monitor -g kick-monitor /var/lib/kick-monitor" in out
    if not before["/etc/kick-monitor"]:
        example = REPO / "etc" / "kick-monitor.env.example"
        assert f"+ install -m 0600 -o root -g root {example} /etc/kick-monitor/kick-monitor.env" in out
    assert "+ write /etc/kick-monitor/shard-1.env (mode 0600)" in out and "KICK_MONITOR_METRICS_PORT=9401" in out
    assert f"/opt/kick-monitor/bin/python -m pip install --quiet --upgrade {REPO}" in out
    assert "/etc/systemd/system/" in out and "kick-monitor@.service" in out
    assert "systemctl enable --now kick-monitor.target kick-monitor@0.service kick-monitor@1.service" in out
    assert {path: os.path.exists(path) for path in SYSTEM_PATHS} == before, "a dry run creates nothing"
    assert user_exists("kick-monitor") == had_user


def test_destdir_install_is_idempotent_and_keeps_the_env_file(tmp_path: Path) -> None:
    root = tmp_path / "root"
    first = sh(INSTALL, "--destdir", str(root), "--shards", "2")
    assert first.returncode == 0, first.stderr
    env_file = root / "etc/kick-monitor/kick-monitor.env"
    assert env_file.read_text() == (REPO / "etc/kick-monitor.env.example").read_text()
    assert oct(env_file.stat().st_mode & 0o777) == "0o600"
    assert oct((root / "var/lib/kick-monitor").stat().st_mode & 0o777) == "0o750"
    assert (root / "etc/kick-monitor/shard-1.env").read_text().splitlines()[1:] == [
        "KICK_MONITOR_SHARD_COUNT=2", "KICK_MONITOR_METRICS_PORT=9401"]
    for unit in ("kick-monitor.service", "kick-monitor@.service", "kick-monitor.target"):
        assert (root / "etc/systemd/system" / unit).read_text() == (REPO / "etc/systemd" / unit).read_text()
    env_file.write_text("KICK_MONITOR_CLIENT_ID=mine\n")
    second = sh(INSTALL, "--destdir", str(root))
    assert second.returncode == 0, second.stderr
    assert "exists: kept as it is" in second.stdout
    assert env_file.read_text() == "KICK_MONITOR_CLIENT_ID=mine\n", "never overwritten"


def test_credentials_from_files_never_shown_and_stored_private(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("install-secret-2f8a6c\n")
    password = tmp_path / "password"
    password.write_text("install-password-9d3b1e\n")
    flags = ("--client-secret-from", str(secret), "--database-password-from", str(password))
    dry = sh(INSTALL, "--dry-run", *flags)
    assert dry.returncode == 0, dry.stderr
    assert "+ write /etc/credstore/client_secret (mode 0600; the secret itself is not shown)" in dry.stdout
    assert "+ write /etc/credstore/database_password (mode 0600" in dry.stdout
    encrypted = sh(INSTALL, "--dry-run", "--encrypt", *flags)
    assert encrypted.returncode == 0, encrypted.stderr
    encrypt = "+ systemd-creds encrypt --name=client_secret <secret> /etc/credstore.encrypted/client_secret"
    assert encrypt in encrypted.stdout
    assert "LoadCredentialEncrypted=database_password" in encrypted.stdout, "the drop-in that loads them"
    root = tmp_path / "root"
    staged = sh(INSTALL, "--destdir", str(root), *flags)
    assert staged.returncode == 0, staged.stderr
    for name, source in (("client_secret", secret), ("database_password", password)):
        stored = root / "etc/credstore" / name
        assert stored.read_text() == source.read_text()
        assert oct(stored.stat().st_mode & 0o777) == "0o600"
    assert oct((root / "etc/credstore").stat().st_mode & 0o777) == "0o700"
    again = sh(INSTALL, "--destdir", str(root))
    assert "credential client_secret exists: kept" in again.stdout
    for done in (dry, encrypted, staged, again):
        assert "install-secret-2f8a6c" not in done.stdout + done.stderr
        assert "install-password-9d3b1e" not in done.stdout + done.stderr


def test_extras_are_installed_only_when_asked_for() -> None:
    """A plain install gets neither supervisor nor the embedded PostgreSQL; --extras adds them."""
    plain = sh(INSTALL, "--dry-run")
    assert f"-m pip install --quiet --upgrade {REPO}\n" in plain.stdout
    both = sh(INSTALL, "--dry-run", "--extras", "supervisor,embedded")
    assert both.returncode == 0, both.stderr
    assert f"-m pip install --quiet --upgrade {REPO}[supervisor,embedded]\n" in both.stdout


def test_install_refuses_bad_input() -> None:
    assert sh(INSTALL, "--shards", "x", "--dry-run").returncode == 2
    assert sh(INSTALL, "--bogus").returncode == 2
    assert sh(INSTALL, "--dry-run", "--client-secret-from", "/nonexistent/secret").returncode == 2
    assert sh(INSTALL, "--destdir", "/tmp/x", "--encrypt").returncode == 2
    assert "unknown extra 'pgserver'" in sh(INSTALL, "--dry-run", "--extras", "pgserver").stderr
    assert sh(INSTALL, "--dry-run", "--extras", "supervisor", "--source", "kick-monitor==1.0.1").returncode == 2
    assert "Install kick-monitor" in sh(INSTALL, "--help").stdout


def test_ops_script_usage_errors() -> None:
    assert sh(OPS).returncode == 2
    bad = sh(OPS, "restart-shard", "three", env={"KICK_MONITOR_MANAGER": "supervisor"})
    assert bad.returncode == 2 and "shard number" in bad.stderr
    off = sh(OPS, "metrics", env={"KICK_MONITOR_METRICS_PORT": "0"})
    assert off.returncode == 2 and "metrics are off" in off.stderr


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_help_lists_the_ops_targets() -> None:
    done = subprocess.run(["make", "-s", "help"], capture_output=True, text=True, timeout=30, check=False, cwd=REPO)
    assert done.returncode == 0, done.stderr
    listed = {line.split()[0] for line in done.stdout.splitlines() if line.startswith("  ")}
    assert {"install-systemd", "restart-shard", "logs", "metrics"} <= listed
    dry = subprocess.run(["make", "-n", "restart-shard", "N=3"], capture_output=True, text=True, timeout=30,
                         check=False, cwd=REPO)
    assert "sh scripts/ops.sh restart-shard 3" in dry.stdout
    preview = subprocess.run(["make", "-n", "install-systemd", "DRY_RUN=1", "SHARDS=4"], capture_output=True,
                             text=True, timeout=30, check=False, cwd=REPO)
    assert "sh scripts/install.sh --dry-run --shards 4" in preview.stdout
