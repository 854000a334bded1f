"""Real captured Kick traffic, shipped with the package so the simulator and the tests work anywhere.

- `captured-frames.jsonl`: 742 frames as received from Kick's Pusher app on 2025-09-14
  (public capture by the KickTalk project): `{"received_at": ..., "frame": {...}}`.
- `lifecycle-samples.json`: real decoded `data` of StreamerIsLive, StopStreamBroadcast and
  LivestreamUpdated from captures of 2023 and 2025.
Copied unchanged from the project's shared reference folder (shared/kick/).
"""

from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent
CAPTURED_FRAMES = DATA_DIR / "captured-frames.jsonl"
LIFECYCLE_SAMPLES = DATA_DIR / "lifecycle-samples.json"
