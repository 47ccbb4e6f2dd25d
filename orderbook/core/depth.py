"""Depth-limited views: what a subscriber of the top N levels holds.

A view turns each full-book delta into the change of the top N: a level
leaving the top N becomes a removal, a level entering it an insert. Its deltas
chain by the view's own last seq (prev_seq), which skips the seqs of changes
that did not touch the top N.
"""

from __future__ import annotations

from .book import Book, Level
from .checksum import CHECKSUM_DEPTH, book_checksum
from .events import Delta, Snapshot


class TopNView:
    __slots__ = ("_ask_worst", "_asks", "_bid_worst", "_bids", "depth", "seq")

    def __init__(self, depth: int, book: Book, seq: int) -> None:
        if depth <= 0:
            raise ValueError("depth must be > 0")
        self.depth = depth
        self.reset(book, seq)

    def reset(self, book: Book, seq: int) -> None:
        self.seq = seq
        bids, asks = book.bids(self.depth), book.asks(self.depth)
        self._bids = dict(bids)
        self._asks = dict(asks)
        self._bid_worst = bids[-1][0] if bids else None
        self._ask_worst = asks[-1][0] if asks else None

    def levels(self) -> tuple[list[Level], list[Level]]:
        """(bids best first, asks best first) as the view holds them."""
        return (
            sorted(self._bids.items(), key=lambda kv: -kv[0]),
            sorted(self._asks.items()),
        )

    def update(self, book: Book, delta: Delta) -> Delta | None:
        """The view's delta for `delta` (already applied to `book`), or None."""
        bids = self._update_bids(book, delta.bids) if delta.bids else ()
        asks = self._update_asks(book, delta.asks) if delta.asks else ()
        if not bids and not asks:
            return None
        prev, self.seq = self.seq, delta.seq
        if self.depth >= CHECKSUM_DEPTH:
            checksum = delta.checksum  # the top 10 are the book's top 10
        else:
            checksum = book_checksum(book.asks(self.depth), book.bids(self.depth))
        return Delta(
            symbol=delta.symbol,
            epoch=delta.epoch,
            seq=delta.seq,
            prev_seq=prev,
            bids=bids,
            asks=asks,
            checksum=checksum,
            event_time_ns=delta.event_time_ns,
            publish_time_ns=delta.publish_time_ns,
        )

    def _update_bids(self, book: Book, changes: tuple[Level, ...]) -> tuple[Level, ...]:
        worst = self._bid_worst
        # A full view has a worst level (depth > 0); the None test only narrows the type.
        if worst is not None and len(self._bids) == self.depth and all(p < worst for p, _ in changes):
            return ()  # all below a full view: invisible
        new = book.bids(self.depth)
        out = _diff(self._bids, new)
        self._bids = dict(new)
        self._bid_worst = new[-1][0] if new else None
        return out

    def _update_asks(self, book: Book, changes: tuple[Level, ...]) -> tuple[Level, ...]:
        worst = self._ask_worst
        if worst is not None and len(self._asks) == self.depth and all(p > worst for p, _ in changes):
            return ()
        new = book.asks(self.depth)
        out = _diff(self._asks, new)
        self._asks = dict(new)
        self._ask_worst = new[-1][0] if new else None
        return out

    def snapshot(self, base: Snapshot) -> Snapshot:
        """`base` (a depth-limited snapshot of the book) restamped with the view's seq.

        The view's book equals the book's top N at every seq from the view's
        last delta to now, so the snapshot is valid at the view's seq too.
        """
        return Snapshot(
            symbol=base.symbol,
            epoch=base.epoch,
            seq=self.seq,
            instrument=base.instrument,
            bids=base.bids,
            asks=base.asks,
            checksum=base.checksum,
            depth=self.depth,
            time_ns=base.time_ns,
        )


def _diff(old: dict[int, int], new: list[Level]) -> tuple[Level, ...]:
    newd = dict(new)
    out = [(p, 0) for p in old if p not in newd]
    out.extend((p, s) for p, s in new if old.get(p) != s)
    return tuple(out)
