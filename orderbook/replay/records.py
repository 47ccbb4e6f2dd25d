"""What every recorded-data reader yields: timed records of book changes,
each with the venue's own reference for the book that must result.

Readers are pure generators over lines (or byte chunks) that the I/O edge
opens; they stream, holding at most the books they need to turn a venue's
message into absolute level sizes. A record's updates are applied in order
and then every check must hold against the resulting books.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from decimal import Decimal
from functools import lru_cache
from typing import Any, TypeVar

import orjson

from orderbook.core.book import Book, Level
from orderbook.core.errors import InvalidInput
from orderbook.core.events import BookUpdate
from orderbook.core.instrument import Instrument
from orderbook.core.units import to_units


class FormatError(InvalidInput):
    """A recording does not follow its format; the message names where."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{where}: {message}")
        self.where = where


# ----------------------------------------------------------------------------- references


@dataclass(frozen=True, slots=True)
class Checksum:
    """The venue's CRC32 of the top 10 levels (Kraken's rule, which is ours)."""

    symbol: str
    value: int


@dataclass(frozen=True, slots=True)
class BestPrices:
    """The venue's best bid and ask; a size of None means the venue gave none.
    A side of None means that side must be empty."""

    symbol: str
    bid: Level | None
    ask: Level | None
    bid_size_known: bool = True
    ask_size_known: bool = True


@dataclass(frozen=True, slots=True)
class TopLevels:
    """The venue's own book, best first, to the depth it shows: the book's top
    `len(bids)` bids and `len(asks)` asks must equal these exactly, and it must
    hold no more levels than `depth` per side (0 = no limit); with a depth, a
    side shorter than it must be the whole side."""

    symbol: str
    bids: tuple[Level, ...]
    asks: tuple[Level, ...]
    depth: int = 0
    # What vouched for these levels, as reports name it: "book" for a venue's
    # own book file; a venue check that the reader passed ("okx checksum").
    kind: str = "book"


Reference = Checksum | BestPrices | TopLevels


@dataclass(frozen=True, slots=True)
class Record:
    """One venue message (or one row) as it was received.

    `time_ns` is when the recorder received it (the venue's time where the
    format has no receive time): replay paces by it. `instruments` are
    definitions first needed here; `note` names an event with no book change
    (a trading halt, a resync) for reports and logs.
    """

    time_ns: int
    instruments: tuple[Instrument, ...] = ()
    updates: tuple[BookUpdate, ...] = ()
    checks: tuple[Reference, ...] = ()
    note: str = ""


# What carries a symbol to rename: a definition, an update or a reference.
_Named = TypeVar("_Named", bound=Instrument | BookUpdate | Checksum | BestPrices | TopLevels)


def renamed(records: Iterable[Record], names: Mapping[str, str]) -> Iterator[Record]:
    """`records` with symbols renamed (`names`: old -> new) in definitions,
    updates and references; other symbols pass unchanged."""
    if not names:
        yield from records
        return

    def name(obj: _Named) -> _Named:
        new = names.get(obj.symbol)
        return obj if new is None else replace(obj, symbol=new)

    for rec in records:
        yield replace(
            rec,
            instruments=tuple(map(name, rec.instruments)),
            updates=tuple(map(name, rec.updates)),
            checks=tuple(map(name, rec.checks)),
        )


def parse_renames(pairs: Iterable[str]) -> dict[str, str]:
    """`OLD=NEW` pairs (the CLI's --rename) as a mapping; ValueError if malformed."""
    names: dict[str, str] = {}
    for pair in pairs:
        old, sep, new = pair.partition("=")
        if not sep or not old or not new or old in names:
            raise ValueError(f"--rename {pair!r}: expected OLD=NEW, each old symbol once")
        names[old] = new
    return names


# ----------------------------------------------------------------------------- JSON


def loads(text: str) -> Any:
    """`json.loads(text)`, about twice as fast. orjson gives the same values
    for what both accept (prices stay the strings the venue wrote); what it
    refuses (NaN, integers past 64 bits, lone surrogates, bad JSON) goes to
    json, so the result, or the error and its message, is json's."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


# ----------------------------------------------------------------------------- decimals


def decimals(text: str) -> int:
    """Digits after the point as written: "0.000022900" -> 9, "12" -> 0."""
    return len(text.partition(".")[2])


def significant_decimals(text: str) -> int:
    """Decimals needed to hold the value exactly: "0.0" -> 0, "1.50" -> 1."""
    frac = text.partition(".")[2].rstrip("0")
    return len(frac)


@lru_cache(maxsize=1 << 16)
def known_units(text: str, scale: int) -> int | None:
    """`units` of a string, or None where `units` would raise. Cached: a
    feed writes the same few prices and sizes over and over, and a lookup
    costs a fraction of parsing one."""
    try:
        return to_units(text, scale)
    except InvalidInput:
        return None


def units(text: object, scale: int, where: str) -> int:
    """Exact integer units of a decimal string, or a FormatError naming `where`."""
    if type(text) is str:
        value = known_units(text, scale)
        if value is not None:
            return value
    if not isinstance(text, str):
        raise FormatError(where, f"expected a decimal string, got {text!r}")
    try:
        return to_units(text, scale)
    except InvalidInput as exc:
        raise FormatError(where, f"{exc} (scale {scale}); pass a larger scale") from None


def scale_of(values: list[str] | tuple[str, ...], floor: int = 0) -> int:
    """The smallest scale that holds every value exactly (at least `floor`)."""
    return max([floor, *(significant_decimals(v) for v in values)])


def seconds_to_ns(text: str, where: str) -> int:
    """A decimal seconds string (e.g. "1618678132.8413") as exact integer ns."""
    whole, _, frac = text.partition(".")
    digits = whole + frac
    # Plain digits to the nanosecond (every capture's times): no Decimal needed.
    if len(frac) <= 9 and len(whole) <= 19 and digits.isdigit() and digits.isascii():
        return int(digits + "0" * (9 - len(frac)))
    try:
        return int(Decimal(text.strip()).scaleb(9).to_integral_value())
    except ArithmeticError:
        raise FormatError(where, f"not a timestamp: {text!r}") from None


def top_levels(name: str, book: Book, depth: int, kind: str) -> TopLevels:
    """A reference of `book`'s best `depth` levels a side, checked by `kind`;
    when the whole book is within them, it says so, and the checked book may
    hold nothing more."""
    bids, asks = tuple(book.bids(depth)), tuple(book.asks(depth))
    whole = book.bid_count() <= depth and book.ask_count() <= depth
    return TopLevels(name, bids, asks, max(len(bids), len(asks), 1) if whole else 0, kind)


def instrument_from_text(name: str, prices: list[str], sizes: list[str], venue: str, where: str) -> Instrument:
    """Scales from a first snapshot's decimal text, for an instrument its
    capture's instruments file does not define."""
    if not prices:
        raise FormatError(
            where, f"{name}: empty first snapshot and not in the instruments file, so its scales are unknown"
        )
    return Instrument(name, scale_of(prices), scale_of(sizes), venue=venue)
