"""Graceful drain: when a node is told to stop (SIGTERM, SIGINT), its
subscribers are asked to reconnect elsewhere a few at a time, not all at once.

A rolling restart that closed every subscriber together would send them all
to the other nodes in the same instant (a reconnect herd: handshakes,
snapshots or resumes, all at once). Here each subscriber gets its own close
time: the window is cut into one slot per subscriber, in random order, and
each closes at a random moment within its slot. The closes are as even as a
fixed rate, yet no two nodes drained together line up their clients.

Pure: the caller passes the elapsed time in and does the waiting and the
closing (orderbook/server/app.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from random import Random
from typing import Generic, TypeVar

from .admission import Refusal

# The close a drained subscriber gets: "going away", and the word the
# clients look for to reconnect at once (docs/protocol.md §4.5).
CLOSE_CODE = 1001
CLOSE_REASON = "draining: reconnect"

# A WebSocket upgrade (/ws or /feed) while draining: through a load balancer
# the retry lands on another node; straight at this node it waits a little.
REFUSAL = Refusal(
    503,
    "this node is draining before it stops: reconnect to another node\n",
    (("Retry-After", "1"),),
)

T = TypeVar("T")


class DrainSchedule(Generic[T]):
    """When each of `items` is closed, in seconds after the drain began: one
    slot of `window / n` per item, in shuffled order, at a random point of its
    slot. A window of 0 (or less) closes everything at once."""

    __slots__ = ("_items", "_next", "_times", "window")

    def __init__(self, items: Iterable[T], window: float, rng: Random) -> None:
        order = list(items)
        rng.shuffle(order)
        n = len(order)
        self.window = max(window, 0.0)
        slot = self.window / n if n else 0.0
        self._times = [slot * (i + rng.random()) for i in range(n)]
        self._items = order
        self._next = 0

    def __len__(self) -> int:
        """Items not handed out yet."""
        return len(self._items) - self._next

    @property
    def times(self) -> list[float]:
        """Every item's close time, in order (each within [0, window])."""
        return list(self._times)

    def next_at(self) -> float | None:
        """The close time of the next item, or None when all are handed out."""
        return self._times[self._next] if self._next < len(self._times) else None

    def due(self, elapsed: float) -> list[T]:
        """The items whose close time is at or before `elapsed`, each once."""
        start = self._next
        end = start
        while end < len(self._times) and self._times[end] <= elapsed:
            end += 1
        self._next = end
        return self._items[start:end]
