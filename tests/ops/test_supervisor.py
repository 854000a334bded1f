"""etc/supervisor/kick-monitor.conf under a real supervisord, against the simulator and a real database.

The shipped program section is used as it is, with only what must change on a test
machine rewritten: paths (the executable, the env file, the data and log directories),
the shard count (2), the metrics port prefix (a free one), no `user=` (nobody to switch
to) and a shorter `startsecs`. supervisord runs in the foreground in its own session and
is stopped by its PID; every process it started is checked gone afterwards.
"""

from __future__ import annotations

import configparser
import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import requests

from kick_monitor.database import connect
from kick_sim import SimConfig, Simulator
from tests.service import REPO, alive, children_of, insert_streamers, mismatches, service_env, wait_until

# supervisord is not a dependency of the library: it comes with the `supervisor` extra (which
# `make venv` installs through the test extra) or from Debian (`apt-get install supervisor`).
pytest.importorskip("supervisor", reason="needs the supervisor extra: pip install -e '.[supervisor]'")

pytestmark = pytest.mark.timeout(120)

TEMPLATE = REPO / "etc" / "supervisor" / "kick-monitor.conf"
PROGRAM = "program:kick-monitor-shard"
SHARDS = 2
SECRET_FILE = "/etc/kick-monitor/secrets/client_secret"
STREAMERS = 40


def free_port_prefix() -> str:
    """Three digits P such that ports P00 .. P0<SHARDS-1> are free on loopback now."""
    for _ in range(200):
        prefix = str(random.randint(300, 640))
        try:
            for shard in range(SHARDS):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", int(f"{prefix}{shard:02d}")))
        except OSError:
            continue
        return prefix
    raise AssertionError("no free metrics port prefix")


def descendants(pid: int) -> set[int]:
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children_of(todo.pop()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def read_template() -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(inline_comment_prefixes=None)
    parser.read_string(TEMPLATE.read_text())
    return parser


def test_template_keeps_the_operational_promises() -> None:
    program = read_template()[PROGRAM]
    assert program["process_name"] == "%(program_name)s_%(process_num)02d"
    assert program["stopsignal"] == "TERM"
    assert program["stopasgroup"] == "true" and program["killasgroup"] == "true"
    assert program["autorestart"] == "unexpected"
    assert set(program["exitcodes"].split(",")) == {"0", "2", "78"}, "2 and 78 must not be restarted"
    assert int(program["stopwaitsecs"]) >= 2 * 20 + 5, "covers the writer's and the workers' drain bounds"
    command = program["command"]
    assert "--shard-index %(process_num)d" in command
    assert f"--shard-count {program['numprocs']}" in command, "numprocs and --shard-count agree"
    assert "--config /etc/kick-monitor/kick-monitor.env" in command
    assert f'KICK_MONITOR_CLIENT_SECRET_FILE="{SECRET_FILE}"' in program["environment"], "secrets as files"


@pytest.mark.slow  # ~10 s of supervisord end to end (keeps `make test` under 8 minutes)
def test_supervisord_runs_restarts_and_stops_the_shards(
    database_url: str, tmp_path: Path
) -> None:
    sim = Simulator(SimConfig(port=0, http_port=0, control_port=0, seed=3))
    sim.start()
    conn = connect(database_url)
    short = Path(tempfile.mkdtemp(prefix="km-sv-"))  # unix socket paths must stay short
    supervisord: subprocess.Popen[bytes] | None = None
    started: set[int] = set()
    try:
        insert_streamers(conn, sim.create_streamers(STREAMERS))
        data_dir = tmp_path / "data"
        env_file = tmp_path / "kick-monitor.env"
        settings = service_env(sim, database_url, data_dir)
        secret = settings.pop("KICK_MONITOR_CLIENT_SECRET")  # the shipped config's _FILE way instead
        env_file.write_text("".join(f"{k}={v}\n" for k, v in settings.items() if k.startswith("KICK_MONITOR_")))
        env_file.chmod(0o600)
        secret_file = tmp_path / "client_secret"
        secret_file.write_text(secret + "\n")
        secret_file.chmod(0o600)
        prefix = free_port_prefix()
        conf = write_config(tmp_path, short, env_file, data_dir, prefix, secret_file)
        bin_dir = Path(sys.executable).parent
        env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
        env = {k: v for k, v in env.items() if not k.startswith("KICK_MONITOR_")}
        supervisord = subprocess.Popen(
            [sys.executable, "-m", "supervisor.supervisord", "-n", "-c", str(conf)],
            env=env, cwd=tmp_path, start_new_session=True,
            stdout=(tmp_path / "supervisord.out").open("wb"), stderr=subprocess.STDOUT,
        )

        def ctl(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "supervisor.supervisorctl", "-c", str(conf), *args],
                                  env=env, capture_output=True, text=True, timeout=60, check=False)

        def states() -> dict[str, str]:
            lines = ctl("status").stdout.splitlines()
            return {line.split()[0]: line.split()[1] for line in lines if line.strip()}

        names = [f"kick-monitor-shard:kick-monitor-shard_{i:02d}" for i in range(SHARDS)]
        wait_until(lambda: all(states().get(n) == "RUNNING" for n in names), 30, interval=0.3,
                   what=f"both shards RUNNING (supervisorctl status: {states()})")
        wait_until(lambda: sim.subscription_count() >= 2 * STREAMERS, 20, what="both shards subscribed")
        started |= descendants(supervisord.pid)
        pids = {n: int(ctl("pid", n).stdout.strip()) for n in names}

        slugs = [s.slug for s in sim.streamers()]
        for slug in slugs[:10]:
            sim.set_live(slug, True)
        wait_until(lambda: not mismatches(sim, conn), 20, interval=0.2, what="changes committed")

        # the Makefile's `restart-shard` path: scripts/ops.sh → supervisorctl restart
        restart = subprocess.run(
            ["sh", str(REPO / "scripts" / "ops.sh"), "restart-shard", "1"], capture_output=True, text=True,
            timeout=90, check=False,
            env={**env, "KICK_MONITOR_MANAGER": "supervisor", "KICK_MONITOR_SUPERVISOR_CONF": str(conf)},
        )
        assert restart.returncode == 0, restart.stdout + restart.stderr
        assert "stopped" in restart.stdout and "started" in restart.stdout, restart.stdout
        wait_until(lambda: states().get(names[1]) == "RUNNING", 20, what="shard 1 back")
        new_pid = int(ctl("pid", names[1]).stdout.strip())
        assert new_pid != pids[names[1]], "shard 1 runs in a new process"
        assert not alive(pids[names[1]])
        assert int(ctl("pid", names[0]).stdout.strip()) == pids[names[0]], "shard 0 was left alone"
        started |= descendants(supervisord.pid)

        wait_until(lambda: sim.subscription_count() >= 2 * STREAMERS, 20, what="shard 1 subscribed again")
        for slug in slugs:
            sim.set_live(slug, not sim.is_live(slug))
        wait_until(lambda: not mismatches(sim, conn), 30, interval=0.2, what="changes committed after restart")

        assert sim.stats()["tokens_issued"] >= SHARDS, "the client secret was read from its file"
        for pid in descendants(supervisord.pid):
            with contextlib.suppress(OSError):
                assert secret.encode() not in Path(f"/proc/{pid}/environ").read_bytes(), pid
        for shard in range(SHARDS):  # each shard's tree serves its own metrics endpoint
            text = requests.get(f"http://127.0.0.1:{prefix}{shard:02d}/metrics", timeout=5).text
            assert f'kick_monitor_pusher_connected{{shard="{shard}"}} 1.0' in text

        started |= descendants(supervisord.pid)
        supervisord.send_signal(signal.SIGTERM)
        assert supervisord.wait(90) == 0
        leftover = [pid for pid in started if alive(pid)]
        assert not leftover, f"processes outlived supervisord: {leftover}"
        logs = "".join(p.read_text() for p in (tmp_path / "logs").glob("*.log"))
        assert '"level":"ERROR"' not in logs.replace(" ", ""), logs[-2000:]
    finally:
        if supervisord is not None:
            if supervisord.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(supervisord.pid, signal.SIGKILL)
                supervisord.wait(10)
            for pid in started:
                with contextlib.suppress(ProcessLookupError):
                    if alive(pid):
                        os.kill(pid, signal.SIGKILL)
        conn.close()
        sim.stop()
        shutil.rmtree(short, ignore_errors=True)


def write_config(
    tmp_path: Path, short: Path, env_file: Path, data_dir: Path, prefix: str, secret_file: Path
) -> Path:
    """supervisord.conf: a private control socket, plus the shipped program with test paths."""
    template = read_template()
    program = dict(template[PROGRAM])
    numprocs = program["numprocs"]
    command = program["command"]
    for old, new in (
        ("/opt/kick-monitor/bin/kick-monitor", f"{sys.executable} -m kick_monitor.cli.main"),
        ("/etc/kick-monitor/kick-monitor.env", str(env_file)),
        (f"--shard-count {numprocs}", f"--shard-count {SHARDS}"),
        ("--metrics-port 94%(process_num)02d", f"--metrics-port {prefix}%(process_num)02d"),
    ):
        assert old in command, old
        command = command.replace(old, new)
    program.update(
        command=command,
        numprocs=str(SHARDS),
        directory=str(tmp_path),
        startsecs="2",
        stdout_logfile=program["stdout_logfile"].replace("/var/log/kick-monitor", str(tmp_path / "logs")),
        environment=program["environment"].replace("/var/lib/kick-monitor", str(data_dir))
        .replace(SECRET_FILE, str(secret_file))
        + f',PYTHONPATH="{REPO}"',
    )
    program.pop("user")
    (tmp_path / "logs").mkdir()
    config = configparser.RawConfigParser()
    config["supervisord"] = {
        "nodaemon": "true", "logfile": str(tmp_path / "supervisord.log"), "pidfile": str(tmp_path / "supervisord.pid"),
        "childlogdir": str(tmp_path / "logs"), "loglevel": "info",
    }
    config["unix_http_server"] = {"file": str(short / "supervisor.sock"), "chmod": "0700"}
    config["rpcinterface:supervisor"] = {
        "supervisor.rpcinterface_factory": "supervisor.rpcinterface:make_main_rpcinterface"
    }
    config["supervisorctl"] = {"serverurl": f"unix://{short / 'supervisor.sock'}"}
    config[PROGRAM] = program
    path = tmp_path / "supervisord.conf"
    with path.open("w") as handle:
        config.write(handle)
    return path
