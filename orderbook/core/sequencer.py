"""A symbol's book together with its (epoch, seq) stamp.

Every update that changes the book is one change: seq grows by exactly one
and a `Delta` with only the effective level changes is returned. An update
that changes nothing consumes no seq.
"""

from __future__ import annotations

from .book import Book, Level
from .checksum import CHECKSUM_DEPTH, book_checksum
from .errors import ChecksumMismatch, EpochMismatch, InvalidUpdate, SequenceGap
from .events import BookUpdate, Delta, Snapshot
from .instrument import Instrument


# Sizes travel as uint64; a value past int64 is what a negative number
# written into that field looks like, and no real book holds it.
MAX_SIZE = 2**63 - 1


class SequencedBook:
    __slots__ = ("instrument", "book", "epoch", "seq", "_checksum")

    def __init__(self, instrument: Instrument, epoch: int, seq: int = 0) -> None:
        self.instrument = instrument
        self.book = Book()
        self.epoch = epoch
        self.seq = seq
        self._checksum = self.book.checksum()

    def validate(self, update: BookUpdate) -> None:
        """Raise `InvalidUpdate` unless every level is on the grids and sizes are >= 0."""
        pinc = self.instrument.price_increment
        sinc = self.instrument.size_increment
        for side, levels in (("bid", update.bids), ("ask", update.asks)):
            for price, size in levels:
                if type(price) is not int or type(size) is not int:
                    raise InvalidUpdate(update.symbol, f"{side} level {price}x{size} is not integral")
                if size < 0 or size > MAX_SIZE:
                    raise InvalidUpdate(update.symbol, f"{side} {price}: size {size} out of range")
                if pinc > 1 and price % pinc:
                    raise InvalidUpdate(
                        update.symbol, f"{side} price {price} is not a multiple of {pinc} ticks"
                    )
                if sinc > 1 and size % sinc:
                    raise InvalidUpdate(
                        update.symbol, f"{side} {price}: size {size} not a multiple of {sinc} lots"
                    )

    def apply(self, update: BookUpdate, now_ns: int = 0) -> Delta | None:
        """Apply a validated update; return the stamped delta, or None if nothing changed."""
        book = self.book
        if update.replace:
            bids, asks = self._replace(update)
            top_changed = True
        else:
            # The checksum covers the top 10 only: a change strictly below the
            # 10th level (when there is one) cannot alter it, so it is reused.
            bid_floor = book.nth_bid_price(CHECKSUM_DEPTH - 1)
            ask_ceiling = book.nth_ask_price(CHECKSUM_DEPTH - 1)
            # Last write wins within one update; record only effective changes.
            bids = _apply_side(book.set_bid, update.bids)
            asks = _apply_side(book.set_ask, update.asks)
            top_changed = (
                bool(bids) and (bid_floor is None or any(p >= bid_floor for p, _ in bids))
            ) or (bool(asks) and (ask_ceiling is None or any(p <= ask_ceiling for p, _ in asks)))
        if not bids and not asks:
            return None
        if top_changed:
            self._checksum = book.checksum()
        prev = self.seq
        self.seq = prev + 1
        return Delta(
            symbol=self.instrument.symbol,
            epoch=self.epoch,
            seq=self.seq,
            prev_seq=prev,
            bids=bids,
            asks=asks,
            checksum=self._checksum,
            event_time_ns=update.event_time_ns,
            publish_time_ns=now_ns,
        )

    def restore(self, snapshot: Snapshot) -> None:
        """Become the (full) book of a snapshot taken elsewhere, checksum verified."""
        self.book.replace(snapshot.bids, snapshot.asks)
        self.seq = snapshot.seq
        self._checksum = self.book.checksum()
        if self._checksum != snapshot.checksum:
            raise ChecksumMismatch(snapshot.symbol, snapshot.seq, snapshot.checksum, self._checksum)

    def follow(self, delta: Delta) -> None:
        """Apply a delta sequenced elsewhere (by the cluster's sequencer):
        it must continue this book exactly and leave the stated checksum."""
        if delta.epoch != self.epoch:
            raise EpochMismatch(delta.symbol, self.epoch, delta.epoch)
        if delta.prev_seq != self.seq:
            raise SequenceGap(delta.symbol, self.seq, delta.prev_seq)
        book = self.book
        for price, size in delta.bids:
            book.set_bid(price, size)
        for price, size in delta.asks:
            book.set_ask(price, size)
        self.seq = delta.seq
        self._checksum = book.checksum()
        if self._checksum != delta.checksum:
            raise ChecksumMismatch(delta.symbol, delta.seq, delta.checksum, self._checksum)

    def _replace(self, update: BookUpdate) -> tuple[tuple[Level, ...], tuple[Level, ...]]:
        book = self.book
        # Last write wins per price, as in an incremental update; then the
        # zero sizes (removals) are dropped from the new book.
        new_bids = {p: s for p, s in dict(update.bids).items() if s}
        new_asks = {p: s for p, s in dict(update.asks).items() if s}
        bids = _diff(dict(book.bids()), new_bids)
        asks = _diff(dict(book.asks()), new_asks)
        book.replace(new_bids.items(), new_asks.items())
        return bids, asks

    def snapshot(self, depth: int = 0, now_ns: int = 0) -> Snapshot:
        book = self.book
        bids = book.bids(depth)
        asks = book.asks(depth)
        return Snapshot(
            symbol=self.instrument.symbol,
            epoch=self.epoch,
            seq=self.seq,
            instrument=self.instrument,
            bids=tuple(bids),
            asks=tuple(asks),
            checksum=_checksum_of(asks, bids),
            depth=depth,
            time_ns=now_ns,
        )


def _checksum_of(asks: list[Level], bids: list[Level]) -> int:
    return book_checksum(asks[:CHECKSUM_DEPTH], bids[:CHECKSUM_DEPTH])


def _apply_side(setter, levels: tuple[Level, ...]) -> tuple[Level, ...]:
    if not levels:
        return ()
    if len(levels) == 1:
        price, size = levels[0]
        return levels if setter(price, size) != size else ()
    # Several levels: the same price may appear twice; the final size counts,
    # compared with the size before the whole update.
    before: dict[int, int] = {}
    final: dict[int, int] = {}
    for price, size in levels:
        old = setter(price, size)
        before.setdefault(price, old)
        final[price] = size
    return tuple((p, s) for p, s in final.items() if before[p] != s)


def _diff(old: dict[int, int], new: dict[int, int]) -> tuple[Level, ...]:
    out = [(p, 0) for p in old if p not in new]
    out.extend((p, s) for p, s in new.items() if old.get(p) != s)
    return tuple(out)
