"""Jittered exponential backoff for reconnecting subscribers.

Pure: it computes delays and never sleeps or reads a clock, so the caller
decides how to wait and tests can drive it directly.
"""

from __future__ import annotations

import math
import random


class Backoff:
    """Exponential backoff with "full jitter".

    The n-th delay since the last `reset()` (n counting from 0) is drawn
    uniformly from ``[0, min(cap, base * factor**n)]``. Full jitter spreads
    clients that lost their connection at the same moment (a server restart)
    over the whole window instead of letting them reconnect in lockstep.

    >>> b = Backoff(base=1.0, cap=4.0, rng=random.Random(7))
    >>> [b.ceiling(n) for n in range(4)]
    [1.0, 2.0, 4.0, 4.0]
    >>> 0.0 <= b.next_delay() <= 1.0
    True
    """

    __slots__ = ("_rng", "attempt", "base", "cap", "factor")

    def __init__(
        self,
        base: float = 0.25,
        cap: float = 30.0,
        factor: float = 2.0,
        rng: random.Random | None = None,
    ) -> None:
        if base < 0 or cap < 0:
            raise ValueError("base and cap must be >= 0")
        if factor < 1:
            raise ValueError("factor must be >= 1")
        self.base = base
        self.cap = cap
        self.factor = factor
        self.attempt = 0
        # A private generator: seeding it makes a client's delays reproducible
        # without touching the global `random` state.
        self._rng = rng if rng is not None else random.Random()

    def ceiling(self, attempt: int) -> float:
        """The upper bound of the delay drawn for `attempt` (0-based)."""
        if self.base <= 0 or self.cap <= 0:
            return 0.0
        # Compare in log space first: factor**attempt overflows a float after
        # ~1000 attempts at factor 2, and a client may retry for days.
        if self.factor > 1 and attempt * math.log(self.factor) >= math.log(self.cap / self.base):
            return self.cap
        return min(self.cap, self.base * self.factor**attempt)

    def next_delay(self) -> float:
        """Return the delay before the next attempt and count the attempt."""
        delay = self._rng.uniform(0.0, self.ceiling(self.attempt))
        self.attempt += 1
        return delay

    def reset(self) -> None:
        """Start over from `base` (call after a successful connection)."""
        self.attempt = 0

    def __repr__(self) -> str:
        return f"Backoff(base={self.base}, cap={self.cap}, factor={self.factor}, attempt={self.attempt})"
