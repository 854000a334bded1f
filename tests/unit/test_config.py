"""Settings: precedence of the sources and every way a bad setting is refused."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from kick_monitor.config import SECRET_MASK, ConfigError, Settings, load_settings, parse_env_file

SECRET = "s3cr3t-value-for-tests"


def write_config(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def test_defaults_without_any_source() -> None:
    settings = load_settings(environ={})
    assert settings.database_url is None
    assert settings.data_dir == Path("./var")
    assert settings.metrics_host == "127.0.0.1"
    assert settings.metrics_port == 0
    assert settings.log_format == "auto"
    assert settings.api_base_url == "https://api.kick.com"


def test_cli_beats_environment_beats_file_beats_default(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "km.env",
        "KICK_MONITOR_BATCH_SIZE=10\nKICK_MONITOR_METRICS_PORT=9100\nKICK_MONITOR_LOG_LEVEL=DEBUG\n"
        "KICK_MONITOR_API_RATE=2\n",
    )
    environ = {
        "KICK_MONITOR_BATCH_SIZE": "20",
        "KICK_MONITOR_METRICS_PORT": "9200",
        "KICK_MONITOR_API_RATE": "3",
    }
    settings = load_settings(cli={"batch_size": "30"}, environ=environ, config_file=config)
    assert settings.batch_size == 30  # flag
    assert settings.metrics_port == 9200  # environment over file
    assert settings.api_rate == 3.0
    assert settings.log_level == "DEBUG"  # file over default
    assert settings.flush_interval == Settings.model_fields["flush_interval"].default


def test_cli_values_of_none_are_not_given() -> None:
    settings = load_settings(cli={"metrics_port": None}, environ={"KICK_MONITOR_METRICS_PORT": "9300"})
    assert settings.metrics_port == 9300


def test_config_file_format(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "km.env",
        "# a comment\n; another\n\nexport KICK_MONITOR_CLIENT_ID=abc\n"
        "KICK_MONITOR_METRICS_HOST = '0.0.0.0'\nKICK_MONITOR_DATA_DIR=\"/srv/kick monitor\"\n",
    )
    settings = load_settings(environ={}, config_file=config)
    assert settings.client_id == "abc"
    assert settings.metrics_host == "0.0.0.0"
    assert settings.data_dir == Path("/srv/kick monitor")


def test_empty_optional_values_mean_unset(tmp_path: Path) -> None:
    config = write_config(tmp_path / "km.env", "KICK_MONITOR_CLIENT_ID=\nKICK_MONITOR_CLIENT_SECRET=\n")
    settings = load_settings(environ={"KICK_MONITOR_DATABASE_URL": ""}, config_file=config)
    assert settings.client_id is None and settings.client_secret is None and settings.database_url is None


def test_secrets_are_masked_in_effective_settings() -> None:
    settings = load_settings(
        environ={
            "KICK_MONITOR_CLIENT_SECRET": SECRET,
            "KICK_MONITOR_DATABASE_URL": f"postgresql://u:{SECRET}@db.example:5432/kick",
        }
    )
    shown = settings.effective()
    assert shown["KICK_MONITOR_CLIENT_SECRET"] == SECRET_MASK
    assert shown["KICK_MONITOR_DATABASE_URL"] == SECRET_MASK
    assert SECRET not in repr(settings) and SECRET not in str(shown)


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        (
            {"KICK_MONITOR_DATABASE_URL": "mysql://u:p@h/db"},
            "KICK_MONITOR_DATABASE_URL: must be a URL starting with",
        ),
        ({"KICK_MONITOR_DATABASE_URL": "postgresql://"}, "KICK_MONITOR_DATABASE_URL: must name a host"),
        (
            {"KICK_MONITOR_DATABASE_URL": "postgresql://u:p@h:port/db"},
            "KICK_MONITOR_DATABASE_URL: has a malformed port",
        ),
        (
            {"KICK_MONITOR_DATABASE_URL": "postgresql://u:p@[::1/db"},
            "KICK_MONITOR_DATABASE_URL: Invalid IPv6 URL",
        ),
        (
            {"KICK_MONITOR_PUSHER_URL": "https://ws.example"},
            "KICK_MONITOR_PUSHER_URL: must be a URL starting with ws",
        ),
        ({"KICK_MONITOR_API_BASE_URL": "api.kick.com"}, "KICK_MONITOR_API_BASE_URL: must be a URL"),
        (
            {"KICK_MONITOR_METRICS_PORT": "-1"},
            "KICK_MONITOR_METRICS_PORT: Input should be greater than or equal to 0",
        ),
        (
            {"KICK_MONITOR_METRICS_PORT": "70000"},
            "KICK_MONITOR_METRICS_PORT: Input should be less than or equal",
        ),
        ({"KICK_MONITOR_METRICS_PORT": "nine"}, "KICK_MONITOR_METRICS_PORT: Input should be a valid integer"),
        (
            {"KICK_MONITOR_LOG_FORMAT": "yaml"},
            "KICK_MONITOR_LOG_FORMAT: Input should be 'auto', 'json' or 'text'",
        ),
        ({"KICK_MONITOR_LOG_LEVEL": "LOUD"}, "KICK_MONITOR_LOG_LEVEL: Input should be"),
        ({"KICK_MONITOR_LIFECYCLE_CHANNELS": "all"}, "KICK_MONITOR_LIFECYCLE_CHANNELS: Input should be"),
        ({"KICK_MONITOR_METRICS_HOST": "  "}, "KICK_MONITOR_METRICS_HOST: must not be blank"),
        (
            {"KICK_MONITOR_BATCH_SIZE": "0"},
            "KICK_MONITOR_BATCH_SIZE: Input should be greater than or equal to 1",
        ),
        (
            {"KICK_MONITOR_FLUSH_INTERVAL": "soon"},
            "KICK_MONITOR_FLUSH_INTERVAL: Input should be a valid number",
        ),
    ],
)
def test_bad_environment_values_name_the_key(environ: dict[str, str], expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(environ=environ)
    message = str(caught.value)
    assert message.startswith(expected)
    assert "\n" not in message
    for value in environ.values():  # the offending value is never echoed (it may be a secret)
        assert value.strip() == "" or value not in message


def test_bad_flag_names_the_flag() -> None:
    with pytest.raises(ConfigError, match=r"^--metrics-port: Input should be greater than or equal to 0"):
        load_settings(cli={"metrics_port": "-5"}, environ={})


def test_unknown_cli_setting() -> None:
    with pytest.raises(ConfigError, match="unknown setting nonsense"):
        load_settings(cli={"nonsense": "1"}, environ={})


def test_bad_file_value_names_key_and_file(tmp_path: Path) -> None:
    config = write_config(tmp_path / "km.env", "KICK_MONITOR_METRICS_PORT=-1\n")
    with pytest.raises(ConfigError, match=rf"^KICK_MONITOR_METRICS_PORT \(from {config}\): Input should be"):
        load_settings(environ={}, config_file=config)


def test_several_problems_are_counted_on_one_line() -> None:
    with pytest.raises(ConfigError, match=r"\(and 1 more problem\)$"):
        load_settings(environ={"KICK_MONITOR_METRICS_PORT": "-1", "KICK_MONITOR_BATCH_SIZE": "0"})


def test_unknown_key_in_file_names_its_line(tmp_path: Path) -> None:
    config = write_config(tmp_path / "km.env", "# settings\nKICK_MONITOR_BATCH_SIZE=5\nKICK_MONITOR_BATCHSIZE=5\n")
    with pytest.raises(ConfigError, match=rf"^--config {config}:3: unknown key KICK_MONITOR_BATCHSIZE$"):
        load_settings(environ={}, config_file=config)


def test_line_without_equals_names_its_line(tmp_path: Path) -> None:
    config = write_config(tmp_path / "km.env", "KICK_MONITOR_BATCH_SIZE\n")
    with pytest.raises(ConfigError, match=r":1: expected KEY=VALUE$"):
        load_settings(environ={}, config_file=config)


def test_unbalanced_quotes(tmp_path: Path) -> None:
    config = write_config(tmp_path / "km.env", f'KICK_MONITOR_CLIENT_SECRET="{SECRET}\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(environ={}, config_file=config)
    assert str(caught.value) == f"--config {config}:1: KICK_MONITOR_CLIENT_SECRET: unbalanced quotes"


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read: No such file or directory"):
        load_settings(environ={}, config_file=tmp_path / "absent.env")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
def test_unreadable_file(tmp_path: Path) -> None:
    config = write_config(tmp_path / "km.env", "KICK_MONITOR_BATCH_SIZE=5\n", mode=0o000)
    with pytest.raises(ConfigError, match=r"cannot read: Permission denied"):
        load_settings(environ={}, config_file=config)


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=rf"^--config {tmp_path}: cannot read: Is a directory$"):
        load_settings(environ={}, config_file=tmp_path)


def test_binary_file(tmp_path: Path) -> None:
    config = tmp_path / "km.env"
    config.write_bytes(b"KICK_MONITOR_BATCH_SIZE=\xff\xfe\n")
    with pytest.raises(ConfigError, match=r"not UTF-8 text"):
        parse_env_file(config)


def test_group_readable_file_with_a_secret_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = write_config(tmp_path / "km.env", f"KICK_MONITOR_CLIENT_SECRET={SECRET}\n", mode=0o640)
    with caplog.at_level(logging.WARNING, logger="kick_monitor.config"):
        settings = load_settings(environ={}, config_file=config)
    assert settings.client_secret is not None
    assert any("readable by group or others" in r.getMessage() and "640" in r.getMessage() for r in caplog.records)
    assert SECRET not in caplog.text


def test_private_file_or_file_without_secret_does_not_warn(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    private = write_config(tmp_path / "private.env", f"KICK_MONITOR_CLIENT_SECRET={SECRET}\n", mode=0o600)
    public = write_config(tmp_path / "public.env", "KICK_MONITOR_BATCH_SIZE=5\n", mode=0o644)
    with caplog.at_level(logging.WARNING, logger="kick_monitor.config"):
        load_settings(environ={}, config_file=private)
        load_settings(environ={}, config_file=public)
    assert not [r for r in caplog.records if "readable" in r.getMessage()]


def test_unknown_environment_variable_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="kick_monitor.config"):
        load_settings(environ={"KICK_MONITOR_BATCHSIZE": "5", "KICK_MONITOR_CONFIG": "/x", "OTHER": "1"})
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["ignoring unknown environment variable KICK_MONITOR_BATCHSIZE"]


def test_auto_shard_count() -> None:
    settings = load_settings(environ={"KICK_MONITOR_CHANNELS_PER_CONNECTION": "100"})
    assert settings.resolve_shard_count(0) == 1
    assert settings.resolve_shard_count(100) == 1
    assert settings.resolve_shard_count(101) == 2
    fixed = load_settings(environ={"KICK_MONITOR_SHARD_COUNT": "7"})
    assert fixed.resolve_shard_count(1) == 7
