"""LOBSTER (lobsterdata.com) NASDAQ order-flow files: a message file and an
orderbook file that line up row for row.

Message file, one event per row: ``Time,Type,OrderID,Size,Price,Direction``.
Time is seconds after midnight, New York wall clock, with up to 9 decimals.
Type: 1 new limit order, 2 partial cancel, 3 delete, 4 visible execution,
5 hidden execution, 6 cross trade, 7 trading halt (price -1 = halt, 0 =
quoting resumes, 1 = trading resumes). Direction 1 = buy side, -1 = sell
side (for executions: the side of the resting order). Prices are dollars x
10000, so an instrument of price scale 4 holds them exactly.

Orderbook file: row i is the visible book after message i, L levels of
``AskPrice,AskSize,BidPrice,BidSize``. An empty level is the filler ask
9999999999 / bid -9999999999 with size 0.

Quirks handled: an optional header row (first field not a number), CRLF
endings, no newline after the last row, Time with fewer than 9 decimals.
Without zone data for America/New_York the wall clock is taken as UTC;
without a date, time is nanoseconds after midnight.

The message file holds only events touching the top-L range, so a full book
cannot be rebuilt. The reader keeps an L-level book: the first record sets
it to row 1; each later message changes its price level (type 1 adds the
size, 2-4 subtract it), then a level pushed below level L is removed and
levels coming into view from depth are taken from row i, but only at prices
strictly worse than row i-1's worst level (when row i-1 showed all L levels
of that side). Everything at better prices comes from the message alone, so
each record's `TopLevels` check of row i is a real check of that message.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date as Date
from datetime import datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from orderbook.core.book import Book, Level
from orderbook.core.events import BookUpdate
from orderbook.core.instrument import Instrument

from ..records import FormatError, Record, TopLevels

PRICE_SCALE = 4  # dollars x 10000
VENUE = "nasdaq"
EMPTY_ASK_PRICE = 9999999999
EMPTY_BID_PRICE = -9999999999
TIME_ZONE = "America/New_York"

ADD, PARTIAL_CANCEL, DELETE, EXECUTE, HIDDEN_EXECUTE, CROSS, HALT = range(1, 8)
HALT_NOTES = {-1: "halt", 0: "quoting resumed", 1: "trading resumed"}

_NUMBER = re.compile(r"-?\d+(?:\.\d*)?\Z")
_TIME = re.compile(r"(\d+)(?:\.(\d{0,9}))?\Z")
_FILENAME = re.compile(
    r"(?P<symbol>.+)_(?P<date>\d{4}-\d{2}-\d{2})_\d+_\d+_(?:message|orderbook)_(?P<levels>\d+)\.csv\Z"
)
_NS = 10**9


def parse_filename(name: str) -> tuple[str, Date, int]:
    """(symbol, date, levels) of a LOBSTER file name, with or without folders:
    ``AAPL_2012-06-21_34200000_57600000_message_10.csv`` -> ("AAPL", 2012-06-21, 10)."""
    base = name.replace("\\", "/").rpartition("/")[2]
    m = _FILENAME.match(base)
    if m is None:
        raise FormatError(name, "not a LOBSTER file name (SYMBOL_YYYY-MM-DD_START_END_message|orderbook_LEVELS.csv)")
    try:
        day = Date.fromisoformat(m["date"])
    except ValueError:
        raise FormatError(name, f"no such date {m['date']!r}") from None
    return m["symbol"], day, int(m["levels"])


# ----------------------------------------------------------------------------- time


class _Clock:
    """Wall-clock nanoseconds after midnight -> nanoseconds since the Unix epoch."""

    __slots__ = ("_day", "_offsets", "_zone")

    def __init__(self, day: Date | str | None) -> None:
        if isinstance(day, str):
            text = day
            try:
                day = Date.fromisoformat(text)
            except ValueError:
                raise FormatError(text, "not a date (YYYY-MM-DD)") from None
        self._day = day
        self._zone = _new_york() if day is not None else None
        self._offsets: dict[int, int] = {}  # hour after midnight -> UTC offset, seconds

    def epoch_ns(self, after_midnight_ns: int) -> int:
        day = self._day
        if day is None:
            return after_midnight_ns
        seconds = after_midnight_ns // _NS
        midnight = (day - Date(1970, 1, 1)).days * 86400
        return (midnight - self._offset(seconds // 3600)) * _NS + after_midnight_ns

    def _offset(self, hour: int) -> int:
        # New York changes offset only on the hour, so one lookup per hour is exact.
        offset = self._offsets.get(hour)
        if offset is None:
            offset = 0
            if self._zone is not None and self._day is not None:
                wall = datetime(self._day.year, self._day.month, self._day.day) + timedelta(hours=hour)
                delta = wall.replace(tzinfo=self._zone).utcoffset()
                offset = int(delta.total_seconds()) if delta is not None else 0
            self._offsets[hour] = offset
        return offset


def _new_york() -> tzinfo | None:
    try:
        return ZoneInfo(TIME_ZONE)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return None  # no zone data: the wall clock is read as UTC (documented above)


def parse_time(text: str, where: str) -> int:
    """Seconds after midnight with at most 9 decimals -> exact nanoseconds."""
    m = _TIME.match(text.strip())
    if m is None:
        raise FormatError(where, f"Time {text!r} is not seconds after midnight with at most 9 decimals")
    return int(m[1]) * _NS + int((m[2] or "").ljust(9, "0"))


# ----------------------------------------------------------------------------- rows


@dataclass(frozen=True, slots=True)
class Message:
    after_midnight_ns: int
    kind: int
    order_id: int
    size: int
    price: int
    direction: int  # 1 buy (bid side), -1 sell (ask side)
    where: str


@dataclass(frozen=True, slots=True)
class Row:
    """One orderbook row: occupied levels only, best first."""

    bids: tuple[Level, ...]
    asks: tuple[Level, ...]
    where: str


def _data_lines(lines: Iterable[str], source: str) -> Iterator[tuple[str, list[str]]]:
    """(where, fields) of each data row; a first row whose first field is not a
    number is a header and is skipped; blank lines are skipped."""
    first = True
    for lineno, raw in enumerate(lines, 1):
        line = raw.rstrip("\r\n")
        if not line.strip():
            continue
        fields = line.split(",")
        if first:
            first = False
            if not _NUMBER.match(fields[0].strip()):
                continue
        yield f"{source}:{lineno}", fields


def _int(text: str, what: str, where: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise FormatError(where, f"{what} {text!r} is not an integer") from None


def _messages(lines: Iterable[str], source: str) -> Iterator[Message]:
    for where, fields in _data_lines(lines, source):
        if len(fields) != 6:
            raise FormatError(where, f"a message row has 6 fields, this one {len(fields)}")
        msg = Message(
            parse_time(fields[0], where),
            _int(fields[1], "Type", where),
            _int(fields[2], "OrderID", where),
            _int(fields[3], "Size", where),
            _int(fields[4], "Price", where),
            _int(fields[5], "Direction", where),
            where,
        )
        _check_message(msg)
        yield msg


def _check_message(msg: Message) -> None:
    where = msg.where
    if not ADD <= msg.kind <= HALT:
        raise FormatError(where, f"unknown message Type {msg.kind} (1..7)")
    if msg.direction not in (1, -1):
        raise FormatError(where, f"Direction {msg.direction} is neither 1 (buy) nor -1 (sell)")
    if msg.size < 0:
        raise FormatError(where, f"negative Size {msg.size}")
    if msg.kind == HALT:
        if msg.price not in HALT_NOTES:
            raise FormatError(where, f"trading-halt Price {msg.price} is not -1, 0 or 1")
    elif msg.price <= 0:
        raise FormatError(where, f"Price {msg.price} is not positive")


def _rows(lines: Iterable[str], source: str, levels: int | None) -> Iterator[tuple[Row, int]]:
    """Each row with its depth L (taken from the first row unless given)."""
    for where, fields in _data_lines(lines, source):
        if levels is None:
            if not fields or len(fields) % 4:
                raise FormatError(where, f"an orderbook row has 4 fields per level, this one {len(fields)}")
            levels = len(fields) // 4
        elif len(fields) != 4 * levels:
            raise FormatError(where, f"expected {4 * levels} fields ({levels} levels), got {len(fields)}")
        values = [_int(f, "orderbook value", where) for f in fields]
        asks = _side(values[0::4], values[1::4], EMPTY_ASK_PRICE, 1, "ask", where)
        bids = _side(values[2::4], values[3::4], EMPTY_BID_PRICE, -1, "bid", where)
        yield Row(bids, asks, where), levels


def _side(prices: list[int], sizes: list[int], empty: int, order: int, side: str, where: str) -> tuple[Level, ...]:
    """The occupied levels of one side; fillers must come after every real level,
    and prices must get strictly worse (`order` 1: rising, -1: falling)."""
    out: list[Level] = []
    for k, (price, size) in enumerate(zip(prices, sizes, strict=True), 1):
        if price == empty and size == 0:
            continue
        if len(out) < k - 1:
            raise FormatError(where, f"{side} level {k} follows an empty level")
        if size <= 0 or price <= 0:
            raise FormatError(where, f"{side} level {k}: price {price} size {size} is not a level")
        if out and (price - out[-1][0]) * order <= 0:
            raise FormatError(where, f"{side} level {k} price {price} is not worse than level {k - 1}")
        out.append((price, size))
    return tuple(out)


def _lockstep(messages: Iterator[Message], rows: Iterator[tuple[Row, int]]) -> Iterator[tuple[Message, Row, int]]:
    for msg in messages:
        pair = next(rows, None)
        if pair is None:
            raise FormatError(msg.where, "the orderbook file has no row for this message")
        yield msg, pair[0], pair[1]
    extra = next(rows, None)
    if extra is not None:
        raise FormatError(extra[0].where, "the message file has no message for this orderbook row")


# ----------------------------------------------------------------------------- book logic


class _Side:
    """One side of the reader's book, with the sizes it had before this message."""

    __slots__ = ("before", "book", "is_bid")

    def __init__(self, book: Book, is_bid: bool) -> None:
        self.book = book
        self.is_bid = is_bid
        self.before: dict[int, int] = {}

    def size(self, price: int) -> int:
        return self.book.bid_size(price) if self.is_bid else self.book.ask_size(price)

    def set(self, price: int, size: int) -> None:
        old = self.book.set_bid(price, size) if self.is_bid else self.book.set_ask(price, size)
        self.before.setdefault(price, old)

    def levels(self) -> list[Level]:
        return self.book.bids() if self.is_bid else self.book.asks()

    def worse(self, price: int, than: int) -> bool:
        return price < than if self.is_bid else price > than

    def changes(self) -> tuple[Level, ...]:
        size = self.size
        return tuple((p, size(p)) for p, old in self.before.items() if size(p) != old)


def _apply_message(side: _Side, msg: Message) -> None:
    """The message's change to its aggregated price level; orders are not tracked,
    so an order never seen simply changes the level at its price (if any)."""
    if msg.kind == ADD:
        side.set(msg.price, side.size(msg.price) + msg.size)
    elif msg.kind in (PARTIAL_CANCEL, DELETE, EXECUTE):
        side.set(msg.price, max(side.size(msg.price) - msg.size, 0))


def _follow_depth(side: _Side, shown_before: tuple[Level, ...], shown: tuple[Level, ...], depth: int) -> None:
    """The feed shows only the top `depth` levels: drop what fell below them, and
    take levels that came into view from unseen depth from the new row."""
    for price, _ in side.levels()[depth:]:
        side.set(price, 0)
    if len(shown_before) < depth:
        return  # the side was shown whole: nothing hides beneath it
    worst = shown_before[-1][0]
    for price, size in shown:
        if side.worse(price, worst):
            side.set(price, size)


def _step(book: Book, msg: Message, before: Row, row: Row, depth: int) -> tuple[tuple[Level, ...], tuple[Level, ...]]:
    bids, asks = _Side(book, True), _Side(book, False)
    _apply_message(bids if msg.direction == 1 else asks, msg)
    _follow_depth(bids, before.bids, row.bids, depth)
    _follow_depth(asks, before.asks, row.asks, depth)
    return bids.changes(), asks.changes()


def _note(msg: Message) -> str:
    return HALT_NOTES[msg.price] if msg.kind == HALT else ""


# ----------------------------------------------------------------------------- reader


def read(
    message_lines: Iterable[str],
    orderbook_lines: Iterable[str],
    *,
    symbol: str,
    levels: int | None = None,
    date: Date | str | None = None,
    source: str = "lobster",
    orderbook_source: str | None = None,
) -> Iterator[Record]:
    """One record per message, each checked against its orderbook row.

    `levels` defaults to the width of the orderbook rows; `date` (the trading
    day, as in the file name) turns the Time column into Unix time.
    """
    clock = _Clock(date)
    rows = _rows(orderbook_lines, orderbook_source or f"{source} orderbook", levels)
    book = Book()
    before: Row | None = None
    for msg, row, depth in _lockstep(_messages(message_lines, source), rows):
        time_ns = clock.epoch_ns(msg.after_midnight_ns)
        check = TopLevels(symbol, row.bids, row.asks, depth)
        if before is None:
            # Row 1 already holds message 1's change; the book before it is unknown.
            book.replace(row.bids, row.asks)
            instrument = Instrument(symbol, PRICE_SCALE, 0, venue=VENUE)
            update = BookUpdate(symbol, row.bids, row.asks, replace=True, event_time_ns=time_ns)
            yield Record(time_ns, (instrument,), (update,), (check,), _note(msg))
        else:
            bids, asks = _step(book, msg, before, row, depth)
            update = BookUpdate(symbol, bids, asks, event_time_ns=time_ns)
            yield Record(time_ns, (), (update,), (check,), _note(msg))
        before = row
