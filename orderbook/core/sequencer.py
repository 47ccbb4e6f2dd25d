"""A symbol's book together with its (epoch, seq) stamp.

Every update that changes the book is one change: seq grows by exactly one
and a `Delta` with only the effective level changes is returned. An update
that changes nothing consumes no seq.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import NoReturn, cast

from .book import Book, Level
from .checksum import CHECKSUM_DEPTH, book_checksum
from .errors import ChecksumMismatch, EpochMismatch, InvalidUpdate, SequenceGap
from .events import BookUpdate, Delta, Snapshot
from .instrument import Instrument

# `Delta(...)` from a tuple of its fields: `tuple.__new__` builds the same
# named tuple without the Python frame of its generated `__new__`, about
# half the cost of a delta on the ingest path.
_new_delta = cast(
    Callable[[tuple[str, int, int, int, tuple[Level, ...], tuple[Level, ...], int, int, int]], Delta],
    partial(tuple.__new__, Delta),
)

# Sizes travel as uint64; a value past int64 is what a negative number
# written into that field looks like, and no real book holds it.
MAX_SIZE = 2**63 - 1


class SequencedBook:
    __slots__ = ("book", "epoch", "instrument", "seq")

    def __init__(self, instrument: Instrument, epoch: int, seq: int = 0) -> None:
        self.instrument = instrument
        self.book = Book()
        self.epoch = epoch
        self.seq = seq

    def validate(self, update: BookUpdate) -> None:
        """Raise `InvalidUpdate` unless every level is on the grids and sizes are >= 0."""
        validate_update(self.instrument, update)

    def apply(self, update: BookUpdate, now_ns: int = 0) -> Delta | None:
        """Apply a validated update; return the stamped delta, or None if nothing changed."""
        book = self.book
        if update.replace:
            bids, asks = self._replace(update)
        else:
            # Last write wins within one update; only effective changes are kept.
            bids, asks = book.apply(update.bids, update.asks)
        if not bids and not asks:
            return None
        prev = self.seq
        seq = self.seq = prev + 1
        # The fields in `Delta`'s order: symbol, epoch, seq, prev_seq, bids,
        # asks, checksum, event_time_ns, publish_time_ns.
        return _new_delta(
            (
                self.instrument.symbol,
                self.epoch,
                seq,
                prev,
                bids,
                asks,
                book.checksum(),  # kept by the book, computed again only if the top changed
                update.event_time_ns,
                now_ns,
            )
        )

    def apply_all(
        self,
        updates: Sequence[BookUpdate],
        now_ns: int,
        deltas: list[Delta],
        on_delta: Callable[[Delta], None] | None = None,
    ) -> None:
        """`apply` each of `updates` (validated, all for this symbol) in order,
        appending the deltas to `deltas`; `on_delta` sees each one right after
        its change, with `self.seq` at its seq.

        The ingest path (`Market.apply`): one call per run of updates to one
        symbol, each update going straight to the book's sides, rather than
        `apply` and `Book.apply` per update; the same deltas as `apply`.
        """
        book = self.book
        symbol, epoch = self.instrument.symbol, self.epoch
        apply_bids, apply_asks = book.updaters()
        checksum = book.checksum
        append = deltas.append
        for update in updates:
            if update.replace:
                delta = self.apply(update, now_ns)
                apply_bids, apply_asks = book.updaters()  # the book has new sides
                if delta is not None:
                    append(delta)
                    if on_delta is not None:
                        on_delta(delta)
                continue
            bids, asks = update.bids, update.asks
            if bids:
                bids = apply_bids(bids)
            if asks:
                asks = apply_asks(asks)
            if not bids and not asks:
                continue
            prev = self.seq
            self.seq = prev + 1
            # As in `apply`: the fields in `Delta`'s order.
            delta = _new_delta((symbol, epoch, prev + 1, prev, bids, asks, checksum(), update.event_time_ns, now_ns))
            append(delta)
            if on_delta is not None:
                on_delta(delta)

    def apply_one(self, update: BookUpdate, now_ns: int = 0) -> Delta | None:
        """`apply` of a validated update, the ingest path's single update
        (`Market.apply` of a one-update batch): the same delta, in fewer calls
        than `apply_all` of one."""
        if update.replace:
            return self.apply(update, now_ns)
        book = self.book
        bids, asks = book.apply(update.bids, update.asks)
        if not bids and not asks:
            return None
        prev = self.seq
        self.seq = prev + 1
        # As in `apply`: the fields in `Delta`'s order.
        return _new_delta(
            (
                self.instrument.symbol,
                self.epoch,
                prev + 1,
                prev,
                bids,
                asks,
                book.checksum(),
                update.event_time_ns,
                now_ns,
            )
        )

    def restore(self, snapshot: Snapshot) -> None:
        """Become the (full) book of a snapshot taken elsewhere, checksum verified."""
        self.book.replace(snapshot.bids, snapshot.asks)
        self.seq = snapshot.seq
        checksum = self.book.checksum()
        if checksum != snapshot.checksum:
            raise ChecksumMismatch(snapshot.symbol, snapshot.seq, snapshot.checksum, checksum)

    def follow(self, delta: Delta) -> None:
        """Apply a delta sequenced elsewhere (by the cluster's sequencer):
        it must continue this book exactly and leave the stated checksum."""
        if delta.epoch != self.epoch:
            raise EpochMismatch(delta.symbol, self.epoch, delta.epoch)
        if delta.prev_seq != self.seq:
            raise SequenceGap(delta.symbol, self.seq, delta.prev_seq)
        book = self.book
        if delta.bids:
            book.apply_bids(delta.bids)
        if delta.asks:
            book.apply_asks(delta.asks)
        self.seq = delta.seq
        checksum = book.checksum()
        if checksum != delta.checksum:
            raise ChecksumMismatch(delta.symbol, delta.seq, delta.checksum, checksum)

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
        # Whole or deep enough: the same top levels the book keeps a checksum of;
        # otherwise, the checksum of the levels this snapshot holds.
        checksum = book.checksum() if not depth or depth >= CHECKSUM_DEPTH else book_checksum(asks, bids)
        return Snapshot(
            symbol=self.instrument.symbol,
            epoch=self.epoch,
            seq=self.seq,
            instrument=self.instrument,
            bids=tuple(bids),
            asks=tuple(asks),
            checksum=checksum,
            depth=depth,
            time_ns=now_ns,
        )


def validate_update(instrument: Instrument, update: BookUpdate) -> None:
    """Raise `InvalidUpdate` unless every level of `update` is a pair of ints
    on the instrument's grids with 0 <= size <= MAX_SIZE."""
    pinc = instrument.price_increment
    sinc = instrument.size_increment
    # One quick pass per side; only a level that fails it is looked at again
    # to say why (`_reject`).
    bids, asks = update.bids, update.asks
    for price, size in bids:
        if type(price) is not int or type(size) is not int or not 0 <= size <= MAX_SIZE:
            _reject(update, pinc, sinc)
    for price, size in asks:
        if type(price) is not int or type(size) is not int or not 0 <= size <= MAX_SIZE:
            _reject(update, pinc, sinc)
    if pinc > 1 or sinc > 1:
        for price, size in bids + asks:
            if price % pinc or size % sinc:
                _reject(update, pinc, sinc)


def validate_updates(instrument: Instrument, updates: Sequence[BookUpdate]) -> None:
    """`validate_update` for each of `updates` in order (the first invalid
    one raises), in one call: a batch's run of updates to one symbol."""
    if instrument.price_increment > 1 or instrument.size_increment > 1:
        for update in updates:
            validate_update(instrument, update)
        return
    # No grids to check: the quick pass of `validate_update` inlined; a
    # level that fails it has `validate_update` say why.
    top = MAX_SIZE
    for update in updates:
        for price, size in update.bids:
            if type(price) is not int or type(size) is not int or not 0 <= size <= top:
                validate_update(instrument, update)
        for price, size in update.asks:
            if type(price) is not int or type(size) is not int or not 0 <= size <= top:
                validate_update(instrument, update)


def _reject(update: BookUpdate, pinc: int, sinc: int) -> NoReturn:
    """Raise `InvalidUpdate` for the first level that breaks a rule, in
    order: bids then asks, each level checked for type, range, then grids."""
    for side, levels in (("bid", update.bids), ("ask", update.asks)):
        for price, size in levels:
            if type(price) is not int or type(size) is not int:
                raise InvalidUpdate(update.symbol, f"{side} level {price}x{size} is not integral")
            if size < 0 or size > MAX_SIZE:
                raise InvalidUpdate(update.symbol, f"{side} {price}: size {size} out of range")
            if pinc > 1 and price % pinc:
                raise InvalidUpdate(update.symbol, f"{side} price {price} is not a multiple of {pinc} ticks")
            if sinc > 1 and size % sinc:
                raise InvalidUpdate(update.symbol, f"{side} {price}: size {size} not a multiple of {sinc} lots")
    raise AssertionError("_reject found no invalid level")


def _diff(old: dict[int, int], new: dict[int, int]) -> tuple[Level, ...]:
    out = [(p, 0) for p in old if p not in new]
    out.extend((p, s) for p, s in new.items() if old.get(p) != s)
    return tuple(out)
