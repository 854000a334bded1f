"""A durable local spool for changes the database cannot take right now.

Append-only segment files of JSON lines under `<data_dir>/spool/<tree>/`, each append
fsync'ed before the writer acknowledges the changes to the workers. Replay reads the
oldest segment a slice at a time, commits each slice, then deletes the segment; a crash in
between replays it again, which the idempotent history insert absorbs. A torn last line
(crash mid-append) is skipped.
Files are 0600 in a 0700 directory: they hold nothing secret, but nothing for others.
Workers keep one too (`spool/worker-N`, one segment per spill: see `handoff.overflow_spool`)
for changes the writer has not acknowledged in time.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import orjson

from .messages import StatusChange

log = logging.getLogger(__name__)

SEGMENT_BYTES = 16 << 20
READ_ALL = 1 << 30  # a slice size no segment reaches (`read`)
_FIELDS = StatusChange.__slots__


def _ends_whole(path: Path) -> bool:
    """Whether a segment ends with a complete line (or is empty)."""
    with path.open("rb") as f:
        if f.seek(0, os.SEEK_END) == 0:
            return True
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


class SpoolFullError(OSError):
    """The spool reached its configured cap."""


class Spool:
    """Ordered, durable backlog of changes; oldest first."""

    def __init__(self, directory: Path, max_bytes: int, *, segment_bytes: int = SEGMENT_BYTES) -> None:
        """`segment_bytes=0` gives every append its own segment, so it can be removed on its own."""
        self.directory = directory
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(directory, 0o700)
        self._segments = sorted(directory.glob("*.jsonl"))
        self._bytes = sum(p.stat().st_size for p in self._segments)
        self._replaying: Path | None = None  # never append to a segment being replayed
        # ... nor to one whose last line is torn (killed mid-append): the next line would be glued to it
        self._torn = self._segments[-1] if self._segments and not _ends_whole(self._segments[-1]) else None

    @property
    def size_bytes(self) -> int:
        return self._bytes

    @property
    def segments(self) -> tuple[Path, ...]:
        """Segment files, oldest first."""
        return tuple(self._segments)

    def __bool__(self) -> bool:
        return bool(self._segments)

    def append(self, changes: Sequence[StatusChange]) -> Path | None:
        """Write and fsync; the segment written to. Raise OSError (ENOSPC, SpoolFullError, ...)
        if the changes cannot be made durable; then nothing of them is left behind."""
        if not changes:
            return None
        data = b"".join(orjson.dumps([getattr(c, f) for f in _FIELDS]) + b"\n" for c in changes)
        if self._bytes + len(data) > self.max_bytes:
            raise SpoolFullError(f"spool {self.directory} is full ({self._bytes} bytes, cap {self.max_bytes})")
        path = self._tail_segment(len(data))
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            size_before = os.fstat(fd).st_size
            try:
                written = os.write(fd, data)
                if written != len(data):
                    raise OSError(f"short write to {path}")
                os.fsync(fd)
            except OSError:
                os.ftruncate(fd, size_before)  # leave no half batch behind
                raise
        finally:
            os.close(fd)
        if path not in self._segments:
            self._segments.append(path)
            self._fsync_directory()
        self._bytes += len(data)
        return path

    def oldest_path(self) -> Path | None:
        """The oldest segment, or None when empty (read it with `read_slices`)."""
        return self._segments[0] if self._segments else None

    def read(self, path: Path) -> list[StatusChange]:
        """The changes of one segment at once (a worker's spilled segment is one batch it resends)."""
        return [change for part in self.read_slices(path, READ_ALL) for change in part]

    def read_slices(self, path: Path, size: int) -> Iterator[list[StatusChange]]:
        """The changes of one segment, `size` at a time, read line by line: a replay holds one
        slice in memory, not a whole segment (up to 16 MB of lines). Unreadable lines
        (a torn last line) are reported and skipped. From now on nothing is appended to it."""
        self._replaying = path
        return self._slices(path, size)

    @staticmethod
    def _slices(path: Path, size: int) -> Iterator[list[StatusChange]]:
        part: list[StatusChange] = []
        with path.open("rb") as lines:
            for number, line in enumerate(lines, start=1):
                try:
                    part.append(StatusChange(*orjson.loads(line)))
                except (orjson.JSONDecodeError, TypeError) as exc:
                    log.warning("skipping unreadable spool line %s:%d (%s)", path.name, number, exc)
                    continue
                if len(part) >= size:
                    yield part
                    part = []
        if part:
            yield part

    def remove(self, path: Path) -> None:
        """Forget a segment once its changes are committed."""
        size = path.stat().st_size if path.exists() else 0
        path.unlink(missing_ok=True)
        if path in self._segments:
            self._segments.remove(path)
        self._bytes = max(0, self._bytes - size)

    def _tail_segment(self, incoming: int) -> Path:
        if self._segments:
            tail = self._segments[-1]
            if tail not in (self._replaying, self._torn) and tail.stat().st_size + incoming <= self.segment_bytes:
                return tail
            number = int(tail.stem) + 1
        else:
            number = 1
        return self.directory / f"{number:09d}.jsonl"

    def _fsync_directory(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
