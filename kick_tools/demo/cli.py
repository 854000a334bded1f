"""`kick-monitor demo`: its flags and its entry point (entry point kick_monitor.commands: demo)."""

from __future__ import annotations

import argparse

from kick_monitor.cli.errors import EXIT_USAGE, CliError
from kick_monitor.config import Settings

from .session import Demo, DemoOptions

HELP = "embedded database + simulator + the real service, live view"
TAKES_SETTINGS = True  # the settings flags are passed on to the service
EPILOG = """\
Everything lives under DATA_DIR/demo (its own PostgreSQL, sim.log, service.log) and is
reset at every start; a real database is never touched. Settings flags other than those
the demo sets itself (database URL, Kick URLs and credentials, data dir, shard count,
metrics host, log format) are passed on to the service, e.g. --batch-size 100.
Exit 0 when the database matched the simulator at the end, 1 otherwise or when
something could not start (the reason in one line), 130 when interrupted while starting."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The demo's own flags (the settings flags are added by the CLI)."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = (
        "Start an embedded PostgreSQL, the local Kick simulator and the real service (`kick-monitor run`),\n"
        "show live status, throughput and latency, then stop everything and compare the database with\n"
        "the simulator's truth."
    )
    parser.epilog = EPILOG
    defaults = DemoOptions()
    group = parser.add_argument_group("demo")
    group.add_argument("--duration", type=float, metavar="SECONDS", default=defaults.duration,
                       help="stop after this many seconds of flipping (default: until Ctrl-C or SIGTERM)")
    group.add_argument("--streamers", type=int, metavar="N", default=defaults.streamers,
                       help="simulated streamers (default %(default)s)")
    group.add_argument("--rate", type=float, metavar="R", default=defaults.rate,
                       help="live/offline flips per second (default %(default)s; 0 = none)")
    group.add_argument("--live-fraction", type=float, metavar="F", default=defaults.live_fraction,
                       help="share of streamers live at start, 0..1 (default %(default)s)")
    group.add_argument("--noise-rate", type=float, metavar="R", default=defaults.noise_rate,
                       help="chat/goal frames per second the service must ignore (default %(default)s; 0 = none)")
    group.add_argument("--shards", type=int, metavar="N", default=defaults.shards,
                       help="Pusher connections (worker processes) of the service (default %(default)s)")
    group.add_argument("--seed", type=int, metavar="N", default=defaults.seed,
                       help="simulator random seed: ids, flips, noise (default %(default)s)")
    group.add_argument("--sim-port", type=int, metavar="PORT", default=defaults.sim_port,
                       help="simulator's Pusher websocket port on 127.0.0.1 (default 0 = any free port)")
    group.add_argument("--refresh", type=float, metavar="SECONDS", default=defaults.refresh,
                       help="live view refresh interval (default %(default)s)")
    group.add_argument("--plain", action="store_true",
                       help="print a status line every few seconds instead of the full-screen view"
                            " (the default when stdout is not a terminal)")


def options_from(args: argparse.Namespace) -> DemoOptions:
    """Validated DemoOptions; a bad value is a usage error (exit 2)."""
    checks = [
        (args.streamers >= 1, "--streamers must be at least 1"),
        (args.rate >= 0, "--rate must be >= 0"),
        (0.0 <= args.live_fraction <= 1.0, "--live-fraction must be between 0 and 1"),
        (args.noise_rate >= 0, "--noise-rate must be >= 0"),
        (1 <= args.shards <= 64, "--shards must be 1..64"),
        (args.duration is None or args.duration > 0, "--duration must be > 0"),
        (0 <= args.sim_port <= 65535, "--sim-port must be 0..65535"),
        (args.refresh >= 0.1, "--refresh must be at least 0.1"),
    ]
    for ok, message in checks:
        if not ok:
            raise CliError(f"demo: {message}", EXIT_USAGE)
    return DemoOptions(
        streamers=args.streamers, rate=args.rate, live_fraction=args.live_fraction, noise_rate=args.noise_rate,
        shards=args.shards, duration=args.duration, seed=args.seed, sim_port=args.sim_port,
        refresh=args.refresh, plain=args.plain,
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run the demo; 0 when the database agreed with the simulator at the end."""
    return Demo(options_from(args), settings).run()
