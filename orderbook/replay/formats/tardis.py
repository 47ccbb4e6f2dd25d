"""Tardis.dev `incremental_book_L2` CSV, and a writer of the same format.

Header ``exchange,symbol,timestamp,local_timestamp,is_snapshot,side,price,amount``;
`timestamp` is the exchange's time and `local_timestamp` the receive time,
both integer microseconds since the epoch. `side` is bid/ask, `amount` the
new absolute size at `price` (0 removes the level). Prices and amounts are
plain decimals ("6421.5", "6422", contract counts).

Consecutive rows of one symbol sharing a `local_timestamp` (and `is_snapshot`)
are one exchange message: one record with one `BookUpdate`. The first
`is_snapshot=true` message of a symbol replaces its book, and so does one that
follows `false` rows (the venue reset the book); `true` messages straight
after `true` ones continue the same snapshot. Symbols may interleave.

Scales are given, or else the most significant decimals of the symbol's first
message; a later value with more decimals is an error that names the option
to pass. The format has no reference book, so records carry no checks.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from orderbook.core.book import Book, Level
from orderbook.core.events import BookUpdate
from orderbook.core.instrument import Instrument
from orderbook.core.units import MAX_SCALE, format_units

from ..records import FormatError, Record, units
from .capture import Segments

COLUMNS = ("exchange", "symbol", "timestamp", "local_timestamp", "is_snapshot", "side", "price", "amount")
HEADER = ",".join(COLUMNS)
_US = re.compile(r"\d+\Z")
_FLAGS = {"true": True, "false": False}


@dataclass(frozen=True, slots=True)
class Row:
    exchange: str
    symbol: str
    timestamp_us: int
    local_timestamp_us: int
    is_snapshot: bool
    is_bid: bool
    price: str
    amount: str
    where: str


def _columns(fields: list[str], where: str) -> tuple[int, ...]:
    names = [f.strip() for f in fields]
    missing = [c for c in COLUMNS if c not in names]
    if missing:
        raise FormatError(where, f"not an incremental_book_L2 header: missing {', '.join(missing)} (want {HEADER})")
    return tuple(names.index(c) for c in COLUMNS)


def _micros(text: str, what: str, where: str) -> int:
    if not _US.match(text.strip()):
        raise FormatError(where, f"{what} {text!r} is not integer microseconds")
    return int(text)


def _row(fields: list[str], index: tuple[int, ...], width: int, where: str) -> Row:
    if len(fields) != width:
        raise FormatError(where, f"{len(fields)} fields, the header has {width}")
    exchange, symbol, ts, local, snap, side, price, amount = (fields[i].strip() for i in index)
    if not symbol:
        raise FormatError(where, "empty symbol")
    if snap not in _FLAGS:
        raise FormatError(where, f"is_snapshot {snap!r} is neither true nor false")
    if side not in ("bid", "ask"):
        raise FormatError(where, f"side {side!r} is neither bid nor ask")
    return Row(
        exchange,
        symbol,
        _micros(ts, "timestamp", where),
        _micros(local, "local_timestamp", where),
        _FLAGS[snap],
        side == "bid",
        price,
        amount,
        where,
    )


def rows(lines: Iterable[str], source: str = "tardis") -> Iterator[Row]:
    """The data rows; the first non-blank line must be the header. `lines`
    may be `Segments` (several daily files of one stream): each file has its
    own header and its own line numbers."""
    if isinstance(lines, Segments):
        for name, part in lines.parts:
            yield from rows(part, name)
        return
    index: tuple[int, ...] | None = None
    width = 0
    for lineno, raw in enumerate(lines, 1):
        line = raw.rstrip("\r\n")
        if not line.strip():
            continue
        where = f"{source}:{lineno}"
        fields = line.split(",")
        if index is None:
            index, width = _columns(fields, where), len(fields)
            continue
        yield _row(fields, index, width, where)


def messages(data: Iterable[Row]) -> Iterator[list[Row]]:
    """Consecutive rows of one symbol, local_timestamp and is_snapshot."""
    group: list[Row] = []
    for row in data:
        if group:
            head = group[0]
            same = (head.symbol, head.local_timestamp_us, head.is_snapshot)
            if (row.symbol, row.local_timestamp_us, row.is_snapshot) != same:
                yield group
                group = []
        group.append(row)
    if group:
        yield group


# ----------------------------------------------------------------------------- reader


@dataclass(slots=True)
class _Symbol:
    instrument: Instrument
    price_given: bool
    size_given: bool
    in_snapshot: bool = False


def decimals_needed(text: str) -> int:
    """Decimals that hold the value exactly: "6421.50" -> 1, "1e-05" -> 5, "6420" -> 0."""
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        return 0  # not a number: `units` says so with the row
    if not value.is_finite():
        return 0
    exponent = value.normalize().as_tuple().exponent
    return max(0, -int(exponent))


def _scale(given: int | None, values: Iterable[str], what: str, where: str) -> int:
    if given is not None:
        return given
    scale = max((decimals_needed(v) for v in values), default=0)
    if scale > MAX_SCALE:
        raise FormatError(where, f"a {what} has {scale} decimals, more than the {MAX_SCALE} an instrument holds")
    return scale


def _define(group: list[Row], price_scale: int | None, size_scale: int | None) -> _Symbol:
    head = group[0]
    ps = _scale(price_scale, (r.price for r in group), "price", head.where)
    ss = _scale(size_scale, (r.amount for r in group), "amount", head.where)
    instrument = Instrument(head.symbol, ps, ss, venue=head.exchange)
    return _Symbol(instrument, price_scale is not None, size_scale is not None)


def _value(text: str, scale: int, given: bool, what: str, option: str, row: Row) -> int:
    need = decimals_needed(text)
    if need > scale:
        how = "as given" if given else "inferred from its first message"
        raise FormatError(
            row.where,
            f"{what} {text} has {need} decimals but {row.symbol}'s {what} scale is {scale} ({how}); "
            f"pass {option} {need} or more",
        )
    return units(text, scale, row.where)


def _levels(group: list[Row], state: _Symbol) -> tuple[tuple[Level, ...], tuple[Level, ...]]:
    inst = state.instrument
    bids: list[Level] = []
    asks: list[Level] = []
    for row in group:
        price = _value(row.price, inst.price_scale, state.price_given, "price", "--price-scale", row)
        size = _value(row.amount, inst.size_scale, state.size_given, "amount", "--size-scale", row)
        if size < 0:
            raise FormatError(row.where, f"negative amount {row.amount}")
        (bids if row.is_bid else asks).append((price, size))
    return tuple(bids), tuple(asks)


def read(
    lines: Iterable[str],
    *,
    price_scale: int | None = None,
    size_scale: int | None = None,
    source: str = "tardis",
) -> Iterator[Record]:
    """One record per exchange message; see the module docstring."""
    for scale, name in ((price_scale, "price_scale"), (size_scale, "size_scale")):
        if scale is not None and not 0 <= scale <= MAX_SCALE:
            raise FormatError(source, f"{name} {scale} outside 0..{MAX_SCALE}")
    symbols: dict[str, _Symbol] = {}
    for group in messages(rows(lines, source)):
        head = group[0]
        state = symbols.get(head.symbol)
        instruments: tuple[Instrument, ...] = ()
        if state is None:
            state = symbols[head.symbol] = _define(group, price_scale, size_scale)
            instruments = (state.instrument,)
        replace = head.is_snapshot and not state.in_snapshot
        state.in_snapshot = head.is_snapshot
        bids, asks = _levels(group, state)
        event_us = max(r.timestamp_us for r in group)
        update = BookUpdate(head.symbol, bids, asks, replace=replace, event_time_ns=event_us * 1000)
        yield Record(head.local_timestamp_us * 1000, instruments, (update,))


# ----------------------------------------------------------------------------- writer


def _plain(units_: int, scale: int) -> str:
    """Tardis writes decimals without trailing zeros: 64220 at scale 1 -> "6422"."""
    text = format_units(units_, scale)
    return text.rstrip("0").rstrip(".") if "." in text else text


@dataclass(slots=True)
class _Written:
    instrument: Instrument
    book: Book
    in_snapshot: bool = False


class _Writer:
    """Turns records into rows, tracking each symbol's book so that a replace
    that Tardis cannot say as a snapshot is written as explicit changes."""

    def __init__(self, exchange: str | None) -> None:
        self.exchange = exchange
        self.symbols: dict[str, _Written] = {}
        self.instruments: dict[str, Instrument] = {}
        self.last_us = -1
        self.last_symbol = ""

    def record(self, record: Record) -> Iterator[str]:
        for inst in record.instruments:
            self.instruments[inst.symbol] = inst
        for update in record.updates:
            yield from self.update(update, record.time_ns)

    def state(self, symbol: str) -> _Written:
        state = self.symbols.get(symbol)
        if state is None:
            inst = self.instruments.get(symbol)
            if inst is None:
                raise ValueError(f"{symbol}: an update before the symbol's instrument")
            state = self.symbols[symbol] = _Written(inst, Book())
        return state

    def update(self, update: BookUpdate, time_ns: int) -> Iterator[str]:
        state = self.state(update.symbol)
        bids, asks, snapshot = self.changes(state, update)
        if not bids and not asks:
            return
        state.in_snapshot = snapshot
        local_us = max(time_ns // 1000, self.last_us)
        if local_us == self.last_us and update.symbol == self.last_symbol:
            local_us += 1  # rows sharing a local_timestamp would merge into one message
        self.last_us, self.last_symbol = local_us, update.symbol
        event_us = update.event_time_ns // 1000 if update.event_time_ns else local_us
        inst = state.instrument
        exchange = self.exchange or inst.venue or "unknown"
        head = f"{exchange},{inst.symbol},{event_us},{local_us},{'true' if snapshot else 'false'}"
        for side, levels in (("bid", bids), ("ask", asks)):
            for price, size in levels:
                yield f"{head},{side},{_plain(price, inst.price_scale)},{_plain(size, inst.size_scale)}\n"

    @staticmethod
    def changes(state: _Written, update: BookUpdate) -> tuple[tuple[Level, ...], tuple[Level, ...], bool]:
        book = state.book
        if not update.replace:
            for price, size in update.bids:
                book.set_bid(price, size)
            for price, size in update.asks:
                book.set_ask(price, size)
            return update.bids, update.asks, False
        old_bids, old_asks = dict(book.bids()), dict(book.asks())
        # As the service does: the last size given for a price wins, then 0s go.
        new_bids = {p: s for p, s in dict(update.bids).items() if s}
        new_asks = {p: s for p, s in dict(update.asks).items() if s}
        book.replace(new_bids.items(), new_asks.items())
        if (new_bids or new_asks) and not state.in_snapshot:
            return tuple(new_bids.items()), tuple(new_asks.items()), True
        # Straight after a snapshot (which the next one would continue) or to
        # an empty book (which has no rows): write the difference instead.
        return _diff(old_bids, new_bids), _diff(old_asks, new_asks), False


def _diff(old: dict[int, int], new: dict[int, int]) -> tuple[Level, ...]:
    gone = [(p, 0) for p in old if p not in new]
    return (*gone, *((p, s) for p, s in new.items() if old.get(p) != s))


def write_rows(records: Iterable[Record], *, exchange: str | None = None, header: bool = True) -> Iterator[str]:
    """Tardis incremental_book_L2 CSV lines (each ending in a newline) for a
    stream of records from any reader; `read` gives the same books back.

    Each update becomes one message of its own: one that would share its
    microsecond with the previous message of the same symbol is moved 1 us
    later (and later ones with it), since Tardis merges such rows. Times are
    cut to microseconds; `exchange` defaults to each instrument's venue.
    Updates with no levels are left out.
    """
    writer = _Writer(exchange)
    if header:
        yield HEADER + "\n"
    for record in records:
        yield from writer.record(record)
