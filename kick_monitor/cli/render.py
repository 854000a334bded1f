"""Plain-text output for the CLI: aligned tables, relative times, terminal-safe cells.

Titles and slugs come from Kick, so every cell is cleaned of control characters (no
escape sequence from a stream title ever reaches the user's terminal) and shortened.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

CONTROL = re.compile(r"\s+")


def clean_cell(text: str | None, width: int = 60) -> str:
    """One line, no control characters, at most `width` characters (with `…` when cut)."""
    if not text:
        return ""
    printable = "".join(ch if unicodedata.category(ch)[0] != "C" else " " for ch in text)
    line = CONTROL.sub(" ", printable).strip()
    return line if len(line) <= width else line[: width - 1] + "…"


def format_age(seconds: float | None) -> str:
    """`5m ago`-style age: seconds under a minute, then minutes, hours, days; `-` if never."""
    if seconds is None:
        return "-"
    if seconds < 1:
        return "just now"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit} ago"
    return f"{int(seconds)}s ago"


def format_duration(seconds: float | None) -> str:
    """`2 h 13 min`-style length: the two largest units; `-` if unknown."""
    if seconds is None:
        return "-"
    total = max(0, int(seconds))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    if minutes:
        return f"{minutes} min"
    return f"{secs} s"


def render_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Left-aligned columns two spaces apart; the last column is not padded."""
    widths = [len(header) for header in headers]
    for row in rows:
        for index, cell in enumerate(row):
            widths[index] = max(widths[index], len(cell))
    lines = []
    for row in (headers, *rows):
        cells = [cell.ljust(widths[index]) for index, cell in enumerate(row[:-1])] + [row[-1]]
        lines.append("  ".join(cells).rstrip())
    return lines
