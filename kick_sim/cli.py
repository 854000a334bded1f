"""`kick-monitor sim`: run the simulator as its own process until SIGTERM or Ctrl-C.

Scripts start it with --ready-file and read the URLs from there (or from the one JSON line
on stdout), then drive it through the control API.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys

from kick_sim.config import (
    KICK_APP_KEY,
    TEST_CLIENT_ID,
    TEST_CLIENT_SECRET,
    SimConfig,
)
from kick_sim.engine import Engine
from kick_sim.state import SimError, export_truth
from kick_sim.webhook_settings import DeliverySettings, WebhookFaults, parse_range_text

# What `kick-monitor sim` shows and passes (entry point kick_monitor.commands: sim = kick_sim.cli).
HELP = "run the local Kick simulator (Pusher server + API)"
TAKES_SETTINGS = False
EXIT_OK = 0
EXIT_CONFIG = 2  # bad arguments, or a port that cannot be bound


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Every simulator knob as a command-line option."""
    net = parser.add_argument_group("listening (ports 0 = chosen by the OS)")
    net.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    net.add_argument("--port", type=int, default=0, help="Pusher websocket port")
    net.add_argument("--http-port", type=int, default=0, help="official API + OAuth + web API port")
    net.add_argument("--control-port", type=int, default=0, help="control API port")
    net.add_argument(
        "--force-public-control", action="store_true", help="allow a non-loopback --host (exposes the control API)"
    )
    pusher = parser.add_argument_group("Pusher")
    pusher.add_argument("--app-key", default=KICK_APP_KEY, help="accepted app key (default Kick's, %(default)s)")
    pusher.add_argument("--activity-timeout", type=int, default=120, help="advertised activity_timeout, seconds")
    pusher.add_argument(
        "--idle-timeout", type=float, default=None, help="close silent clients with 4201 after this (activity+30)"
    )
    pusher.add_argument("--no-server-pings", action="store_true", help="never send pusher:ping to idle clients")
    pusher.add_argument(
        "--lifecycle-channels", choices=("dot", "underscore", "both"), default="both",
        help="publish lifecycle events on channel.{id}, channel_{id} or both (default %(default)s)",
    )
    pusher.add_argument(
        "--subscription-error-style", choices=("subscription_error", "pusher_error"), default="subscription_error",
        help="how a failed subscribe is reported (default %(default)s)",
    )
    world = parser.add_argument_group("streamers and traffic")
    world.add_argument("--streamers", type=int, default=0, help="streamers to create at start")
    world.add_argument("--prefix", default="streamer", help="slug prefix ([a-z0-9_]); slugs are PREFIX_N")
    world.add_argument("--live-fraction", type=float, default=0.0, help="share of streamers live at start")
    world.add_argument("--rate", type=float, default=0.0, help="random live/offline flips per second (0 = none)")
    world.add_argument("--duration", type=float, default=None, help="stop flipping after this many seconds")
    world.add_argument("--burst", type=int, default=None, help="flip in groups of this size, back to back")
    world.add_argument("--spacing", choices=("poisson", "even"), default="poisson", help="flip spacing")
    world.add_argument("--missed-fraction", type=float, default=0.0, help="share of flips sent without a frame")
    world.add_argument("--noise-rate", type=float, default=0.0, help="replayed chat/goal frames per second")
    world.add_argument("--noise-file", default=None, help="captured frames (JSON lines) to replay as noise")
    world.add_argument("--seed", type=int, default=1, help="random seed (ids, flips, noise)")
    api = parser.add_argument_group("REST API and OAuth")
    api.add_argument("--client-id", default=TEST_CLIENT_ID, help="accepted client id (a fake test value)")
    api.add_argument("--client-secret", default=TEST_CLIENT_SECRET, help="accepted client secret (a fake test value)")
    api.add_argument("--token-ttl", type=float, default=3600.0, help="expires_in of issued tokens, seconds")
    api.add_argument("--max-batch", type=int, default=50, help="most slugs/user ids per official API request")
    api.add_argument("--rate-limit", type=int, default=None, help="API requests allowed per --rate-window")
    api.add_argument(
        "--profile", choices=("today", "classic"), default="today",
        help="today: web API behind Cloudflare, v1 livestreams deprecated (default); classic: both open",
    )
    api.add_argument(
        "--livestreams-v1", choices=("ok", "deprecated", "404", "410"), default=None,
        help="how /public/v1/livestreams answers (default: by --profile)",
    )
    api.add_argument("--wrong-data-over", type=int, default=None,
                     help="channels requests naming more streamers than this get wrong live data")
    api.add_argument("--event-subscription-limit", type=int, default=10_000,
                     help="most Events API (webhook) subscriptions the app may hold (default %(default)s)")
    api.add_argument("--rate-window", type=float, default=60.0, help="rate limit window, seconds")
    hooks = parser.add_argument_group("Events API webhooks (issue 16)")
    hooks.add_argument("--webhook-url", default=None,
                       help="deliver webhooks here (http:// on loopback; also POST /control/webhooks/url)")
    hooks.add_argument("--webhook-key-file", default=None,
                       help="signing key (PEM, RSA): loaded if it exists, else generated and written there (0600)")
    hooks.add_argument("--webhook-timeout", type=float, default=10.0, help="seconds per delivery attempt")
    hooks.add_argument("--webhook-retry-base", type=float, default=1.0, help="first retry after this; doubles")
    hooks.add_argument("--webhook-retry-max", type=float, default=60.0, help="longest wait between attempts")
    hooks.add_argument("--webhook-max-attempts", type=int, default=10, help="attempts per message, then given up")
    hooks.add_argument("--webhook-unsubscribe-after", type=int, default=20,
                       help="consecutive failed attempts after which Kick drops the subscription")
    hooks.add_argument("--webhook-workers", type=int, default=4, help="sender threads")
    hooks.add_argument("--webhook-stamp", choices=("send", "event"), default="send",
                       help="message timestamp: first send (default) or the change's own time")
    hooks.add_argument("--webhook-delay", type=_seconds_range, default=(0.0, 0.0), metavar="LOW:HIGH",
                       help="extra delay before the first attempt, seconds (uniform)")
    hooks.add_argument("--webhook-delay-fraction", type=float, default=1.0, help="share of messages delayed")
    hooks.add_argument("--webhook-drop", type=float, default=0.0, help="probability a message is never sent")
    hooks.add_argument("--webhook-duplicate", type=float, default=0.0, help="probability it is sent twice")
    hooks.add_argument("--webhook-duplicate-after", type=_seconds_range, default=(0.0, 1.0), metavar="LOW:HIGH",
                       help="seconds after the first send a duplicate comes (default 0:1)")
    hooks.add_argument("--webhook-reorder", type=float, default=0.0,
                       help="probability it is held back and released after later ones")
    hooks.add_argument("--webhook-reorder-depth", type=int, default=2,
                       help="held messages are released, newest first, once this many are held")
    hooks.add_argument("--webhook-reorder-max-hold", type=float, default=5.0,
                       help="... or once the oldest held one waited this long, seconds")
    hooks.add_argument("--webhook-corrupt", type=float, default=0.0,
                       help="probability per attempt that the signature does not verify")
    hooks.add_argument("--webhook-replay", type=float, default=0.0,
                       help="probability a delivered message is re-sent unchanged later (--webhook-replay-after)")
    hooks.add_argument("--webhook-replay-after", type=_seconds_range, default=(30.0, 60.0), metavar="LOW:HIGH",
                       help="seconds after delivery a replay comes (default 30:60)")
    out = parser.add_argument_group("output")
    out.add_argument("--truth-out", default=None, help="write every transition here (JSON lines) at shutdown")
    out.add_argument("--ready-file", default=None, help="write a JSON file with all URLs once listening")
    out.add_argument("--log-level", default="WARNING", help="logging level (default %(default)s)")


def _seconds_range(text: str) -> tuple[float, float]:
    try:
        return parse_range_text(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def config_from_args(args: argparse.Namespace) -> SimConfig:
    return SimConfig(
        app_key=args.app_key,
        host=args.host,
        port=args.port,
        http_port=args.http_port,
        control_port=args.control_port,
        activity_timeout=args.activity_timeout,
        idle_timeout=args.idle_timeout,
        server_pings=not args.no_server_pings,
        lifecycle_channels=args.lifecycle_channels,
        subscription_error_style=args.subscription_error_style,
        client_id=args.client_id,
        client_secret=args.client_secret,
        token_ttl=args.token_ttl,
        max_batch=args.max_batch,
        rate_limit=(args.rate_limit, args.rate_window) if args.rate_limit else None,
        noise_rate=args.noise_rate,
        noise_file=args.noise_file,
        seed=args.seed,
        force_public_control=args.force_public_control,
        profile=args.profile,
        livestreams_v1=args.livestreams_v1,
        wrong_data_over=args.wrong_data_over,
        event_subscription_limit=args.event_subscription_limit,
        webhook_key_file=args.webhook_key_file,
        webhook_url=args.webhook_url,
        webhook_delivery=DeliverySettings(
            timeout=args.webhook_timeout, retry_base=args.webhook_retry_base, retry_max=args.webhook_retry_max,
            max_attempts=args.webhook_max_attempts, unsubscribe_after=args.webhook_unsubscribe_after,
            workers=args.webhook_workers, stamp=args.webhook_stamp,
        ),
        webhook_faults=WebhookFaults(
            delay=args.webhook_delay, delay_fraction=args.webhook_delay_fraction, drop=args.webhook_drop,
            duplicate=args.webhook_duplicate, duplicate_after=args.webhook_duplicate_after,
            reorder=args.webhook_reorder, reorder_depth=args.webhook_reorder_depth,
            reorder_max_hold=args.webhook_reorder_max_hold, corrupt=args.webhook_corrupt,
            replay=args.webhook_replay, replay_after=args.webhook_replay_after,
        ),
    )


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM/SIGINT; exit code 0 on a clean stop, 2 on bad settings."""
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        config = config_from_args(args)
    except ValueError as exc:
        print(f"kick-monitor sim: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return asyncio.run(_serve(args, config))


async def _serve(args: argparse.Namespace, config: SimConfig) -> int:
    engine = Engine(config)
    try:
        await engine.start()
        engine.world.create_streamers(args.streamers, args.prefix, args.live_fraction)
        if args.rate > 0:
            engine.start_flipping(
                rate=args.rate, duration=args.duration, burst=args.burst,
                spacing=args.spacing, missed_fraction=args.missed_fraction,
            )
    except (OSError, SimError) as exc:
        print(f"kick-monitor sim: {exc}", file=sys.stderr)
        await engine.stop()
        return EXIT_CONFIG
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        _announce(engine.urls(), args)
        await stop.wait()
    finally:
        await engine.stop()
        if args.truth_out:
            export_truth(engine.world.truth, args.truth_out)
    return EXIT_OK


def _announce(urls: dict[str, str], args: argparse.Namespace) -> None:
    """One human line per URL, one JSON line, and the ready file (written atomically)."""
    for name, url in urls.items():
        print(f"kick sim {name.removesuffix('_url').replace('_', ' ')}: {url}")
    info = {**urls, "pid": os.getpid(), "streamers": args.streamers}
    print(json.dumps(info), flush=True)
    if args.ready_file:
        partial = f"{args.ready_file}.tmp"
        with open(partial, "w") as out:
            json.dump(info, out)
        os.replace(partial, args.ready_file)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kick-monitor sim", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
