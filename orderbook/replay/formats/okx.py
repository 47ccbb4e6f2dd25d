"""OKX v5 `books` channel, as raw cryptofeed captures (see `capture`).

Messages, after the capture's receive time:

    {"event": "subscribe", "arg": {"channel": "books", "instId": "BTC-USDT"}}
    {"arg": {"channel": "books", "instId": "BTC-USDT"}, "action": "snapshot",
     "data": [{"asks": [[price, size, "0", orders], ...], "bids": [...], "ts": "<ms>", "checksum": -914047754}]}
    {"arg": {...}, "action": "update", "data": [{"asks": [...], "bids": [...], "ts": "...", "checksum": ...}]}

Rules:
- `size` is the new absolute size; "0" removes the level.
- Every message carries `checksum`: the CRC32, as a signed 32-bit integer,
  of "bid:bidsize:ask:asksize:..." over the top 25 levels of each side,
  interleaved best first, each price and size exactly as OKX wrote it (a
  side shorter than 25 just ends). The reader keeps the text it received
  for every level, computes the CRC after each message and compares. A
  message that does not match never becomes a record: it is a gap.
- A gap stops the reader (`gaps="error"`, a FormatError naming file:line,
  instrument and what was wrong); with `gaps="resync"` it is noted, the
  instrument's updates are skipped until its next snapshot, and the count of
  skipped messages is noted when it comes (or at the end of the file).
- A line that is not JSON, or cut short, is an error too; with resync it is
  a gap of the instrument whose book channel its text still names, else
  noted as an unreadable line.
- Newer OKX messages carry `seqId`/`prevSeqId`: where present, an update's
  `prevSeqId` must equal the last `seqId`, another gap if not.
- Scales and increments come from the instruments (`OKX.0`: cryptofeed's
  saved REST `/api/v5/public/instruments` responses): `tickSz` and `lotSz`.
  An instrument not in it (or no instruments file) takes the decimals its
  first snapshot writes, increments of 1.

Each record that passed its checksum carries a `TopLevels` reference: the
25 levels per side the checksum covered, as integers, so verify (offline or
through a node) checks the rebuilt book against exactly what OKX certified.
Tickers, trades and other channels yield nothing.

`time_ns` is the receive time; `event_time_ns` is OKX's `ts`.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from orderbook.core.book import Book, Level
from orderbook.core.events import BookUpdate
from orderbook.core.instrument import Instrument

from ..records import (
    FormatError,
    Record,
    TopLevels,
    instrument_from_text,
    known_units,
    loads,
    significant_decimals,
    top_levels,
    units,
)
from .capture import BAD, OPENED, RECEIVED, REST, CaptureLine, read_capture
from .gaps import GapPolicy, Gaps, damage

VENUE = "okx"
CHECKSUM_DEPTH = 25
KIND = "okx checksum"  # how reports name the check each record passed
BOOK_CHANNELS = ("books", "books-l2-tbt", "books50-l2-tbt")
# The instrument of a damaged book message, from what is left of its text.
_INST_ID = re.compile(r'"channel"\s*:\s*"books[^"]*"\s*,\s*"instId"\s*:\s*"([^"]+)"')


def okx_checksum(bids: Sequence[str], asks: Sequence[str]) -> int:
    """OKX's book checksum over "price:size" texts, best first per side.

    >>> okx_checksum(["3366.1:7", "3366:6"], ["3366.8:9", "3368:8"])
    -1881014294
    """
    parts: list[str] = []
    for i in range(CHECKSUM_DEPTH):
        if i < len(bids):
            parts.append(bids[i])
        if i < len(asks):
            parts.append(asks[i])
    crc = zlib.crc32(":".join(parts).encode("ascii"))
    return crc - (1 << 32) if crc >= 1 << 31 else crc


# ----------------------------------------------------------------------------- instruments


def read_instruments(lines: Iterable[str], source: str = "instruments") -> dict[str, Instrument]:
    """Instruments from saved REST `/api/v5/public/instruments` responses;
    a later response overrides an earlier one for the same instId."""
    return {name: Instrument(*terms, venue=VENUE) for name, terms in _instrument_terms(lines, source).items()}


# What an Instrument is built from: symbol, scales, increments, base, quote.
_Terms = tuple[str, int, int, int, int, str, str]


def _instrument_terms(lines: Iterable[str], source: str) -> dict[str, _Terms]:
    """`read_instruments`, each checked but not yet built: a file lists
    thousands of instruments and a capture uses a few (see `_Reader.instrument`)."""
    out: dict[str, _Terms] = {}
    for line in read_capture(lines, source):
        if line.kind != REST or "/public/instruments" not in line.url:
            continue
        try:
            body = loads(line.body)
        except ValueError as exc:
            raise FormatError(line.where, f"not JSON: {exc}") from None
        data = body.get("data") if isinstance(body, dict) else None
        if body.get("code") != "0" or not isinstance(data, list):
            raise FormatError(line.where, f"not an instruments response: {line.body[:80]!r}")
        for item in data:
            terms = _instrument(item, line.where)
            out[terms[0]] = terms
    return out


def _instrument(item: Any, where: str) -> _Terms:
    # Run for each of the thousands of instruments in a file: plain lookups.
    name = item.get("instId") if type(item) is dict else None
    if type(name) is not str:
        raise FormatError(where, f"instrument without instId: {str(item)[:80]}")
    get = item.get
    tick, lot = get("tickSz"), get("lotSz")
    if type(tick) is not str or type(lot) is not str:
        raise FormatError(where, f"{name}: tickSz and lotSz must be decimal strings")
    price_scale, size_scale, pinc, sinc = _grid(tick, lot, where)
    if pinc < 1 or sinc < 1:
        raise FormatError(where, f"{name}: tickSz {tick!r} and lotSz {lot!r} must be positive")
    base, quote = get("baseCcy") or "", get("quoteCcy") or ""
    if not base:  # swaps, futures, options: "BTC-USD" names both
        base, _, quote = str(get("uly") or "").partition("-")
    return (name, price_scale, size_scale, pinc, sinc, base, quote)


@lru_cache(maxsize=1024)
def _grid(tick: str, lot: str, where: str) -> tuple[int, int, int, int]:
    """Scales and increments of a tickSz and lotSz; thousands of instruments share a few."""
    price_scale, size_scale = significant_decimals(tick), significant_decimals(lot)
    return price_scale, size_scale, units(tick, price_scale, where), units(lot, size_scale, where)


# ----------------------------------------------------------------------------- capture


@dataclass(slots=True)
class _Symbol:
    """What the reader holds per instrument: its book and the text OKX wrote
    for every level (price ticks -> "price:size"), which the checksum is over."""

    instrument: Instrument | None = None  # the last definition yielded
    book: Book | None = None  # None: no book to continue (none yet, or waiting for a snapshot)
    bid_text: dict[int, str] = field(default_factory=dict)
    ask_text: dict[int, str] = field(default_factory=dict)
    seq: int | None = None  # the last seqId, where OKX sends them


def read(
    lines: Iterable[str],
    *,
    instruments: Iterable[str] | None = None,
    gaps: Gaps = "error",
    source: str = "okx",
    instruments_source: str = "instruments",
) -> Iterator[Record]:
    """Yield one `Record` per `books` snapshot or update whose checksum matches.

    `instruments`: the lines of cryptofeed's saved REST instruments responses
    (OKX.0), for tick and lot sizes.
    """
    policy = GapPolicy(gaps)  # checks `gaps` now, not at the first record
    defined = _instrument_terms(instruments, instruments_source) if instruments is not None else {}
    return _Reader(source, policy, defined).records(lines)


class _Reader:
    def __init__(self, source: str, gaps: GapPolicy, defined: dict[str, _Terms]) -> None:
        self.source = source
        self.gaps = gaps
        self.defined = defined
        self.built: dict[str, Instrument] = {}
        self.symbols: dict[str, _Symbol] = {}

    def records(self, lines: Iterable[str]) -> Iterator[Record]:
        time_ns = 0
        for line in read_capture(lines, self.source, bad_lines=True):
            time_ns = line.time_ns or time_ns
            if line.kind == BAD:
                yield from self.damaged(line, line.url, line.body)
                continue
            if line.kind == OPENED:
                # A new connection subscribes again: each book starts from its snapshot.
                for s in self.symbols.values():
                    if s.book is not None:
                        s.book, s.seq = None, None
                continue
            if line.kind != RECEIVED:
                continue
            try:
                msg = loads(line.body)
            except ValueError as exc:
                yield from self.damaged(line, line.body, damage(line.body, line.ended, exc))
                continue
            if not isinstance(msg, dict) or ("action" not in msg and "data" not in msg):
                continue  # subscribe acks, errors, pongs: no book change
            arg = msg.get("arg")
            if not isinstance(arg, dict) or arg.get("channel") not in BOOK_CHANNELS:
                continue  # tickers, trades, books5...: not this reader's business
            name = arg.get("instId")
            if not isinstance(name, str) or not name:
                raise FormatError(line.where, "a book message without arg.instId")
            data = msg.get("data")
            action = msg.get("action")
            if action not in ("snapshot", "update") or not isinstance(data, list):
                raise FormatError(line.where, f"{name}: a book message needs action snapshot|update and a data list")
            for entry in data:
                if not isinstance(entry, dict):
                    raise FormatError(line.where, f"{name}: book data entries must be objects")
                if action == "snapshot":
                    yield from self.snapshot(name, entry, line.time_ns, line.where)
                else:
                    yield from self.update(name, entry, line.time_ns, line.where)
        yield from self.gaps.finish(self.symbols, time_ns)

    def instrument(self, name: str) -> Instrument | None:
        """The instruments file's definition of `name`, built on first use."""
        inst = self.built.get(name)
        if inst is None:
            terms = self.defined.get(name)
            if terms is None:
                return None
            inst = self.built[name] = Instrument(*terms, venue=VENUE)
        return inst

    def symbol(self, name: str) -> _Symbol:
        s = self.symbols.get(name)
        if s is None:
            s = self.symbols[name] = _Symbol()
        return s

    def damaged(self, line: CaptureLine, text: str, problem: str) -> Iterator[Record]:
        """A line that cannot be read: an error; with resync, a gap for the
        instrument its text still names, else a note."""
        found = _INST_ID.search(text)
        name = found.group(1) if found else None
        note = self.gaps.damaged(name, problem, line.time_ns, line.where)
        if name is not None:
            s = self.symbol(name)
            s.book, s.seq = None, None  # already so if it was waiting
        if note is not None:
            yield note

    def gap(self, s: _Symbol, name: str, problem: str, time_ns: int, where: str) -> Record:
        """The book can no longer be trusted: stop, or drop it until the next snapshot."""
        note = self.gaps.gap(name, problem, time_ns, where)
        s.book, s.seq = None, None
        return note

    def snapshot(self, name: str, entry: dict[str, Any], time_ns: int, where: str) -> Iterator[Record]:
        s = self.symbol(name)
        bids_raw, asks_raw = _entries(entry, "bids", name, where), _entries(entry, "asks", name, where)
        inst = self.instrument(name) or s.instrument or _from_data(name, bids_raw + asks_raw, where)
        # Parsed whole before anything is kept, so a bad level changes nothing.
        bids = _levels(inst, bids_raw, name, where)
        asks = _levels(inst, asks_raw, name, where)
        checksum = _checksum(entry, name, where)
        event_ns = _event_ns(entry, name, where) or time_ns
        book = Book()
        book.replace(bids, asks)
        bid_text = {p: f"{e[0]}:{e[1]}" for (p, size), e in zip(bids, bids_raw, strict=True) if size}
        ask_text = {p: f"{e[0]}:{e[1]}" for (p, size), e in zip(asks, asks_raw, strict=True) if size}
        top = top_levels(name, book, CHECKSUM_DEPTH, KIND)
        got = _book_checksum(top, bid_text, ask_text)
        if got != checksum:
            yield self.gap(s, name, f"snapshot checksum {got} != venue's {checksum}", time_ns, where)
            return
        yield from self.gaps.resynced(name, time_ns)
        s.book, s.bid_text, s.ask_text = book, bid_text, ask_text
        s.seq = _seq(entry, "seqId", name, where)
        new = (inst,) if inst != s.instrument else ()
        s.instrument = inst
        update = BookUpdate(name, tuple(book.bids()), tuple(book.asks()), replace=True, event_time_ns=event_ns)
        yield Record(time_ns, instruments=new, updates=(update,), checks=(top,))

    def update(self, name: str, entry: dict[str, Any], time_ns: int, where: str) -> Iterator[Record]:
        s = self.symbol(name)
        book, inst = s.book, s.instrument
        if book is None or inst is None:
            if not self.gaps.skip(name):
                yield self.gap(s, name, "update with no book to apply it to (no snapshot before it)", time_ns, where)
            return
        bids_raw, asks_raw = _entries(entry, "bids", name, where), _entries(entry, "asks", name, where)
        bids = _levels(inst, bids_raw, name, where)
        asks = _levels(inst, asks_raw, name, where)
        checksum = _checksum(entry, name, where)
        event_ns = _event_ns(entry, name, where) or time_ns
        prev = _seq(entry, "prevSeqId", name, where)
        if prev is not None and s.seq is not None and prev != s.seq:
            yield self.gap(s, name, f"prevSeqId {prev} != the last seqId {s.seq}", time_ns, where)
            return
        bid_changes, ask_changes = book.apply(tuple(bids), tuple(asks))
        for levels, raw, text in ((bids, bids_raw, s.bid_text), (asks, asks_raw, s.ask_text)):
            for (price, size), e in zip(levels, raw, strict=True):
                if size:
                    text[price] = f"{e[0]}:{e[1]}"
                else:
                    text.pop(price, None)
        top = top_levels(name, book, CHECKSUM_DEPTH, KIND)
        got = _book_checksum(top, s.bid_text, s.ask_text)
        if got != checksum:
            yield self.gap(s, name, f"checksum {got} != venue's {checksum}", time_ns, where)
            return
        s.seq = _seq(entry, "seqId", name, where)
        update = BookUpdate(name, bid_changes, ask_changes, event_time_ns=event_ns)
        yield Record(time_ns, updates=(update,), checks=(top,))


def _entries(entry: dict[str, Any], key: str, name: str, where: str) -> list[list[str]]:
    raw = entry.get(key, [])
    if not isinstance(raw, list):
        raise FormatError(where, f'{name}: "{key}" must be a list of levels')
    for e in raw:
        # Loops, not all(): this runs for every level of every message.
        if type(e) is not list or len(e) < 2:
            raise FormatError(where, f"{name}: bad level {e!r}: want [price, size, ...] strings")
        for x in e:
            if type(x) is not str:
                raise FormatError(where, f"{name}: bad level {e!r}: want [price, size, ...] strings")
    return raw


def _levels(inst: Instrument, raw: list[list[str]], name: str, where: str) -> list[Level]:
    out = []
    price_scale, size_scale = inst.price_scale, inst.size_scale
    for e in raw:
        # The cached conversion first; `units` again only to raise its error.
        price = known_units(e[0], price_scale)
        if price is None:
            price = units(e[0], price_scale, where)
        size = known_units(e[1], size_scale)
        if size is None:
            size = units(e[1], size_scale, where)
        if price <= 0 or size < 0:
            # Refused here: the reader's own book must never hold what the server would reject.
            raise FormatError(where, f"{name}: level {e[0]} x {e[1]} out of range")
        if price % inst.price_increment or size % inst.size_increment:
            raise FormatError(where, f"{name}: level {e[0]} x {e[1]} is off the tickSz or lotSz grid")
        out.append((price, size))
    return out


def _checksum(entry: dict[str, Any], name: str, where: str) -> int:
    value = entry.get("checksum")
    if type(value) is not int or not -(1 << 31) <= value < 1 << 31:
        raise FormatError(where, f"{name}: checksum {value!r} is not a signed 32-bit integer")
    return value


def _event_ns(entry: dict[str, Any], name: str, where: str) -> int:
    ts = entry.get("ts")
    if ts is None:
        return 0
    if not isinstance(ts, str) or not ts.isdigit():
        raise FormatError(where, f"{name}: ts {ts!r} is not milliseconds")
    return int(ts) * 1_000_000


def _seq(entry: dict[str, Any], key: str, name: str, where: str) -> int | None:
    value = entry.get(key)
    if value is None:
        return None
    if type(value) is not int:
        raise FormatError(where, f"{name}: {key} {value!r} is not an integer")
    return value


def _book_checksum(top: TopLevels, bid_text: dict[int, str], ask_text: dict[int, str]) -> int:
    """The checksum of the book whose top 25 levels are `top` (see `_top`)."""
    bids = [bid_text[p] for p, _ in top.bids]
    asks = [ask_text[p] for p, _ in top.asks]
    return okx_checksum(bids, asks)


def _from_data(name: str, raw: list[list[str]], where: str) -> Instrument:
    return instrument_from_text(name, [e[0] for e in raw], [e[1] for e in raw], VENUE, where)
