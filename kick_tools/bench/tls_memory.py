"""What HTTPS connections cost the service tree: urllib3's context per connection against one shared context.

Kick's API is HTTPS in production but plain HTTP to the simulator in every bench scenario, so M and S3
never see this cost. Here a supervisor process imports the product's image (`workers.coordinator`), for
`shared` builds the one context before it forks (kick_monitor/tls.py: `tls.preload`, as the coordinator
does), freezes and forks `--children` children; each opens `--connections` keep-alive HTTPS connections
(a worker's API and token hosts are two) to a loopback TLS server (kick_tools/tls_server.py) with
requests — `requests.Session()` for `per-connection` (what the product did before), `tls.new_session()`
for `shared` — verifying against certifi's bundle plus the server's certificate (REQUESTS_CA_BUNDLE, so
as many CAs are loaded as in production). Then it reads the tree's PSS (footprint.tree_pss: each page
divided among the supervisor and its children) and each child's private memory.

    python -m kick_tools.bench.tls_memory [--children 4] [--connections 2] [--runs 3] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median
from typing import Any

import certifi

from kick_tools.bench import footprint, measure
from kick_tools.bench.report import git_describe

MODES = ("per-connection", "shared")


def supervise(mode: str, children: int, connections: int, url: str) -> int:
    """The measured tree's parent: image, (context), freeze, fork; prints the children's pids once all connected."""
    import requests

    import workers.coordinator  # noqa: F401  (the product's pre-fork image)
    from kick_monitor import tls
    from kick_monitor.preload import freeze_before_fork, preload_role_modules, release_free_memory

    preload_role_modules()
    if mode == "shared":
        tls.preload((url,))
    ready_read, ready_write = os.pipe()
    pids = []
    for _ in range(children):
        freeze_before_fork()
        pid = os.fork()
        if pid == 0:
            sessions = [tls.new_session() if mode == "shared" else requests.Session() for _ in range(connections)]
            for session in sessions:
                assert session.get(url, timeout=10).text == "ok"  # keep-alive: the connection stays pooled
            gc.collect()
            release_free_memory()  # what a role does after a burst: only live memory counts
            os.write(ready_write, b"x")
            signal.pause()
            os._exit(0)
        pids.append(pid)
    for _ in range(children):
        os.read(ready_read, 1)
    print(json.dumps(pids), flush=True)
    signal.pause()
    return 0


def measure_once(mode: str, args: argparse.Namespace, url: str, env: dict[str, str]) -> dict[str, Any]:
    supervisor = subprocess.Popen(
        [sys.executable, "-m", "kick_tools.bench.tls_memory", "--supervise", mode, "--children", str(args.children),
         "--connections", str(args.connections), "--url", url],
        stdout=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        assert supervisor.stdout is not None
        line = supervisor.stdout.readline()
        if not line:
            raise RuntimeError(f"the {mode} supervisor exited ({supervisor.wait()}) before its children connected")
        pids = json.loads(line)
        time.sleep(0.5)
        slots = {"supervisor": supervisor.pid, **{f"child {n}": pid for n, pid in enumerate(pids)}}
        tree = footprint.tree_pss(slots)
        sample = footprint.take_sample(slots)
        private = [sample[f"child {n}"]["private_kb"] / 1024 for n in range(len(pids))]
        return {"mode": mode, "tree_pss_mb": round(sum(tree.values()), 1) if tree else None,
                "tree_pss_by_process_mb": tree, "child_private_mb": round(median(private), 2),
                "supervisor_private_mb": round(sample["supervisor"]["private_kb"] / 1024, 2)}
    finally:
        os.killpg(supervisor.pid, signal.SIGKILL)  # its own group: the supervisor and its children
        supervisor.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--children", type=int, default=4)
    parser.add_argument("--connections", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--supervise", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.supervise:
        return supervise(args.supervise, args.children, args.connections, args.url)
    from kick_tools.tls_server import self_signed

    work = Path(tempfile.mkdtemp(prefix="kick-tls-memory-"))
    cert, key = self_signed(work, "server", "localhost")
    bundle = work / "bundle.pem"
    bundle.write_bytes(Path(certifi.where()).read_bytes() + cert.read_bytes())
    env = {**os.environ, "REQUESTS_CA_BUNDLE": str(bundle)}
    env.pop("CURL_CA_BUNDLE", None)
    server = subprocess.Popen([sys.executable, "-m", "kick_tools.tls_server", str(cert), str(key)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True)
    results: list[dict[str, Any]] = []
    try:
        assert server.stdout is not None
        url = f"https://localhost:{int(server.stdout.readline())}/"
        for run in range(args.runs):
            for mode in MODES:  # interleaved: the machine drifts alike for both
                result = {"run": run + 1, "load": measure.loadavg(), **measure_once(mode, args, url, env)}
                print(json.dumps(result), flush=True)
                results.append(result)
    finally:
        server.kill()
        server.wait()
    summary = {mode: {key: median(r[key] for r in results if r["mode"] == mode)
                      for key in ("tree_pss_mb", "child_private_mb") if all(r[key] is not None for r in results)}
               for mode in MODES}
    report = {"commit": git_describe(), "children": args.children, "connections": args.connections, "runs": results,
              "median": summary}
    print(json.dumps(report["median"]))
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
