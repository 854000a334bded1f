"""Exit codes of every kick-monitor process, in one place.

The names follow sysexits(3) where a sysexits code exists. Two values differ from
sysexits on purpose and are part of the documented CLI contract (README, llms.txt):
usage and configuration errors exit 2 (as argparse does), not EX_USAGE's 64.

systemd units use these: `RestartPreventExitStatus=2 78` (restarting cannot fix a bad
configuration), and the supervisor stops respawning a child that exits `EX_CONFIG`.
"""

from __future__ import annotations

EX_OK = 0
EX_FAILURE = 1  # something failed at run time (database down, a conflict, a crash)
EX_USAGE = 2  # bad arguments or bad configuration: fix the command line or the config
EX_BOOT = 3  # a forked role failed before it started working (the supervisor counts these)
EX_CONFIG = 78  # sysexits EX_CONFIG: fatal configuration seen at run time (Pusher 4001 wrong app key)
EX_INTERRUPTED = 130  # the CLI was interrupted by Ctrl-C (128 + SIGINT)
