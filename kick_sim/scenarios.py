"""Traffic generators: random live/offline flips and replayed chat/goal noise.

Both are paced by one scheduler that keeps the long-run rate exact: when the loop falls
behind it catches up in a batch instead of drifting, and bursts send groups back to back.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import orjson

from kick_sim.events import LIFECYCLE_EVENTS, encode_frame
from kick_sim.state import SimError, World
from kick_sim.subscriptions import channel_form

SPACINGS = ("poisson", "even")
MAX_CATCH_UP = 2000  # units per wake-up before yielding to the loop
CHATROOM_ID_RE = re.compile(r'"chatroom_id":\d+')


async def run_paced(
    rate: float,
    action: Callable[[int], None],
    rng: random.Random,
    duration: float | None = None,
    burst: int | None = None,
    spacing: str = "poisson",
) -> None:
    """Call action(n) so `rate` units/s happen on average, in groups of `burst` (default 1)."""
    group = max(burst or 1, 1)
    mean_gap = group / rate
    start = time.monotonic()
    end = start + duration if duration is not None else float("inf")
    due = start
    while due < end:
        now = time.monotonic()
        batch = 0
        while due <= now and due < end and batch < MAX_CATCH_UP:
            batch += group
            due += rng.expovariate(1.0 / mean_gap) if spacing == "poisson" else mean_gap
        if batch:
            action(batch)
        await asyncio.sleep(max(0.0, min(due, end) - time.monotonic()))


class Flipper:
    """Random streamers toggle live/offline at a target rate until stopped or the duration ends."""

    def __init__(self, flip: Callable[[bool], None], rng: random.Random) -> None:
        self._flip = flip  # flip(send_event)
        self._rng = rng
        self._task: asyncio.Task[None] | None = None
        self.flips = 0

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(
        self,
        rate: float,
        duration: float | None = None,
        burst: int | None = None,
        spacing: str = "poisson",
        missed_fraction: float = 0.0,
    ) -> None:
        """Replace any running flipper; `missed_fraction` of flips change REST truth silently."""
        if rate <= 0 or (duration is not None and duration <= 0) or (burst is not None and burst < 1):
            raise SimError("rate and duration must be > 0, burst >= 1")
        if spacing not in SPACINGS or not 0.0 <= missed_fraction <= 1.0:
            raise SimError(f"spacing must be one of {SPACINGS}, missed_fraction 0..1")
        self.stop()

        def flip_many(count: int) -> None:
            for _ in range(count):
                self._flip(self._rng.random() >= missed_fraction)
            self.flips += count

        self._task = asyncio.create_task(run_paced(rate, flip_many, self._rng, duration, burst, spacing))

    def stop(self) -> int:
        """Cancel flipping; returns the number of flips made so far."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
        return self.flips

    async def wait_done(self) -> None:
        """Return when the flipper's duration has run out (or it was stopped)."""
        if self._task is not None:
            await asyncio.wait({self._task})


@dataclass(frozen=True, slots=True)
class NoiseTemplate:
    """A captured non-lifecycle frame and the channel form it arrived on."""

    event: str
    data: str
    form: str  # "chatrooms" | "channel." | "channel_"


def load_noise_templates(path: Path) -> list[NoiseTemplate]:
    """Chat, goal and moderation frames from a capture; lifecycle frames are left out."""
    try:
        lines = path.read_bytes().splitlines()
    except OSError as exc:
        raise SimError(f"cannot read captured frames for noise from {path}: {exc}") from exc
    templates = []
    for line in lines:
        frame = orjson.loads(line).get("frame", {}) if line.strip() else {}
        event, data, channel = frame.get("event"), frame.get("data"), frame.get("channel")
        if not isinstance(event, str) or not isinstance(data, str) or not isinstance(channel, str):
            continue
        form = channel_form(channel)
        if event in LIFECYCLE_EVENTS or event.startswith("pusher") or form is None:
            continue
        templates.append(NoiseTemplate(event, data, form[0]))
    if not templates:
        raise SimError(f"no usable noise frames in {path}")
    return templates


class NoiseReplayer:
    """Sends captured frames onto random subscribed channels of simulated streamers."""

    def __init__(
        self,
        path: Path,
        sample: Callable[[str, random.Random], str | None],
        world: World,
        publish: Callable[[str, bytes], int],
        rng: random.Random,
    ) -> None:
        self._path = path
        self._sample = sample  # SubscriptionIndex.sample: a random subscribed channel of a form
        self._world = world
        self._publish = publish
        self._rng = rng
        self._templates: list[NoiseTemplate] = []
        self._task: asyncio.Task[None] | None = None
        self.rate = 0.0
        self.frames = 0  # frames written to subscribers
        self.skipped = 0  # picks with no subscribed channel of the needed form

    def set_rate(self, rate: float) -> None:
        """Frames per second from now on; 0 stops the noise."""
        if rate < 0:
            raise SimError("noise rate must be >= 0")
        if rate > 0 and not self._templates:
            self._templates = load_noise_templates(self._path)
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self.rate = rate
        if rate > 0:
            self._task = asyncio.create_task(run_paced(rate, self.emit, self._rng, spacing="poisson"))

    def emit(self, count: int) -> None:
        """Send `count` noise frames now."""
        for _ in range(count):
            template = self._templates[self._rng.randrange(len(self._templates))]
            channel = self._sample(template.form, self._rng)
            target = channel_form(channel) if channel else None
            if channel is None or target is None or not self._belongs_to_streamer(target):
                self.skipped += 1
                continue
            data = template.data
            if template.form == "chatrooms":
                data = CHATROOM_ID_RE.sub(f'"chatroom_id":{target[1]}', data, count=1)
            self.frames += self._publish(channel, encode_frame(template.event, data, channel))

    def _belongs_to_streamer(self, target: tuple[str, int]) -> bool:
        form, number = target
        ids = self._world.by_chatroom_id if form == "chatrooms" else self._world.by_channel_id
        return number in ids
