"""Conflation: many consecutive deltas of one stream merged into one.

Each price level keeps its last size, so the merged delta sets every level
touched over the interval to its size at the last seq: applied to the book
at the first delta's `prev_seq` it gives the book at the last `seq`. It also
gives that book when applied to the book at any seq in between, because a
level untouched since then already has its final size: a subscriber that
joined mid-interval can take the same changes, with its own `prev_seq`.
"""

from __future__ import annotations

from .book import Level
from .events import Delta


class Conflator:
    """Accumulates deltas until `take()`; pure, no clock."""

    __slots__ = ("_asks", "_bids", "_first", "_last", "count", "symbol")

    def __init__(self, symbol: str) -> None:
        self.symbol = symbol
        self._bids: dict[int, int] = {}
        self._asks: dict[int, int] = {}
        self._first: Delta | None = None
        self._last: Delta | None = None
        self.count = 0  # deltas merged since the last take

    def __bool__(self) -> bool:
        return self._last is not None

    @property
    def prev_seq(self) -> int | None:
        return None if self._first is None else self._first.prev_seq

    @property
    def seq(self) -> int | None:
        return None if self._last is None else self._last.seq

    def add(self, delta: Delta) -> None:
        if self._last is not None and delta.prev_seq != self._last.seq:
            raise ValueError(f"{self.symbol}: delta {delta.seq} does not follow {self._last.seq}")
        if self._first is None:
            self._first = delta
        self._last = delta
        self.count += 1
        bids, asks = self._bids, self._asks
        for price, size in delta.bids:
            bids[price] = size
        for price, size in delta.asks:
            asks[price] = size

    def take(self, prev_seq: int | None = None) -> Delta | None:
        """The merged delta (None if nothing was added) and a fresh start.

        `prev_seq` relabels it for a subscriber that holds a later seq than
        the first merged delta's (one that joined mid-interval)."""
        delta = self.peek(prev_seq)
        self._bids, self._asks = {}, {}
        self._first = self._last = None
        self.count = 0
        return delta

    def peek(self, prev_seq: int | None = None) -> Delta | None:
        """The merged delta so far, without resetting."""
        first, last = self._first, self._last
        if first is None or last is None:
            return None
        return Delta(
            symbol=self.symbol,
            epoch=last.epoch,
            seq=last.seq,
            prev_seq=first.prev_seq if prev_seq is None else prev_seq,
            bids=_levels(self._bids, reverse=True),
            asks=_levels(self._asks, reverse=False),
            checksum=last.checksum,
            event_time_ns=last.event_time_ns,
            publish_time_ns=last.publish_time_ns,
        )


def _levels(levels: dict[int, int], reverse: bool) -> tuple[Level, ...]:
    # Best first, like every other delta.
    return tuple(sorted(levels.items(), reverse=reverse))
