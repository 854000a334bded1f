"""`kick-monitor sim` as a real subprocess: ready file, URLs on stdout, SIGTERM, truth file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from kick_tools.harness import child_env, sim_argv
from tests.sim import connect, subscribe

_command = sim_argv


def _env() -> dict[str, str]:
    return child_env()


@pytest.fixture()
def process(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    ready = tmp_path / "ready.json"
    proc = subprocess.Popen(
        _command("--streamers", "30", "--rate", "100", "--ready-file", str(ready),
                 "--truth-out", str(tmp_path / "truth.jsonl"), "--activity-timeout", "30"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
    )
    try:
        deadline = time.monotonic() + 20
        while not ready.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "simulator never wrote its ready file"
            time.sleep(0.05)
        yield proc
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=10)


def test_cli_serves_until_sigterm(process: subprocess.Popen[str], tmp_path: Path) -> None:
    info = json.loads((tmp_path / "ready.json").read_text())
    assert info["pid"] == process.pid
    assert {"pusher_url", "api_base_url", "oauth_token_url", "web_api_base_url", "control_url"} <= set(info)
    stats = requests.get(f"{info['control_url']}/control/stats", timeout=5).json()
    assert stats["streamers"] == 30 and stats["flipping"] is True
    ws = connect(info["pusher_url"])
    try:
        assert subscribe(ws, "channel.1")["event"] == "pusher_internal:subscription_succeeded"
    finally:
        ws.close()
    time.sleep(0.2)
    os.kill(process.pid, signal.SIGTERM)
    stdout, _ = process.communicate(timeout=15)
    assert process.returncode == 0
    lines = stdout.splitlines()
    assert any(info["pusher_url"] in line and not line.startswith("{") for line in lines)
    assert json.loads(next(line for line in lines if line.startswith("{"))) == info
    truth = [json.loads(line) for line in (tmp_path / "truth.jsonl").read_text().splitlines()]
    assert len(truth) >= 5 and truth[0]["seq"] == 1


def test_help_documents_every_knob() -> None:
    result = subprocess.run(_command("--help"), capture_output=True, text=True, env=_env(), timeout=30, check=True)
    for flag in ("--host", "--port", "--http-port", "--control-port", "--app-key", "--streamers", "--rate",
                 "--duration", "--live-fraction", "--lifecycle-channels", "--activity-timeout", "--token-ttl",
                 "--client-id", "--client-secret", "--noise-rate", "--seed", "--truth-out", "--ready-file",
                 "--force-public-control"):
        assert flag in result.stdout, flag


def test_non_loopback_host_is_refused() -> None:
    result = subprocess.run(
        _command("--host", "0.0.0.0"), capture_output=True, text=True, env=_env(), timeout=30, check=False
    )
    assert result.returncode == 2
    assert "non-loopback" in result.stderr
