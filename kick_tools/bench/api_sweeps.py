"""Requests one reconciliation costs for a large streamer list, per way of asking Kick.

    python -m kick_tools.bench.api_sweeps [--streamers 100000] [--live-fraction 0.1]

Against the simulator (today's profile), counted at the simulator: channels by user id
in batches of 25 and 50, one `/public/v2/livestreams` sweep (1,000 a page, live streams
of all of Kick only), and `/public/v1/users/livestreams` (100 ids a request). Prints a
Markdown table for docs/performance.md.
"""

from __future__ import annotations

import argparse
import time

from pydantic import SecretStr

from kick_monitor.kick_api import KickApiClient
from kick_sim import SimConfig, Simulator


def measure(streamers: int, live_fraction: float, others_live: int) -> list[tuple[str, int, float, str]]:
    """(way, requests, seconds, what it tells) per way of asking."""
    rows = []
    with Simulator(SimConfig(seed=5)) as sim:
        ours = sim.create_streamers(streamers, prefix="ours", live_fraction=live_fraction)
        sim.create_streamers(others_live, prefix="others", live_fraction=1.0)  # the rest of Kick's live streams
        user_ids = [s.user_id for s in ours]

        def client(batch: int = 25) -> KickApiClient:
            return KickApiClient(sim.api_base_url, sim.oauth_token_url, sim.web_api_base_url, sim.config.client_id,
                                 SecretStr(sim.config.client_secret), batch_size=batch, rate=(100_000.0, 1000))

        def run(way: str, what: str, ask: object) -> None:
            before = sum(n for path, n in sim.stats()["api_paths"].items() if path.startswith("/public/"))
            started = time.monotonic()
            ask()  # type: ignore[operator]
            seconds = time.monotonic() - started
            after = sum(n for path, n in sim.stats()["api_paths"].items() if path.startswith("/public/"))
            rows.append((way, after - before, seconds, what))

        for batch in (25, 50):
            api = client(batch)
            run(f"/public/v1/channels?broadcaster_user_id= × {batch}", "every streamer, live or not",
                lambda api=api: api.channels_by_user_id(user_ids))
        api = client()
        run("/public/v2/livestreams?limit=1000 (sweep)", "live streams of all of Kick; absent = offline",
            lambda: api.livestreams_v2())
        run("/public/v1/users/livestreams?user_id= × 100", "live ones among the ids asked",
            lambda: api.users_livestreams(user_ids))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streamers", type=int, default=100_000)
    parser.add_argument("--live-fraction", type=float, default=0.1)
    parser.add_argument("--others-live", type=int, default=20_000, help="live streams on Kick that are not ours")
    args = parser.parse_args()
    rows = measure(args.streamers, args.live_fraction, args.others_live)
    print(f"{args.streamers:,} streamers ({args.live_fraction:.0%} live) + {args.others_live:,} other live streams")
    print("| way | requests per reconcile | at 5 req/s | what the answer tells |")
    print("|---|---|---|---|")
    for way, requests, _seconds, what in rows:
        print(f"| `{way}` | {requests:,} | {requests / 5:,.0f} s | {what} |")


if __name__ == "__main__":
    main()
