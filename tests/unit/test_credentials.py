"""Secret sources: credential > _FILE > environment > config file, file permission rules, re-reading, scrubbing."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr

from kick_monitor.config import SECRET_FIELDS, ConfigError, Settings, load_settings
from kick_monitor.credentials import (
    CREDENTIALS_ENV,
    SecretSources,
    for_role,
    read_secret_file,
    scrub_environment,
)

CRED = "cred-secret-4b7e1d9a"
FILE = "file-secret-8c2f5e0b"
ENV = "env-secret-1a6d3c7f"
CONF = "conf-secret-9e4b2a8d"
ALL = (CRED, FILE, ENV, CONF)


def secret_file(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


@pytest.fixture
def ways(tmp_path: Path) -> dict[str, str]:
    """An environment giving the client secret all four ways."""
    creds = tmp_path / "credentials"
    creds.mkdir()
    secret_file(creds / "client_secret", CRED + "\n")
    secret_file(tmp_path / "client_secret", FILE + "\n")
    secret_file(tmp_path / "km.env", f"KICK_MONITOR_CLIENT_SECRET={CONF}\n")
    return {
        CREDENTIALS_ENV: str(creds),
        "KICK_MONITOR_CLIENT_SECRET_FILE": str(tmp_path / "client_secret"),
        "KICK_MONITOR_CLIENT_SECRET": ENV,
    }


def secret_of(environ: dict[str, str], tmp_path: Path) -> str:
    settings = load_settings(environ=environ, config_file=tmp_path / "km.env")
    assert settings.client_secret is not None
    return settings.client_secret.get_secret_value()


def test_precedence_credential_then_file_then_environment_then_config(
    ways: dict[str, str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        assert secret_of(ways, tmp_path) == CRED
    ignored = caplog.text
    assert "KICK_MONITOR_CLIENT_SECRET_FILE=" in ignored and "is ignored" in ignored
    assert not any(secret in ignored for secret in ALL), "warnings name sources, never values"
    (tmp_path / "credentials" / "client_secret").unlink()
    assert secret_of(ways, tmp_path) == FILE
    del ways["KICK_MONITOR_CLIENT_SECRET_FILE"]
    assert secret_of(ways, tmp_path) == ENV
    del ways["KICK_MONITOR_CLIENT_SECRET"]
    assert secret_of(ways, tmp_path) == CONF


def test_a_flag_still_wins_and_errors_name_the_source(tmp_path: Path) -> None:
    creds = tmp_path / "credentials"
    creds.mkdir()
    secret_file(creds / "database_url", "postgresql://u:pw-7d1e@db.example/kick\n")
    environ = {CREDENTIALS_ENV: str(creds)}
    flagged = load_settings(cli={"database_url": "postgresql://u@flag.example/kick"}, environ=environ)
    assert flagged.database_url == SecretStr("postgresql://u@flag.example/kick")
    secret_file(creds / "database_url", "mysql://u:pw-7d1e@db.example/kick\n")
    with pytest.raises(ConfigError) as refused:
        load_settings(environ=environ)
    assert str(refused.value).startswith("credential database_url ($CREDENTIALS_DIRECTORY/database_url): must be")
    assert "pw-7d1e" not in str(refused.value)


def test_files_and_credentials_are_reread_environment_values_are_captured(tmp_path: Path) -> None:
    path = secret_file(tmp_path / "db_password", "first-pw-0a1b\n")
    environ = {"KICK_MONITOR_DATABASE_PASSWORD_FILE": str(path), "KICK_MONITOR_CLIENT_SECRET": ENV}
    sources = SecretSources.capture(environ)
    assert scrub_environment(environ) == ["KICK_MONITOR_CLIENT_SECRET", "KICK_MONITOR_DATABASE_PASSWORD_FILE"]
    assert environ == {}
    path.write_text("second-pw-2c3d\n")
    settings = load_settings(environ=environ, sources=sources)
    assert settings.database_password == SecretStr("second-pw-2c3d")
    assert settings.client_secret == SecretStr(ENV), "kept from the start although the environment is gone"
    assert ENV not in repr(sources) and ENV not in repr(settings)


@pytest.mark.parametrize(
    ("content", "kept"),
    [("abc-secret\n", "abc-secret"), ("abc-secret\r\n", "abc-secret"), ("abc-secret", "abc-secret"),
     ("two words \n\n", "two words \n")],
)
def test_one_trailing_newline_is_dropped(tmp_path: Path, content: str, kept: str) -> None:
    assert read_secret_file(secret_file(tmp_path / "s", content), "S") == kept


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o444])
def test_readable_by_others_warns(tmp_path: Path, mode: int, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert read_secret_file(secret_file(tmp_path / "s", "a-secret\n", mode), "THE_FILE") == "a-secret"
    assert f"THE_FILE is readable by group or others (mode {mode:o})" in caplog.text
    caplog.clear()
    read_secret_file(secret_file(tmp_path / "p", "a-secret\n", 0o600), "THE_FILE")
    assert caplog.text == ""


def test_refused_files_are_one_line_without_the_secret(tmp_path: Path) -> None:
    cases = {
        "writable by others": secret_file(tmp_path / "w", "a-secret-value\n", 0o602),
        "is empty": secret_file(tmp_path / "e", "\n"),
        "not UTF-8 text": tmp_path / "b",
        "not a regular file": tmp_path / "fifo",
        "cannot read: No such file or directory": tmp_path / "missing",
    }
    os.mkfifo(tmp_path / "fifo", 0o600)
    (tmp_path / "b").write_bytes(b"\xff\xfe-a-secret-value")
    (tmp_path / "b").chmod(0o600)
    for problem, path in cases.items():
        with pytest.raises(ConfigError) as refused:
            read_secret_file(path, f"X_FILE={path}")
        message = str(refused.value)
        assert message.startswith(f"X_FILE={path}: ") and problem in message, message
        assert "\n" not in message and "a-secret-value" not in message


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_a_file_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    path = secret_file(tmp_path / "s", "a-secret-value\n")
    os.chown(path, 65534, 65534)
    with pytest.raises(ConfigError, match=r"owned by uid 65534, not by this service's user \(0\) or root"):
        read_secret_file(path, "S")


def test_cli_exit_2_for_a_bad_secret_file(tmp_path: Path) -> None:
    path = secret_file(tmp_path / "client_secret", "a-secret-value\n", 0o666)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KICK_MONITOR_")}
    env.update(KICK_MONITOR_CLIENT_SECRET_FILE=str(path), PYTHONPATH=str(Path(__file__).parents[2]))
    done = subprocess.run([sys.executable, "-m", "kick_monitor.cli.main", "run", "--data-dir", str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert done.stderr == f"kick-monitor: error: KICK_MONITOR_CLIENT_SECRET_FILE={path}: writable by others" \
        " (mode 666); anyone could swap the secret\n"


def test_scrub_removes_secrets_pointers_and_the_credential_dir_only() -> None:
    environ = {
        "KICK_MONITOR_CLIENT_SECRET": "x", "KICK_MONITOR_DATABASE_URL": "y", "KICK_MONITOR_DATABASE_PASSWORD": "z",
        "KICK_MONITOR_CLIENT_SECRET_FILE": "/p", CREDENTIALS_ENV: "/c", "KICK_MONITOR_CLIENT_ID": "id",
        "KICK_MONITOR_DATA_DIR": "/d", "PATH": "/bin",
    }
    scrub_environment(environ)
    assert environ == {"KICK_MONITOR_CLIENT_ID": "id", "KICK_MONITOR_DATA_DIR": "/d", "PATH": "/bin"}


def test_roles_get_only_their_secrets() -> None:
    settings = load_settings(environ={
        "KICK_MONITOR_CLIENT_SECRET": ENV, "KICK_MONITOR_DATABASE_PASSWORD": "pw-5e6f",
        "KICK_MONITOR_DATABASE_URL": "postgresql://u@h/db", "KICK_MONITOR_CLIENT_ID": "id",
    })
    worker = for_role(settings, "worker")
    assert worker.client_secret is None and worker.client_id == "id"  # the planner asks the API for workers
    planner = for_role(settings, "planner")
    assert planner.client_secret == settings.client_secret and planner.database_url is None
    assert worker.database_url is None and worker.database_password is None
    writer = for_role(settings, "writer")
    assert writer.client_secret is None and writer.database_url is None
    assert for_role(settings, "someone-new").client_secret is None


def test_every_secret_setting_is_declared() -> None:
    """A new SecretStr setting (a webhook secret) gets _FILE, credentials, scrubbing and masking by being listed."""
    typed = {name for name, info in Settings.model_fields.items() if "SecretStr" in str(info.annotation)}
    assert typed == SECRET_FIELDS


def test_scrub_clears_proc_environ_and_what_subprocesses_inherit() -> None:
    """unsetenv alone leaves the strings in /proc/PID/environ; the other variables must survive intact."""
    script = (
        "import subprocess, sys\n"
        "from kick_monitor.credentials import scrub_environment\n"
        "scrub_environment()\n"
        "sys.stdout.write(open('/proc/self/environ', 'rb').read().decode(errors='replace') + '\\n---\\n')\n"
        "sys.stdout.flush()\n"
        "subprocess.run(['env'], check=True)\n"
    )
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(Path(__file__).parents[2]), "KEEP_ME": "kept-value",
           "KICK_MONITOR_CLIENT_SECRET": ENV, "KICK_MONITOR_DATABASE_PASSWORD": "pw-in-env-6a7b",
           "KICK_MONITOR_CLIENT_SECRET_FILE": "/run/secrets/x", "KICK_MONITOR_LOG_LEVEL": "INFO"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=30,
                          check=True)
    block, inherited = done.stdout.split("\n---\n")
    for text in (block, inherited):
        assert ENV not in text and "pw-in-env-6a7b" not in text and "/run/secrets/x" not in text
        assert "KEEP_ME=kept-value" in text and "KICK_MONITOR_LOG_LEVEL=INFO" in text
