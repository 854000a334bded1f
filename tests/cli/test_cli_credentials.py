"""The database password outside the URL: `_FILE`, a systemd credential, libpq's passfile; and what --dry-run says."""

from __future__ import annotations

from pathlib import Path

from kick_monitor.config import SECRET_MASK
from tests.cli.test_cli_basics import assert_one_error
from tests.conftest import CliRunner, PasswordRole


def private(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o600)
    return path


def test_the_role_really_needs_its_password(cli: CliRunner, password_role: PasswordRole) -> None:
    code, out, err = cli("status", env={"KICK_MONITOR_DATABASE_URL": password_role.url})
    assert code == 1 and out == ""
    assert_one_error(err, "cannot connect to")
    wrong = cli("status", env={"KICK_MONITOR_DATABASE_URL": password_role.url,
                               "KICK_MONITOR_DATABASE_PASSWORD": "not-the-password-3f1e"})
    assert wrong.code == 1 and "not-the-password-3f1e" not in wrong.stderr


def test_password_from_a_file_or_a_credential(cli: CliRunner, password_role: PasswordRole, tmp_path: Path) -> None:
    secret = private(tmp_path / "db_password", password_role.password + "\n")
    by_file = cli("status", env={"KICK_MONITOR_DATABASE_URL": password_role.url,
                                 "KICK_MONITOR_DATABASE_PASSWORD_FILE": str(secret)})
    assert by_file.code == 0, by_file.stderr
    creds = tmp_path / "credentials"
    creds.mkdir()
    private(creds / "database_password", password_role.password)
    by_credential = cli("status", env={"KICK_MONITOR_DATABASE_URL": password_role.url,
                                       "CREDENTIALS_DIRECTORY": str(creds)})
    assert by_credential.code == 0, by_credential.stderr
    for result in (by_file, by_credential):
        assert password_role.password not in result.stdout + result.stderr


def test_libpq_passfile_works_as_it_is(cli: CliRunner, password_role: PasswordRole, tmp_path: Path) -> None:
    passfile = private(tmp_path / "pgpass", f"*:*:*:{password_role.name}:{password_role.password}\n")
    done = cli("status", env={"KICK_MONITOR_DATABASE_URL": password_role.url, "PGPASSFILE": str(passfile)})
    assert done.code == 0, done.stderr
    in_url = cli("status", env={"KICK_MONITOR_DATABASE_URL": f"{password_role.url}&passfile={passfile}"})
    assert in_url.code == 0, in_url.stderr


def test_dry_run_calls_a_password_in_the_url_the_weaker_way(
    cli: CliRunner, password_role: PasswordRole, tmp_path: Path
) -> None:
    in_url = password_role.url.replace("@", f":{password_role.password}@", 1)
    code, out, err = cli("--dry-run", env={"KICK_MONITOR_DATABASE_URL": in_url})
    assert code == 0, err
    assert "the password is inside KICK_MONITOR_DATABASE_URL, the weaker way" in out
    separate = cli("--dry-run", env={"KICK_MONITOR_DATABASE_URL": password_role.url,
                                     "KICK_MONITOR_DATABASE_PASSWORD": password_role.password})
    assert separate.code == 0, separate.stderr
    assert "weaker way" not in separate.stdout
    assert f"KICK_MONITOR_DATABASE_PASSWORD={SECRET_MASK}" in separate.stdout
    both = cli("--dry-run", env={"KICK_MONITOR_DATABASE_URL": in_url.replace(password_role.password, "stale-pw-4d2c"),
                                 "KICK_MONITOR_DATABASE_PASSWORD": password_role.password})
    assert both.code == 0, both.stderr
    assert "the password inside the URL is ignored" in both.stdout
    for result in (separate, both):
        assert password_role.password not in result.stdout + result.stderr
    assert password_role.password not in out + err
    assert "stale-pw-4d2c" not in both.stdout + both.stderr


def test_secret_flags_are_refused(cli: CliRunner) -> None:
    code, _, err = cli("status", "--database-password", "hunter2-long")
    assert code == 2
    assert_one_error(err, "--database-password is not accepted on the command line")
    assert "hunter2-long" not in err
