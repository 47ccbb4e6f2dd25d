"""The receiving side of a book stream: apply snapshots and deltas, verify
continuity (prev_seq) and checksums, and know where to resume from.

Used by the Python client, the load-test users and the tests; it is the
reference for what a client written from docs/protocol.md must do.
"""

from __future__ import annotations

from collections.abc import Iterable

from .book import Book, Level
from .errors import ChecksumMismatch, DuplicateDelta, EpochMismatch, NotSynced, SequenceGap
from .instrument import Instrument
from .resume import ResumePoint


class BookFollower:
    """One symbol's local book. Any `StreamError` leaves it unsynced: the
    caller must resynchronise (a fresh snapshot) before applying more."""

    __slots__ = ("book", "depth", "epoch", "instrument", "seq", "symbol", "synced")

    def __init__(self, symbol: str) -> None:
        self.symbol = symbol
        self.instrument: Instrument | None = None
        self.book = Book()
        self.epoch: int | None = None
        self.seq: int | None = None
        self.depth = 0
        self.synced = False

    def resume_point(self) -> ResumePoint | None:
        if not self.synced or self.epoch is None or self.seq is None:
            return None
        return ResumePoint(self.epoch, self.seq)

    def desync(self) -> None:
        self.synced = False

    def apply_snapshot(
        self,
        epoch: int,
        seq: int,
        bids: Iterable[Level],
        asks: Iterable[Level],
        checksum: int,
        instrument: Instrument | None = None,
        depth: int = 0,
    ) -> None:
        self.book.replace(bids, asks)
        self.epoch, self.seq, self.depth = epoch, seq, depth
        if instrument is not None:
            self.instrument = instrument
        self.synced = False
        self._verify(checksum, seq)
        self.synced = True

    def apply_delta(
        self,
        epoch: int,
        seq: int,
        prev_seq: int,
        bids: Iterable[Level],
        asks: Iterable[Level],
        checksum: int,
    ) -> None:
        if not self.synced:
            raise NotSynced(f"{self.symbol}: delta {seq} before a snapshot")
        if epoch != self.epoch:
            self.synced = False
            raise EpochMismatch(self.symbol, self.epoch or 0, epoch)
        held = self.seq or 0
        if seq <= held:
            self.synced = False
            raise DuplicateDelta(self.symbol, held, seq)
        if prev_seq != held:
            self.synced = False
            raise SequenceGap(self.symbol, held, prev_seq)
        book = self.book
        for price, size in bids:
            book.set_bid(price, size)
        for price, size in asks:
            book.set_ask(price, size)
        self.seq = seq
        self._verify(checksum, seq)

    def check_heartbeat(self, epoch: int, seq: int) -> None:
        """A heartbeat states the stream's current seq: ours must equal it."""
        if not self.synced:
            return
        if epoch != self.epoch:
            self.synced = False
            raise EpochMismatch(self.symbol, self.epoch or 0, epoch)
        if seq != self.seq:
            self.synced = False
            raise SequenceGap(self.symbol, self.seq or 0, seq)

    def _verify(self, checksum: int, seq: int) -> None:
        computed = self.book.checksum()
        if computed != checksum:
            self.synced = False
            raise ChecksumMismatch(self.symbol, seq, checksum, computed)
