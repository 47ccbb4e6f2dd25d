"""All symbols of one node: definitions, books and sequencing, with no I/O."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator, Sized
from dataclasses import dataclass
from typing import Protocol

from .errors import LimitExceeded, SourceConflict, UnknownSymbol
from .events import BatchResult, BookUpdate, Delta, FeedBatch, Position, Snapshot
from .instrument import Instrument
from .sequencer import SequencedBook, validate_updates

# Sources: who writes a symbol's book. One source per book (docs/protocol.md §12.5).
SIMULATOR = "simulator"  # the built-in market simulator
REPLAY = "replay"  # the node's own recording (serve --replay)
FEED = "feed"  # every /feed publisher together


@dataclass(frozen=True, slots=True)
class FeedLimits:
    """Bounds on what batches may do to a node's books; 0 = no limit.

    A batch that would break one is refused whole (`LimitExceeded`, reported
    as ERROR_CODE_INVALID_UPDATE), naming the limit and its value:

    - `max_levels_per_side`: no book side may hold more levels after any
      update of the batch (a side already beyond it, e.g. restored or
      accepted under a higher limit, may shrink but not grow);
    - `max_symbols`: symbols defined on the node, the batch's new ones included;
    - `max_batch_levels`: levels across all the updates of one batch.
    """

    max_levels_per_side: int = 0
    max_symbols: int = 0
    max_batch_levels: int = 0


NO_LIMITS = FeedLimits()


class _Sides(Protocol):
    @property
    def bids(self) -> Sized: ...

    @property
    def asks(self) -> Sized: ...


class _Named(Protocol):
    @property
    def symbol(self) -> str: ...


class BatchCounts(Protocol):
    """What `Market.check_counts` reads of a batch: a FeedBatch, or the
    decoded protobuf message before its levels are converted."""

    @property
    def updates(self) -> Collection[_Sides]: ...

    @property
    def instruments(self) -> Collection[_Named]: ...


class Market:
    """The books of every symbol, all stamped with one epoch.

    A batch is validated whole before anything is applied, so a rejected
    batch leaves every book untouched.

    Each symbol belongs to one source at a time: the source whose batch
    defined it (or first updated it, for a symbol restored without an owner).
    An update from any other source refuses the batch (`SourceConflict`),
    unless the batch takes the symbol over (`takeover`), which needs the
    symbol's first update in the batch to replace the whole book.
    """

    def __init__(self, epoch: int, limits: FeedLimits = NO_LIMITS) -> None:
        self.epoch = epoch
        self.limits = limits
        self._books: dict[str, SequencedBook] = {}
        self._owners: dict[str, str] = {}

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

    def find(self, symbol: str) -> SequencedBook | None:
        """`get` for a symbol that may not be defined: None if it is not."""
        return self._books.get(symbol)

    def symbols(self) -> list[str]:
        return sorted(self._books)

    def owner(self, symbol: str) -> str | None:
        """The source that writes `symbol`'s book (None: not claimed yet)."""
        return self._owners.get(symbol)

    def keep_own(self, batch: FeedBatch, source: str) -> FeedBatch:
        """`batch` without the updates to symbols another source owns: how a
        built-in source (simulator, replay) yields a symbol taken over."""
        owners = self._owners
        kept = tuple(u for u in batch.updates if owners.get(u.symbol, source) == source)
        if len(kept) == len(batch.updates):
            return batch
        return FeedBatch(batch.batch_id, batch.instruments, kept)

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

    def validate(self, batch: FeedBatch, source: str = FEED, takeover: bool = False) -> None:
        """Raise unless every definition and update of `batch` may be applied
        by `source` (with `takeover`: may take symbols from other sources)."""
        self._validate(batch, source, takeover)

    def _validate(self, batch: FeedBatch, source: str, takeover: bool) -> list[tuple[str, tuple[BookUpdate, ...]]]:
        """`validate`; return the batch's updates cut into runs of consecutive
        updates to one symbol, in order, as (symbol, updates)."""
        pending: dict[str, Instrument] = {}
        books = self._books
        if self.limits is not NO_LIMITS:
            self.check_counts(batch)
        for inst in batch.instruments:
            inst.validate()
            prior = pending.get(inst.symbol)
            if prior is None and inst.symbol in books:
                prior = books[inst.symbol].instrument
            if prior is not None:
                prior.check_redefinition(inst)
            pending[inst.symbol] = inst
        # Most batches update one symbol, or a few in long runs: each run is
        # validated in one call, and the updates are looked at once here.
        # A run is validated before the next symbol is looked up, so the
        # first bad update (or unknown symbol) in order is the one reported.
        updates = batch.updates
        runs: list[tuple[str, tuple[BookUpdate, ...]]] = []
        symbol = ""
        instrument: Instrument | None = None
        start = 0
        for i, update in enumerate(updates):
            if update.symbol != symbol or instrument is None:
                if instrument is not None:
                    run = updates[start:i]
                    validate_updates(instrument, run)
                    runs.append((symbol, run))
                symbol = update.symbol
                sb = books.get(symbol)
                instrument = sb.instrument if sb is not None else pending.get(symbol)
                if instrument is None:
                    raise UnknownSymbol(symbol)
                start = i
        if instrument is not None:
            run = updates[start:] if start else updates
            validate_updates(instrument, run)
            runs.append((symbol, run))
        if self._owners:
            self._check_owners(updates, {s for s, _ in runs}, source, takeover)
        if self.limits.max_levels_per_side:
            self._check_sides(updates, self.limits.max_levels_per_side)
        return runs

    def check_counts(self, batch: BatchCounts) -> None:
        """The limits that need no look at the levels: symbols, batch levels.
        Reads only `batch.instruments[].symbol` and the lengths of
        `batch.updates[].bids/asks`, so a decoded feed message can be checked
        before its levels are converted (a refused huge batch then costs its
        decoding alone)."""
        limits = self.limits
        cap = limits.max_batch_levels
        if cap:
            total = 0
            for u in batch.updates:
                total += len(u.bids) + len(u.asks)
            if total > cap:
                raise LimitExceeded(
                    "max_batch_levels",
                    cap,
                    f"batch has {total} levels across its updates; the limit is {cap} per batch "
                    "(max_batch_levels): split it into smaller batches",
                )
        cap = limits.max_symbols
        if cap and batch.instruments:
            books = self._books
            new = {i.symbol for i in batch.instruments if i.symbol not in books}
            if len(books) + len(new) > cap:
                raise LimitExceeded(
                    "max_symbols",
                    cap,
                    f"batch defines {len(new)} new symbols; this node holds {len(books)} and its limit "
                    f"is {cap} symbols (max_symbols)",
                )

    def _check_sides(self, updates: tuple[BookUpdate, ...], cap: int) -> None:
        """Raise unless every book side stays within `cap` levels after each
        update (or does not grow, if it is beyond already).

        First a bound: a side's levels now plus every level the batch sends
        it. Only the sides whose bound passes the cap are worked out exactly.
        """
        books = self._books
        sent: dict[tuple[str, bool], int] = {}
        for u in updates:
            if u.bids:
                k = (u.symbol, True)
                sent[k] = sent.get(k, 0) + len(u.bids)
            if u.asks:
                k = (u.symbol, False)
                sent[k] = sent.get(k, 0) + len(u.asks)
        for (symbol, is_bid), n in sent.items():
            sb = books.get(symbol)
            now = 0 if sb is None else (sb.book.bid_count() if is_bid else sb.book.ask_count())
            if now + n > cap:
                self._check_side_exactly(updates, symbol, is_bid, now, cap)

    def _check_side_exactly(
        self, updates: tuple[BookUpdate, ...], symbol: str, is_bid: bool, count: int, cap: int
    ) -> None:
        sb = self._books.get(symbol)
        if sb is None:
            base: Callable[[int], int] | None = None
        else:
            base = sb.book.bid_size if is_bid else sb.book.ask_size
        overlay: dict[int, bool] = {}  # price -> present, as the batch left it
        allowed = max(cap, count)
        for u in updates:
            if u.symbol != symbol:
                continue
            levels = u.bids if is_bid else u.asks
            if u.replace:
                overlay = {p: bool(s) for p, s in dict(levels).items()}
                base = None
                count = sum(overlay.values())
                allowed = cap
            else:
                for price, size in levels:
                    before = overlay[price] if price in overlay else (base is not None and base(price) > 0)
                    after = size > 0
                    if after != before:
                        count += 1 if after else -1
                        overlay[price] = after
                    elif price not in overlay:
                        overlay[price] = after
            if count > allowed:
                side = "bid" if is_bid else "ask"
                raise LimitExceeded(
                    "max_levels_per_side",
                    cap,
                    f"{symbol}: the batch would leave {count} {side} levels; the limit is {cap} "
                    "levels per book side (max_levels_per_side)",
                    symbol,
                )
            allowed = max(cap, count)  # a side beyond the cap may shrink, never grow back

    def _check_owners(self, updates: tuple[BookUpdate, ...], symbols: set[str], source: str, takeover: bool) -> None:
        """`symbols`: those of `updates`."""
        owners = self._owners
        # Most batches come from the owner of every symbol they touch: one
        # pass over the distinct symbols says so; only a batch with a
        # conflict is walked in order, to name its first conflicting update.
        for symbol in symbols:
            owner = owners.get(symbol)
            if owner is not None and owner != source:
                break
        else:
            return
        seen: set[str] = set()
        for update in updates:
            symbol = update.symbol
            if symbol in seen:
                continue
            seen.add(symbol)
            owner = owners.get(symbol)
            if owner is None or owner == source:
                continue
            if not takeover:
                raise SourceConflict(
                    symbol,
                    owner,
                    source,
                    f"{symbol} is served from another source ({owner}); {source} may not update it "
                    "(publish it under another symbol, serve it from a node without that source, "
                    "or start the node with --allow-takeover)",
                )
            if not update.replace:
                raise SourceConflict(
                    symbol,
                    owner,
                    source,
                    f"{symbol} is served from another source ({owner}); to take it over, the batch's "
                    "first update of it must replace the whole book (replace = true)",
                )

    def apply(
        self,
        batch: FeedBatch,
        now_ns: int = 0,
        on_delta: Callable[[Delta], None] | None = None,
        source: str = FEED,
        takeover: bool = False,
    ) -> BatchResult:
        """Validate, then apply the batch as `source`; return the deltas in order.

        `on_delta` sees each delta right after its change is applied, while
        the book is exactly at that delta's seq (later updates of the same
        batch not yet applied). Symbols the batch defines or updates belong
        to `source` afterwards (with `takeover`, also those it took).
        """
        updates = batch.updates
        if len(updates) == 1 and not batch.instruments:
            update = updates[0]
            delta = self.apply_one(update, now_ns, on_delta, source, takeover)
            sb = self._books[update.symbol]
            return BatchResult(() if delta is None else (delta,), (Position(update.symbol, sb.epoch, sb.seq),))
        runs = self._validate(batch, source, takeover)
        new = tuple(i for i in batch.instruments if self.define(i))
        owners = self._owners
        for inst in new:
            owners[inst.symbol] = source
        deltas: list[Delta] = []
        touched: dict[str, SequencedBook] = {}
        books = self._books
        for symbol, updates in runs:
            sb = books[symbol]
            if symbol not in touched:
                touched[symbol] = sb
                owners[symbol] = source
            sb.apply_all(updates, now_ns, deltas, on_delta)
        positions = tuple(Position(s, sb.epoch, sb.seq) for s, sb in touched.items())
        return BatchResult(tuple(deltas), positions, new)

    def apply_one(
        self,
        update: BookUpdate,
        now_ns: int = 0,
        on_delta: Callable[[Delta], None] | None = None,
        source: str = FEED,
        takeover: bool = False,
    ) -> Delta | None:
        """`apply` of a batch holding `update` alone (most feed messages,
        every Kraken record): the same checks in the same order, raising the
        same errors, with no runs, sets or result objects built for them.
        Return the delta, or None where the update changed nothing."""
        limits = self.limits
        if limits is not NO_LIMITS:
            self.check_counts(FeedBatch(updates=(update,)))
        symbol = update.symbol
        sb = self._books.get(symbol)
        if sb is None:
            raise UnknownSymbol(symbol)
        updates = (update,)
        validate_updates(sb.instrument, updates)
        owners = self._owners
        owner = owners.get(symbol)
        if owner is not None and owner != source:
            self._check_owners(updates, {symbol}, source, takeover)
        if limits.max_levels_per_side:
            self._check_sides(updates, limits.max_levels_per_side)
        owners[symbol] = source
        delta = sb.apply_one(update, now_ns)
        if delta is not None and on_delta is not None:
            on_delta(delta)
        return delta
