"""A built-in market simulator: believable L2 order flow with no venue attached.

It exists so that someone who starts the server sees live, moving books at
once, without credentials, network access or recorded data, and so demos and
tests get a reproducible stream. It is pure: the random source and the time
are passed in, and nothing here does I/O, touches an event loop or reads a
clock. Every price and size is an integer (ticks, lots) on the instrument's
grids; decimals appear only once, when a symbol's style is turned into ticks.

The simulator keeps its own model of every book and derives each update from
it, so the stream is coherent: a `Market` fed `initial_batch()` and then every
`next_batch()` holds exactly the simulator's books, never crossed, with both
sides non-empty.
"""

from __future__ import annotations

import random
from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import ROUND_FLOOR, Decimal
from itertools import accumulate
from types import MappingProxyType
from typing import Final

from ..core.book import Book
from ..core.events import BookUpdate, FeedBatch
from ..core.instrument import Instrument

VENUE: Final = "simulator"

DEFAULT_INSTRUMENTS: tuple[Instrument, ...] = (
    Instrument("BTC-USD", price_scale=2, size_scale=8, base="BTC", quote="USD", venue=VENUE),
    Instrument(
        "ETH-USD",
        price_scale=2,
        size_scale=8,
        size_increment=1000,
        base="ETH",
        quote="USD",
        venue=VENUE,
    ),
    Instrument("AAPL", price_scale=2, size_scale=0, base="AAPL", quote="USD", venue=VENUE),
    Instrument(
        "EUR-USD",
        price_scale=5,
        size_scale=0,
        size_increment=1000,
        base="EUR",
        quote="USD",
        venue=VENUE,
    ),
    Instrument(
        "ESZ6",
        price_scale=2,
        size_scale=0,
        price_increment=25,
        base="ES",
        quote="USD",
        venue=VENUE,
    ),
)

# A book update touches at most this many levels, like one venue message.
MAX_LEVELS_PER_UPDATE: Final = 4


@dataclass(frozen=True, slots=True)
class _Style:
    """How a symbol trades, as decimal strings in the instrument's own units.

    Kept in decimals so that a caller redefining a known symbol with other
    scales still gets sensible ticks.
    """

    mid: str  # starting price
    gap: str  # typical distance between adjacent levels
    walk: str  # largest single move of the fair price
    lot: str  # typical resting order size


_STYLES: Final = MappingProxyType(
    {
        "BTC-USD": _Style(mid="60000.00", gap="0.50", walk="1.00", lot="0.01"),
        "ETH-USD": _Style(mid="3000.00", gap="0.05", walk="0.10", lot="0.1"),
        "AAPL": _Style(mid="190.00", gap="0.01", walk="0.01", lot="100"),
        "EUR-USD": _Style(mid="1.08000", gap="0.00001", walk="0.00001", lot="100000"),
        "ESZ6": _Style(mid="5000.00", gap="0.25", walk="0.25", lot="5"),
    }
)

# Relative frequency of each kind of event; integers so the pick is exact.
_ADD, _PARTIAL, _CANCEL, _TRADE, _DEEP, _IMPROVE = range(6)
_KIND_WEIGHTS: Final = (38, 16, 14, 16, 10, 6)
_KIND_CUMULATIVE: Final = tuple(accumulate(_KIND_WEIGHTS))


def _steps(value: str, scale: int, increment: int) -> int:
    """Whole grid steps in a decimal value, rounded down, at least one."""
    units = Decimal(value).scaleb(scale).to_integral_value(rounding=ROUND_FLOOR)
    return max(1, int(units) // increment)


def _skew(rng: random.Random, mean: int) -> int:
    """An int in 0..4*mean, small values likeliest, mean about `mean`.

    A uniform draw below a uniform bound: a cheap, all-integer stand-in for a
    geometric distance that needs no floating point on the price path.
    """
    if mean <= 0:
        return 0
    return rng.randrange(rng.randrange(4 * mean + 1) + 1)


class _SymbolModel:
    """One symbol's book plus the hidden fair price its flow chases.

    `fair` is where a fresh bid would rest (asks rest at least one increment
    above it); it random-walks and the flow leans toward it, which is what
    moves the visible book. All prices are ticks that are multiples of `pinc`;
    all sizes are lots that are multiples of `sinc`. `gap`, `walk` and `lot`
    count grid steps.
    """

    __slots__ = (
        "anchor",
        "band",
        "book",
        "depth",
        "fair",
        "gap",
        "instrument",
        "lot",
        "pinc",
        "sinc",
        "walk",
    )

    def __init__(self, instrument: Instrument, depth: int) -> None:
        inst = instrument
        self.instrument = inst
        self.pinc = pinc = inst.price_increment
        self.sinc = sinc = inst.size_increment
        style = _STYLES.get(inst.symbol)
        if style is not None:
            mid_steps = _steps(style.mid, inst.price_scale, pinc)
            self.gap = _steps(style.gap, inst.price_scale, pinc)
            self.walk = _steps(style.walk, inst.price_scale, pinc)
            self.lot = _steps(style.lot, inst.size_scale, sinc)
        else:
            # Unknown symbol: price near 100 with a one-step gap and orders of
            # about one whole unit, whatever the scales.
            mid_steps = _steps("100", inst.price_scale, pinc)
            self.gap = self.walk = 1
            self.lot = max(1, 10**inst.size_scale // sinc)
        # Far enough from zero that the deepest bids stay positive.
        mid_steps = max(mid_steps, 1000, 20 * depth * self.gap)
        self.anchor = mid_steps * pinc
        # Beyond this the fair price is pulled back hard, so an unattended server
        # never drifts to absurd or non-positive prices.
        self.band = max(mid_steps // 25, 10 * self.walk) * pinc
        self.fair = self.anchor
        self.depth = depth
        self.book = Book()

    # Sizes and prices ------------------------------------------------------------
    def order_size(self, rng: random.Random) -> int:
        """A resting order size: mostly below one lot, a long tail of big ones."""
        lot = self.lot
        steps = rng.randrange(1, lot + 1) + lot * _skew(rng, 1)
        if rng.randrange(20) == 0:
            steps *= rng.randint(10, 40)
        return steps * self.sinc

    def spacing(self, rng: random.Random) -> int:
        """Ticks between adjacent levels, at least one increment."""
        return (1 + _skew(rng, self.gap - 1)) * self.pinc

    def build(self, rng: random.Random) -> None:
        pinc = self.pinc
        spread = (1 + _skew(rng, 1)) * pinc
        bid = self.fair - (spread // pinc // 2) * pinc
        ask = bid + spread
        bids, asks = [], []
        for _ in range(self.depth):
            if bid >= pinc:
                bids.append((bid, self.order_size(rng)))
            asks.append((ask, self.order_size(rng)))
            bid -= self.spacing(rng)
            ask += self.spacing(rng)
        self.book.replace(bids, asks)

    def move_fair(self, rng: random.Random) -> None:
        band = self.band
        disp = max(-band, min(band, self.fair - self.anchor))
        # P(up) falls from 3/4 to 1/4 across the band: mean-reverting, still random.
        up = rng.randrange(4 * band) < 2 * band - disp
        step = rng.randint(1, self.walk) * self.pinc
        self.fair = max(self.pinc, self.fair + (step if up else -step))

    def span(self) -> int:
        """Ticks from the fair price that a side of `depth` levels usually covers."""
        return (3 * self.depth * self.gap // 2) * self.pinc

    def quote(self, bid: bool, dist: int) -> int:
        """The price `dist` ticks behind the fair price on one side, moved back
        if needed so it never crosses the other side nor reaches zero."""
        if bid:
            price = min(self.fair - dist, self.best(False) - self.pinc)
            return price if price >= self.pinc else self.best(True)
        return max(self.fair + self.pinc + dist, self.best(True) + self.pinc)

    def lean(self) -> int:
        """+1 if the fair price is above the book's mid, -1 if below, else 0."""
        bb, ba = self.best(True), self.best(False)
        diff = 2 * self.fair + self.pinc - bb - ba
        room = self.gap * self.pinc
        return 1 if diff > room else -1 if diff < -room else 0

    # Book access by side (True = bids) -------------------------------------------
    def count(self, bid: bool) -> int:
        return self.book.bid_count() if bid else self.book.ask_count()

    def best(self, bid: bool) -> int:
        level = self.book.best_bid() if bid else self.book.best_ask()
        assert level is not None  # each side is kept non-empty
        return level[0]

    def level_at(self, bid: bool, index: int) -> tuple[int, int]:
        levels = self.book.bids(index + 1) if bid else self.book.asks(index + 1)
        return levels[-1]

    def tail(self, bid: bool) -> tuple[int, int]:
        return self.level_at(bid, self.count(bid) - 1)


class _Edit:
    """The levels one update touches; applied to the model as they are made so
    later steps of the same event see the new book."""

    __slots__ = ("asks", "bids", "model")

    def __init__(self, model: _SymbolModel) -> None:
        self.model = model
        self.bids: dict[int, int] = {}
        self.asks: dict[int, int] = {}

    def set(self, bid: bool, price: int, size: int) -> None:
        book = self.model.book
        if bid:
            self.bids[price] = size
            book.set_bid(price, size)
        else:
            self.asks[price] = size
            book.set_ask(price, size)

    def size(self, bid: bool, price: int) -> int:
        book = self.model.book
        return book.bid_size(price) if bid else book.ask_size(price)

    def touched(self) -> int:
        return len(self.bids) + len(self.asks)

    def update(self, now_ns: int) -> BookUpdate:
        return BookUpdate(
            symbol=self.model.instrument.symbol,
            bids=tuple(self.bids.items()),
            asks=tuple(self.asks.items()),
            event_time_ns=now_ns,
        )


# Events ----------------------------------------------------------------------------
# Each takes `up`: whether it should push the price up (toward a fair price
# above the book) and picks its side from that, so the book follows the walk.


def _add(m: _SymbolModel, rng: random.Random, ed: _Edit, up: bool) -> None:
    """New liquidity near the top: join a queue, or quote a little off the fair
    price. Quoting off fair, not off the best level, is what refills a book
    that trades have thinned, so the spread stays tight."""
    bid = up
    if rng.randrange(2):
        price = m.level_at(bid, min(_skew(rng, 2), m.count(bid) - 1))[0]
    else:
        price = m.quote(bid, _skew(rng, m.gap) * m.pinc)
    ed.set(bid, price, ed.size(bid, price) + m.order_size(rng))


def _partial_cancel(m: _SymbolModel, rng: random.Random, ed: _Edit, up: bool) -> None:
    """Part of a level near the top is withdrawn."""
    bid = not up  # pulling bids lets the price fall
    price, size = m.level_at(bid, min(_skew(rng, 2), m.count(bid) - 1))
    units = size // m.sinc
    if units >= 2:
        ed.set(bid, price, size - m.sinc * rng.randrange(1, units))
    elif m.count(bid) > 1:
        ed.set(bid, price, 0)
    else:
        _add(m, rng, ed, bid)


def _full_cancel(m: _SymbolModel, rng: random.Random, ed: _Edit, up: bool) -> None:
    """A whole level near the top is withdrawn (size 0 removes it)."""
    bid = not up
    if m.count(bid) <= 1:
        _add(m, rng, ed, bid)  # never empty a side
        return
    price = m.level_at(bid, min(_skew(rng, 3), m.count(bid) - 1))[0]
    ed.set(bid, price, 0)


def _trade(m: _SymbolModel, rng: random.Random, ed: _Edit, up: bool) -> None:
    """An aggressor eats the best level on the far side; now and then sweeps 2-3."""
    bid = not up  # a buyer (up) lifts asks, a seller hits bids
    n = 1 if rng.randrange(10) else rng.randint(2, 3)
    levels = m.book.bids(n) if bid else m.book.asks(n)
    # Levels before the last are eaten whole; at least one level survives
    # because at most `count` levels are listed and the last is kept if alone.
    for price, _ in levels[:-1]:
        ed.set(bid, price, 0)
    price, size = levels[-1]
    units = size // m.sinc
    if m.count(bid) > 1 and (units == 1 or rng.randrange(3) == 0):
        ed.set(bid, price, 0)
    elif units >= 2:
        ed.set(bid, price, size - m.sinc * rng.randrange(1, units))
    elif not ed.touched():
        _add(m, rng, ed, bid)  # a lone one-lot level: replenish it instead


def _deep(m: _SymbolModel, rng: random.Random, ed: _Edit, up: bool) -> None:
    """Activity far from the top. It also holds each side near `depth` levels
    spread over the usual span, pulling stale orders the price has left."""
    bid = bool(rng.randrange(2))
    count, depth = m.count(bid), m.depth
    tail = m.tail(bid)[0]
    if count > 1 and (count > depth + depth // 4 or abs(tail - m.fair) > 2 * m.span()):
        ed.set(bid, tail, 0)
    elif count < depth:
        _fill(m, rng, ed, bid)
    else:
        price, size = m.level_at(bid, rng.randrange(count // 2, count))
        new = m.order_size(rng)
        ed.set(bid, price, new if new != size else new + m.sinc)


def _improve(m: _SymbolModel, rng: random.Random, ed: _Edit, up: bool) -> None:
    """A new best price inside the spread (or joining the top when it is one tick)."""
    bid = up
    bb, ba = m.best(True), m.best(False)
    room = (ba - bb) // m.pinc - 1
    if room < 1:
        price = bb if bid else ba
    else:
        k = 1 + min(_skew(rng, 1), room - 1)
        price = bb + k * m.pinc if bid else ba - k * m.pinc
    ed.set(bid, price, ed.size(bid, price) + m.order_size(rng))


def _fill(m: _SymbolModel, rng: random.Random, ed: _Edit, bid: bool) -> None:
    """A resting order anywhere within the usual span of the book; this is what
    keeps the depth even instead of leaving holes behind a moving price."""
    price = m.quote(bid, rng.randrange(m.span()) // m.pinc * m.pinc)
    ed.set(bid, price, ed.size(bid, price) + m.order_size(rng))


_EVENTS: Final[tuple[Callable[[_SymbolModel, random.Random, _Edit, bool], None], ...]] = (
    _add,
    _partial_cancel,
    _full_cancel,
    _trade,
    _deep,
    _improve,
)


class MarketSimulator:
    """Generates coherent L2 flow for a set of instruments.

    Send `initial_batch()` first (it defines the instruments and carries full
    books), then `next_batch()` as often as wanted. Calling `initial_batch()`
    again returns the current books, e.g. to resynchronise a fresh `Market`.
    Output depends only on the `rng` state and the arguments.
    """

    __slots__ = ("_batch_id", "_instruments", "_models", "_rng", "_symbols")

    def __init__(
        self,
        rng: random.Random,
        instruments: Sequence[Instrument] = DEFAULT_INSTRUMENTS,
        levels: int = 50,
    ) -> None:
        if levels < 1:
            raise ValueError(f"levels must be >= 1, got {levels}")
        insts = tuple(instruments)
        if not insts:
            raise ValueError("at least one instrument is required")
        symbols = [i.symbol for i in insts]
        if len(set(symbols)) != len(symbols):
            raise ValueError(f"duplicate symbols in {symbols}")
        for inst in insts:
            inst.validate()
        self._rng = rng
        self._instruments = insts
        self._symbols = tuple(symbols)
        self._models: dict[str, _SymbolModel] = {}
        for inst in insts:
            model = _SymbolModel(inst, levels)
            model.build(rng)
            self._models[inst.symbol] = model
        self._batch_id = 0

    @property
    def instruments(self) -> tuple[Instrument, ...]:
        return self._instruments

    def book(self, symbol: str) -> Book:
        """A copy of the simulator's own book for `symbol` (KeyError if unknown)."""
        return self._models[symbol].book.copy()

    def initial_batch(self, now_ns: int = 0) -> FeedBatch:
        """Every instrument definition plus a full-book replace for each symbol."""
        updates = tuple(
            BookUpdate(
                symbol=sym,
                bids=tuple(m.book.bids()),
                asks=tuple(m.book.asks()),
                replace=True,
                event_time_ns=now_ns,
            )
            for sym, m in self._models.items()
        )
        return FeedBatch(batch_id=self._next_id(), instruments=self._instruments, updates=updates)

    def next_batch(self, now_ns: int, n_updates: int) -> FeedBatch:
        """`n_updates` incremental updates, each for one symbol and 1..4 levels."""
        if n_updates < 0:
            raise ValueError(f"n_updates must be >= 0, got {n_updates}")
        rng = self._rng
        updates = [self._one(rng, now_ns) for _ in range(n_updates)]
        return FeedBatch(batch_id=self._next_id(), updates=tuple(updates))

    def _one(self, rng: random.Random, now_ns: int) -> BookUpdate:
        m = self._models[rng.choice(self._symbols)]
        if rng.randrange(3) == 0:
            m.move_fair(rng)
        # Lean the flow toward the fair price: that is what moves the book.
        up = rng.randrange(10) < 5 + 3 * m.lean()
        kind = bisect_right(_KIND_CUMULATIVE, rng.randrange(_KIND_CUMULATIVE[-1]))
        if m.best(False) - m.best(True) > 4 * m.gap * m.pinc and rng.randrange(2):
            kind = _IMPROVE  # a wide spread draws liquidity providers in quickly
        ed = _Edit(m)
        _EVENTS[kind](m, rng, ed, up)
        # Refill a thin side from the deep end within the same update.
        thin = max(1, m.depth // 2)
        for bid in (True, False):
            # Bounded: on a narrow grid a fill may land on an existing level.
            for _ in range(4 * MAX_LEVELS_PER_UPDATE):
                if ed.touched() >= MAX_LEVELS_PER_UPDATE or m.count(bid) >= thin:
                    break
                _fill(m, rng, ed, bid)
        return ed.update(now_ns)

    def _next_id(self) -> int:
        self._batch_id += 1
        return self._batch_id
