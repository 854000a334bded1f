"""The soak's PostgreSQL outages: once at the half by default, `--pg-restarts N` evenly spaced (a
second outage tells a one-off step of the writer's memory at a restart from growth per outage)."""

from __future__ import annotations

import argparse
from itertools import pairwise

import pytest

from kick_tools.bench import cli
from kick_tools.bench.soak import SoakPlan


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_one_outage_at_the_half_by_default() -> None:
    assert parse().pg_restarts == 1
    assert SoakPlan(duration=7200).pg_stop_times() == [3600.0]


def test_several_outages_cut_the_run_into_equal_parts() -> None:
    plan = SoakPlan(pg_restarts=parse("--pg-restarts", "4").pg_restarts).fitted(2400, quick=False)
    assert plan.pg_stop_times() == [480.0, 960.0, 1440.0, 1920.0]
    assert all(b - a > plan.pg_down + plan.fault_window for a, b in pairwise(plan.pg_stop_times()))


@pytest.mark.parametrize("bad", ["0", "-1", "two"])
def test_a_bad_count_is_a_usage_error(bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse("--pg-restarts", bad)
    assert exit_info.value.code == 2
    assert "--pg-restarts" in capsys.readouterr().err
