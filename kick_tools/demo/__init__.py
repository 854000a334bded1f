"""`kick-monitor demo`: an embedded PostgreSQL, the local Kick simulator and the real service, watched live.

What a newcomer runs first (`make demo`). Modules, one job each:
- `cli`: the flags and the entry point (`add_arguments`, `run`);
- `session`: starts, watches and stops the three processes, in that order and reverse;
- `processes`: child processes in their own process groups, stopped by PID;
- `sim_control`: the simulator's control API and the service's metrics endpoint;
- `store`: the demo's database (reset, streamers, committed history);
- `tracker`: joins committed rows with the simulator's sends (counts, rate, latency);
- `view`, `summary`: the live view and the final verdict.
"""

from .cli import HELP, TAKES_SETTINGS, add_arguments, run

__all__ = ["HELP", "TAKES_SETTINGS", "add_arguments", "run"]
