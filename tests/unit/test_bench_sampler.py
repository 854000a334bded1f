"""What the benchmark reads of a role's processes: wake-ups between marks, and the host's speed beside them."""

from __future__ import annotations

import subprocess
import sys
import time

from kick_tools.bench import report
from kick_tools.bench.measure import RoleSampler, RoleSpec

# Sleeps 60 times on a pipe it is fed, then waits for its end: each sleep ends in one voluntary switch.
SLEEPER = """
import sys
for _ in range(60):
    sys.stdin.buffer.read(1)
sys.stdin.buffer.read()
"""


def test_the_sampler_counts_the_wake_ups_a_role_made_between_two_marks() -> None:
    child = subprocess.Popen([sys.executable, "-c", SLEEPER], stdin=subprocess.PIPE)
    try:
        time.sleep(0.3)  # started and asleep on its first read
        sampler = RoleSampler(lambda: {"sleeper": RoleSpec((child.pid,))}, interval=60).start()
        sampler.mark("start")
        assert child.stdin is not None
        for _ in range(60):
            child.stdin.write(b"x")
            child.stdin.flush()
            time.sleep(0.005)  # the child reads it and sleeps again before the next byte comes
        time.sleep(0.2)
        sampler.mark("end")
        sampler.stop()
        woken = sampler.wakeups_between("start", "end")["sleeper"]
        assert 60 <= woken <= 90, woken  # one a byte; a few more are the interpreter's, never hundreds
    finally:
        child.kill()
        child.wait()


def test_every_result_says_how_fast_the_host_was() -> None:
    speed = report.host_speed(repeats=2)
    assert 1 < speed["python_ns_per_step"] < 100_000
    assert 1 < speed["zlib_mb_per_s"] < 100_000
    result = {"scenario": "X", "title": "t", "date": "2026-12-03", "runs": [], "summary": {}, "targets": [],
              "notes": [], "machine": {"host_speed": speed}}
    assert f"{report.fmt(speed['python_ns_per_step'])} ns a Python step" in report.markdown(result)
