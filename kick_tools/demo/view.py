"""Rendering the demo: a full screen for terminals (80×24 is enough), one line per tick otherwise.

Plain ANSI only: cursor home, clear each line, clear below; no curses. Slugs pass through
`clean_cell`, so nothing from the simulated world can put an escape sequence on screen.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import TextIO

from kick_monitor.cli.render import clean_cell, render_table

from .sim_control import ShardState
from .tracker import Committed

HOME, CLEAR_LINE, CLEAR_BELOW = "\x1b[H", "\x1b[K", "\x1b[J"
HIDE_CURSOR, SHOW_CURSOR, CLEAR_SCREEN = "\x1b[?25l", "\x1b[?25h", "\x1b[2J"
SHARDS_PER_LINE = 3
MAX_SHARD_LINES = 3  # then `… and N more`: the view stays within 24 rows
RECENT_ROWS = 10


@dataclass
class Snapshot:
    """Everything one frame of the view shows."""

    elapsed: float
    duration: float | None
    streamers: int
    shard_count: int
    flip_rate: float
    counts: dict[str, int]
    sent: int
    committed: int
    rate: float
    p50: float | None
    p99: float | None
    joined: int
    shards: dict[int, ShardState] | None
    recent: list[Committed] = field(default_factory=list)


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes:02d}:{secs:02d}"


def shard_cells(shards: dict[int, ShardState] | None, shard_count: int) -> list[str]:
    """`#0 up   75 subs` per shard (`?` until the metrics endpoint answers)."""
    cells = []
    for shard in range(shard_count):
        state = (shards or {}).get(shard)
        if state is None:
            cells.append(f"#{shard:<2} ?   -")
        else:
            cells.append(f"#{shard:<2} {'up  ' if state.connected else 'DOWN'} {state.subscriptions:>5} subs")
    return cells


def render_screen(s: Snapshot) -> list[str]:
    """The full view, at most ~22 lines of at most 80 columns."""
    until = f" / {clock(s.duration)}" if s.duration is not None else ""
    lines = [
        f"kick-monitor demo  {clock(s.elapsed)}{until}  ·  {s.streamers} streamers, {s.shard_count} shards,"
        f" {s.flip_rate:g} flips/s",
        "",
        f"streamers    online {s.counts['online']:>6}   offline {s.counts['offline']:>6}"
        f"   unknown {s.counts['unknown']:>6}",
        f"committed    {s.committed:>6} transitions of {s.sent} sent · {s.rate:6.1f}/s",
        f"latency      send→commit p50 {ms(s.p50)} · p99 {ms(s.p99)}  ({s.joined} measured)",
    ]
    cells = shard_cells(s.shards, s.shard_count)
    rows = [cells[i : i + SHARDS_PER_LINE] for i in range(0, len(cells), SHARDS_PER_LINE)]
    for number, row in enumerate(rows[:MAX_SHARD_LINES]):
        label = "shards" if number == 0 else ""
        lines.append(f"{label:<13}" + "   ".join(f"{cell:<19}" for cell in row).rstrip())
    if len(rows) > MAX_SHARD_LINES:
        lines.append(f"{'':<13}… and {len(cells) - MAX_SHARD_LINES * SHARDS_PER_LINE} more shards")
    lines += ["", "last transitions"]
    table = [
        [
            time.strftime("%H:%M:%S", time.localtime(c.recorded_at)),
            clean_cell(c.slug, 20),
            c.status,
            c.source,
            f"{c.latency_ms:8.1f} ms" + ("" if c.from_send else " (from receive)"),
        ]
        for c in reversed(s.recent)
    ]
    lines += ["  " + line for line in render_table(["time", "streamer", "status", "source", "latency"], table)]
    lines += [""] * (RECENT_ROWS - len(table)) + ["", "Ctrl-C stops the demo (the service drains first)"]
    return lines


def render_line(s: Snapshot) -> str:
    """One status line for logs and pipes."""
    shards = s.shards or {}
    up = sum(1 for state in shards.values() if state.connected)
    subs = sum(state.subscriptions for state in shards.values())
    return (
        f"[{clock(s.elapsed)}] online {s.counts['online']} offline {s.counts['offline']}"
        f" unknown {s.counts['unknown']} | committed {s.committed}/{s.sent} sent, {s.rate:.1f}/s"
        f" | latency p50 {ms(s.p50)} p99 {ms(s.p99)} | shards up {up}/{s.shard_count}, {subs} subs"
    )


class Screen:
    """Redraws in place on a terminal; `close()` puts the cursor back."""

    def __init__(self, stream: TextIO = sys.stdout) -> None:
        self.stream = stream
        self.started = False

    def draw(self, lines: list[str], width: int, height: int) -> None:
        if not self.started:
            self.stream.write(HIDE_CURSOR + CLEAR_SCREEN)
            self.started = True
        shown = [line[:width] for line in lines[: max(1, height - 1)]]
        self.stream.write(HOME + "".join(line + CLEAR_LINE + "\n" for line in shown) + CLEAR_BELOW)
        self.stream.flush()

    def close(self) -> None:
        if self.started:
            self.stream.write(SHOW_CURSOR)
            self.stream.flush()
            self.started = False
