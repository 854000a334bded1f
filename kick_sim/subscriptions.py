"""Who is subscribed to what: channel -> connections, plus O(1) random picks per channel form.

Publishing looks subscribers up by channel name (one dict lookup, however many thousands
of channels a connection holds); noise replay picks a random subscribed channel of a
given form ("chatrooms", "channel.", "channel_") without scanning.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Hashable
from typing import Generic, TypeVar

Conn = TypeVar("Conn", bound=Hashable)

FORMS = ("chatrooms", "channel.", "channel_")
_FORM_RE = re.compile(r"chatrooms\.(\d+)\.v2|(channel[._])(\d+)")


def channel_form(name: str) -> tuple[str, int] | None:
    """("chatrooms"|"channel."|"channel_", id) for Kick's public channel names, else None."""
    match = _FORM_RE.fullmatch(name)
    if match is None:
        return None
    if match.group(1) is not None:
        return "chatrooms", int(match.group(1))
    return match.group(2), int(match.group(3))


class _Sampler:
    """A set with O(1) add, remove and uniform random choice (swap-remove list)."""

    def __init__(self) -> None:
        self._items: list[str] = []
        self._pos: dict[str, int] = {}

    def add(self, item: str) -> None:
        if item not in self._pos:
            self._pos[item] = len(self._items)
            self._items.append(item)

    def remove(self, item: str) -> None:
        pos = self._pos.pop(item, None)
        if pos is None:
            return
        last = self._items.pop()
        if pos < len(self._items):
            self._items[pos] = last
            self._pos[last] = pos

    def choice(self, rng: random.Random) -> str | None:
        return self._items[rng.randrange(len(self._items))] if self._items else None


class SubscriptionIndex(Generic[Conn]):
    """Channel name -> set of connections subscribed to it."""

    def __init__(self) -> None:
        self.channels: dict[str, set[Conn]] = {}
        self.total = 0  # (connection, channel) pairs
        # issue 17: while not None, every change as (wall time, channel, +1/-1, subscribers after it,
        # the connection's socket id)
        self.journal: list[tuple[float, str, int, int, str]] | None = None
        self._samplers = {form: _Sampler() for form in FORMS}

    def add(self, channel: str, conn: Conn, who: str = "") -> bool:
        """Subscribe; False if it already was. `who` names the connection in the journal."""
        subscribers = self.channels.get(channel)
        if subscribers is None:
            subscribers = self.channels[channel] = set()
            form = channel_form(channel)
            if form is not None:
                self._samplers[form[0]].add(channel)
        if conn in subscribers:
            return False
        subscribers.add(conn)
        self.total += 1
        if self.journal is not None:
            self.journal.append((time.time(), channel, 1, len(subscribers), who))
        return True

    def remove(self, channel: str, conn: Conn, who: str = "") -> bool:
        """Unsubscribe; False if it was not subscribed."""
        subscribers = self.channels.get(channel)
        if subscribers is None or conn not in subscribers:
            return False
        subscribers.discard(conn)
        self.total -= 1
        if self.journal is not None:
            self.journal.append((time.time(), channel, -1, len(subscribers), who))
        if not subscribers:
            del self.channels[channel]
            form = channel_form(channel)
            if form is not None:
                self._samplers[form[0]].remove(channel)
        return True

    def subscribers(self, channel: str) -> set[Conn] | None:
        """The live set (do not mutate) or None when nobody listens."""
        return self.channels.get(channel)

    def sample(self, form: str, rng: random.Random) -> str | None:
        """A random subscribed channel of `form`, or None if there is none."""
        return self._samplers[form].choice(rng)
