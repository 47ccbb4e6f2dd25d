"""Token buckets with an injected clock: pure, no I/O, no hidden time.

A bucket holds up to `burst` tokens and refills at `rate` tokens per second.
`take(now, n)` admits n units if n tokens are there (and removes them); it
never admits more than `burst + rate * (now - start)` units in all, whatever
the call pattern. Times are seconds on any monotonic clock (e.g.
`time.monotonic()`); a time earlier than the last one seen counts as the last.

Used by admission (handshakes per second per source IP and globally); meant to
be reused for per-connection message rates.
"""

from __future__ import annotations

import math


class TokenBucket:
    """`rate` tokens/s refill, `burst` capacity; starts full at time `now`.

    A `rate` of 0 means no refill (at most `burst` ever). A bucket is never
    "unlimited": callers that want no limit skip it (e.g. a limit set to 0).
    """

    __slots__ = ("_last", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if rate < 0 or not math.isfinite(rate):
            raise ValueError(f"rate must be a finite number >= 0, got {rate!r}")
        if burst <= 0 or not math.isfinite(burst):
            raise ValueError(f"burst must be a finite number > 0, got {burst!r}")
        self.rate = float(rate)
        self.burst = float(burst)
        self._tokens = float(burst)
        self._last = float(now)

    def _refill(self, now: float) -> None:
        if now > self._last:
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            self._last = now

    def tokens(self, now: float) -> float:
        """Tokens available at `now`."""
        self._refill(now)
        return self._tokens

    def take(self, now: float, n: float = 1) -> bool:
        """Take `n` tokens if there are that many at `now`; True if taken."""
        self._refill(now)
        if n <= self._tokens:
            self._tokens -= n
            return True
        return False

    def wait_time(self, now: float, n: float = 1) -> float:
        """Seconds from `now` until `n` tokens are there (0 if now);
        `math.inf` if never (n > burst, or no refill)."""
        self._refill(now)
        missing = n - self._tokens
        if missing <= 0:
            return 0.0
        if n > self.burst or self.rate == 0:
            return math.inf
        return missing / self.rate

    def full(self, now: float) -> bool:
        """Whether the bucket is full at `now` (it may then be forgotten: a
        fresh bucket would behave the same)."""
        return self.tokens(now) >= self.burst


class KeyedBuckets:
    """One TokenBucket per key (e.g. per source IP), created full on first
    use; full buckets are dropped now and then so memory stays bounded by the
    keys active within the last `burst / rate` seconds."""

    __slots__ = ("_buckets", "_next_sweep", "burst", "max_keys", "rate")

    def __init__(self, rate: float, burst: float, max_keys: int = 100_000) -> None:
        TokenBucket(rate, burst, 0.0)  # validate the parameters
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: dict[object, TokenBucket] = {}
        self._next_sweep = 0.0

    def __len__(self) -> int:
        return len(self._buckets)

    def _bucket(self, key: object, now: float) -> TokenBucket:
        b = self._buckets.get(key)
        if b is None:
            if now >= self._next_sweep or len(self._buckets) >= self.max_keys:
                self.sweep(now)
            b = self._buckets[key] = TokenBucket(self.rate, self.burst, now)
        return b

    def sweep(self, now: float) -> None:
        """Forget the buckets that are full again."""
        self._buckets = {k: b for k, b in self._buckets.items() if not b.full(now)}
        self._next_sweep = now + 10.0

    def take(self, key: object, now: float, n: float = 1) -> bool:
        return self._bucket(key, now).take(now, n)

    def wait_time(self, key: object, now: float, n: float = 1) -> float:
        b = self._buckets.get(key)
        return 0.0 if b is None else b.wait_time(now, n)
