"""All symbols of one node: definitions, books and sequencing, with no I/O."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from .errors import UnknownSymbol
from .events import BatchResult, Delta, FeedBatch, Position, Snapshot
from .instrument import Instrument
from .sequencer import SequencedBook, validate_update


class Market:
    """The books of every symbol, all stamped with one epoch.

    A batch is validated whole before anything is applied, so a rejected
    batch leaves every book untouched.
    """

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        self._books: dict[str, SequencedBook] = {}

    def __contains__(self, symbol: object) -> bool:
        return symbol in self._books

    def __iter__(self) -> Iterator[SequencedBook]:
        return iter(self._books.values())

    def __len__(self) -> int:
        return len(self._books)

    def get(self, symbol: str) -> SequencedBook:
        try:
            return self._books[symbol]
        except KeyError:
            raise UnknownSymbol(symbol) from None

    def symbols(self) -> list[str]:
        return sorted(self._books)

    def define(self, instrument: Instrument) -> bool:
        """Define a symbol; True if it is new. Redefinition must not change terms."""
        instrument.validate()
        existing = self._books.get(instrument.symbol)
        if existing is not None:
            existing.instrument.check_redefinition(instrument)
            return False
        self._books[instrument.symbol] = SequencedBook(instrument, self.epoch)
        return True

    def restore(self, books: Iterable[Snapshot]) -> None:
        """Load full books taken at some point of this epoch (a cluster snapshot)."""
        for snap in books:
            self.define(snap.instrument)
            self._books[snap.symbol].restore(snap)

    def snapshot(self, now_ns: int = 0) -> list[Snapshot]:
        return [sb.snapshot(0, now_ns) for sb in self._books.values()]

    def validate(self, batch: FeedBatch) -> None:
        pending: dict[str, Instrument] = {}
        books = self._books
        for inst in batch.instruments:
            inst.validate()
            prior = pending.get(inst.symbol)
            if prior is None and inst.symbol in books:
                prior = books[inst.symbol].instrument
            if prior is not None:
                prior.check_redefinition(inst)
            pending[inst.symbol] = inst
        for update in batch.updates:
            sb = books.get(update.symbol)
            if sb is not None:
                validate_update(sb.instrument, update)
            else:
                inst = pending.get(update.symbol)
                if inst is None:
                    raise UnknownSymbol(update.symbol)
                validate_update(inst, update)

    def apply(
        self,
        batch: FeedBatch,
        now_ns: int = 0,
        on_delta: Callable[[Delta], None] | None = None,
    ) -> BatchResult:
        """Validate, then apply the batch; return the deltas in order.

        `on_delta` sees each delta right after its change is applied, while
        the book is exactly at that delta's seq (later updates of the same
        batch not yet applied).
        """
        self.validate(batch)
        new = tuple(i for i in batch.instruments if self.define(i))
        deltas = []
        touched: dict[str, SequencedBook] = {}
        books = self._books
        for update in batch.updates:
            symbol = update.symbol
            sb = books[symbol]
            touched[symbol] = sb
            delta = sb.apply(update, now_ns)
            if delta is not None:
                deltas.append(delta)
                if on_delta is not None:
                    on_delta(delta)
        positions = tuple(Position(s, sb.epoch, sb.seq) for s, sb in touched.items())
        return BatchResult(tuple(deltas), positions, new)
