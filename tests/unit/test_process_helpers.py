"""kick_monitor.process: the helpers every forked role calls first."""

from __future__ import annotations

import subprocess
import sys

# In a fresh interpreter (the setting is per process): ask for the parent-death signal, read it
# back with PR_GET_PDEATHSIG, and say whether a subprocess ran (find_library's `ldconfig -p` did).
PROBE = """
import ctypes, signal, subprocess
ran = []
real_init = subprocess.Popen.__init__
def spy(self, *args, **kwargs):
    ran.append(args[0] if args else kwargs.get("args"))
    real_init(self, *args, **kwargs)
subprocess.Popen.__init__ = spy
from kick_monitor.process import die_with_parent
die_with_parent(signal.SIGTERM)
value = ctypes.c_int(0)
ctypes.CDLL(None).prctl(2, ctypes.byref(value), 0, 0, 0)  # PR_GET_PDEATHSIG
print(value.value, len(ran))
"""


def test_die_with_parent_sets_the_parent_death_signal_without_running_a_subprocess() -> None:
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=30, check=True)
    signal_number, subprocesses = (int(x) for x in done.stdout.split())
    assert signal_number == 15  # SIGTERM
    assert subprocesses == 0
