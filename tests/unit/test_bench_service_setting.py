"""`kick-monitor bench --service-setting NAME=VALUE`: a setting of the service under test, checked
against Settings before anything starts (a typo must not run a 3-run scenario with the default)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from kick_tools.bench import cli, scenarios


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_settings_are_parsed_in_order_and_normalised() -> None:
    args = parse("--service-setting", "batch_size=50", "--service-setting", "API-RATE = 40")
    assert args.service_setting == [("batch_size", "50"), ("api_rate", "40")]


@pytest.mark.parametrize("bad", ["batch_size", "batch_size=", "no_such_setting=1", "=5"])
def test_a_bad_setting_is_a_usage_error(bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse("--service-setting", bad)
    assert exit_info.value.code == 2
    assert "--service-setting" in capsys.readouterr().err


def test_they_go_after_the_scenario_own_settings(tmp_path: Path) -> None:
    ctx = scenarios.BenchContext(work=tmp_path, db=None, service_settings=(("api_rate", "7"),))  # type: ignore[arg-type]
    scaled = scenarios.scaled(scenarios.S4, ctx)
    assert scaled.settings == (("api_rate", scenarios.S4_API_RATE), ("api_rate", "7"))
    assert dict(scaled.settings)["api_rate"] == "7"  # the last one wins where they are applied
    assert scenarios.scaled(scenarios.S2, scenarios.BenchContext(work=tmp_path, db=None)).settings == ()  # type: ignore[arg-type]


def test_api_latency_is_seconds_and_a_bad_one_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert parse("--api-latency", "0.15").api_latency == 0.15
    assert parse().api_latency == 0.0
    for bad in ("-1", "nan", "inf", "fast", "90"):
        with pytest.raises(SystemExit) as exit_info:
            parse("--api-latency", bad)
        assert exit_info.value.code == 2
        assert "--api-latency" in capsys.readouterr().err
