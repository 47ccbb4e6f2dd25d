"""Deribit API v2 `book.<instrument>.raw` channel, as raw cryptofeed captures
(see `capture`).

Messages, after the capture's receive time (JSON-RPC notifications):

    {"jsonrpc": "2.0", "method": "subscription", "params": {"channel": "book.BTC-24SEP21-8000-P.raw",
     "data": {"type": "snapshot", "timestamp": <ms>, "instrument_name": "...", "change_id": N,
              "bids": [["new", price, amount], ...], "asks": [...]}}}
    {... "data": {"type": "change", "timestamp": <ms>, "prev_change_id": N, "change_id": M,
                  "bids": [["new" | "change" | "delete", price, amount], ...], "asks": [...]}}

Rules:
- Prices and amounts are JSON numbers: they are read as the digits written,
  never as floats. `amount` is the level's new absolute size ("delete" has 0).
- A change's `prev_change_id` must equal the `change_id` held for the
  instrument, and its actions must fit the book: "new" for a price not in it,
  "change" and "delete" for one that is. Anything else is a gap.
- A gap stops the reader (`gaps="error"`, a FormatError naming file:line,
  instrument and what was wrong); with `gaps="resync"` it is noted, the
  instrument's changes are skipped until its next snapshot, and the count of
  skipped messages is noted when it comes (or at the end of the file).
- A line that is not JSON, or cut short, is an error too; with resync it is
  a gap of the instrument whose book channel its text still names, else
  noted as an unreadable line.
- Scales and increments come from the instruments (`DERIBIT.0`: cryptofeed's
  saved REST `public/get_instruments` responses): `tick_size` and
  `min_trade_amount`. An option's prices are in its `quote_currency` (BTC or
  ETH), as Deribit quotes them. An instrument not in it (or no instruments
  file) takes the decimals its first snapshot writes, increments of 1.

Each change that continued the chain carries a `TopLevels` reference: the
reader's own book after it (the top 25 levels per side, the whole book when
it is no deeper), so verify (offline or through a node) counts one check per
chained change. Tickers, trades and other channels yield nothing.

`time_ns` is the receive time; `event_time_ns` is Deribit's `timestamp`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from orderbook.core.book import Book, Level
from orderbook.core.events import BookUpdate
from orderbook.core.instrument import Instrument

from ..records import FormatError, Record, instrument_from_text, significant_decimals, top_levels, units
from .capture import BAD, OPENED, RECEIVED, REST, CaptureLine, read_capture
from .gaps import GapPolicy, Gaps, damage

VENUE = "deribit"
CHECK_DEPTH = 25
KIND = "deribit change chain"  # how reports name the check each record passed
ACTIONS = ("new", "change", "delete")
# The instrument of a damaged book message, from what is left of its text.
_NAME = re.compile(r'"channel"\s*:\s*"book\.([^".]+)')


def _loads(text: str) -> Any:
    # Numbers keep the digits written: no float ever holds a price or amount.
    return json.loads(text, parse_float=str, parse_int=str)


# ----------------------------------------------------------------------------- instruments


def read_instruments(lines: Iterable[str], source: str = "instruments") -> dict[str, Instrument]:
    """Instruments from saved REST `public/get_instruments` responses; a later
    response overrides an earlier one for the same instrument."""
    out: dict[str, Instrument] = {}
    for line in read_capture(lines, source):
        if line.kind != REST or "get_instruments" not in line.url:
            continue
        try:
            body = _loads(line.body)
        except ValueError as exc:
            raise FormatError(line.where, f"not JSON: {exc}") from None
        result = body.get("result") if isinstance(body, dict) else None
        if not isinstance(result, list):
            raise FormatError(line.where, f"not an instruments response: {line.body[:80]!r}")
        for item in result:
            inst = _instrument(item, line.where)
            out[inst.symbol] = inst
    return out


def _instrument(item: Any, where: str) -> Instrument:
    if not isinstance(item, dict) or not isinstance(item.get("instrument_name"), str):
        raise FormatError(where, f"instrument without instrument_name: {str(item)[:80]}")
    name = item["instrument_name"]
    tick, lot = item.get("tick_size"), item.get("min_trade_amount")
    if not isinstance(tick, str) or not isinstance(lot, str):
        raise FormatError(where, f"{name}: tick_size and min_trade_amount must be numbers")
    price_scale, size_scale = significant_decimals(tick), significant_decimals(lot)
    pinc, sinc = units(tick, price_scale, where), units(lot, size_scale, where)
    if pinc < 1 or sinc < 1:
        raise FormatError(where, f"{name}: tick_size {tick} and min_trade_amount {lot} must be positive")
    base, quote = str(item.get("base_currency") or ""), str(item.get("quote_currency") or "")
    return Instrument(name, price_scale, size_scale, pinc, sinc, base=base, quote=quote, venue=VENUE)


# ----------------------------------------------------------------------------- capture


@dataclass(slots=True)
class _Symbol:
    instrument: Instrument | None = None  # the last definition yielded
    book: Book | None = None  # None: no book to continue (none yet, or waiting for a snapshot)
    change_id: int = 0


def read(
    lines: Iterable[str],
    *,
    instruments: Iterable[str] | None = None,
    gaps: Gaps = "error",
    source: str = "deribit",
    instruments_source: str = "instruments",
) -> Iterator[Record]:
    """Yield one `Record` per `book` snapshot or chained change.

    `instruments`: the lines of cryptofeed's saved REST get_instruments
    responses (DERIBIT.0), for tick sizes and minimum amounts.
    """
    policy = GapPolicy(gaps)  # checks `gaps` now, not at the first record
    defined = read_instruments(instruments, instruments_source) if instruments is not None else {}
    return _Reader(source, policy, defined).records(lines)


class _Reader:
    def __init__(self, source: str, gaps: GapPolicy, defined: dict[str, Instrument]) -> None:
        self.source = source
        self.gaps = gaps
        self.defined = defined
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
                    s.book = None
                continue
            if line.kind != RECEIVED:
                continue
            try:
                msg = _loads(line.body)
            except ValueError as exc:
                yield from self.damaged(line, line.body, damage(line.body, line.ended, exc))
                continue
            if not isinstance(msg, dict) or msg.get("method") != "subscription":
                continue  # subscribe results, heartbeats, errors: no book change
            params = msg.get("params")
            if not isinstance(params, dict) or not isinstance(params.get("channel"), str):
                raise FormatError(line.where, "a subscription message without params.channel")
            channel: str = params["channel"]
            parts = channel.split(".")
            if parts[0] != "book":
                continue  # ticker, trades...: not this reader's business
            if len(parts) != 3:
                # book.<instrument>.<group>.<depth>.<interval> sends whole books without change ids.
                raise FormatError(line.where, f"{channel}: only book.<instrument>.<interval> channels are read")
            name, data = parts[1], params.get("data")
            if not isinstance(data, dict) or data.get("instrument_name", name) != name:
                raise FormatError(line.where, f"{name}: book data must be an object for this instrument")
            kind = data.get("type")
            if kind == "snapshot":
                yield from self.snapshot(name, data, line.time_ns, line.where)
            elif kind == "change":
                yield from self.change(name, data, line.time_ns, line.where)
            else:
                raise FormatError(line.where, f"{name}: book message type {kind!r}, want snapshot or change")
        yield from self.gaps.finish(self.symbols, time_ns)

    def symbol(self, name: str) -> _Symbol:
        s = self.symbols.get(name)
        if s is None:
            s = self.symbols[name] = _Symbol()
        return s

    def damaged(self, line: CaptureLine, text: str, problem: str) -> Iterator[Record]:
        """A line that cannot be read: an error; with resync, a gap for the
        instrument its text still names, else a note."""
        found = _NAME.search(text)
        name = found.group(1) if found else None
        note = self.gaps.damaged(name, problem, line.time_ns, line.where)
        if name is not None:
            s = self.symbol(name)
            s.book = None  # already so if it was waiting
        if note is not None:
            yield note

    def gap(self, s: _Symbol, name: str, problem: str, time_ns: int, where: str) -> Record:
        """The book can no longer be trusted: stop, or drop it until the next snapshot."""
        note = self.gaps.gap(name, problem, time_ns, where)
        s.book = None
        return note

    def snapshot(self, name: str, data: dict[str, Any], time_ns: int, where: str) -> Iterator[Record]:
        s = self.symbol(name)
        bids_raw, asks_raw = _entries(data, "bids", name, where), _entries(data, "asks", name, where)
        change_id = _int(data, "change_id", name, where)
        event_ns = _int(data, "timestamp", name, where) * 1_000_000 or time_ns
        inst = self.defined.get(name) or s.instrument or _from_data(name, bids_raw + asks_raw, where)
        bids, asks = _levels(inst, bids_raw, name, where), _levels(inst, asks_raw, name, where)
        if any(e[0] != "new" for e in bids_raw + asks_raw):
            raise FormatError(where, f"{name}: a snapshot's levels must all be 'new'")
        book = Book()
        book.replace(bids, asks)
        if book.bid_count() != len(bids) or book.ask_count() != len(asks):
            raise FormatError(where, f"{name}: a snapshot lists a price twice or with amount 0")
        yield from self.gaps.resynced(name, time_ns)
        s.book, s.change_id = book, change_id
        new = (inst,) if inst != s.instrument else ()
        s.instrument = inst
        update = BookUpdate(name, tuple(book.bids()), tuple(book.asks()), replace=True, event_time_ns=event_ns)
        yield Record(time_ns, instruments=new, updates=(update,))

    def change(self, name: str, data: dict[str, Any], time_ns: int, where: str) -> Iterator[Record]:
        s = self.symbol(name)
        book, inst = s.book, s.instrument
        if book is None or inst is None:
            if not self.gaps.skip(name):
                yield self.gap(s, name, "change with no book to apply it to (no snapshot before it)", time_ns, where)
            return
        bids_raw, asks_raw = _entries(data, "bids", name, where), _entries(data, "asks", name, where)
        prev, change_id = _int(data, "prev_change_id", name, where), _int(data, "change_id", name, where)
        event_ns = _int(data, "timestamp", name, where) * 1_000_000 or time_ns
        bids, asks = _levels(inst, bids_raw, name, where), _levels(inst, asks_raw, name, where)
        if prev != s.change_id:
            problem = f"prev_change_id {prev} != the last change_id {s.change_id}: changes were missed"
            yield self.gap(s, name, problem, time_ns, where)
            return
        # Every action is checked against the book before any is applied.
        problem = _misfit(book.bid_size, bids_raw, bids, "bid") or _misfit(book.ask_size, asks_raw, asks, "ask")
        if problem:
            yield self.gap(s, name, f"change {change_id}: {problem}", time_ns, where)
            return
        bid_changes, ask_changes = book.apply(tuple(bids), tuple(asks))
        s.change_id = change_id
        update = BookUpdate(name, bid_changes, ask_changes, event_time_ns=event_ns)
        yield Record(time_ns, updates=(update,), checks=(top_levels(name, book, CHECK_DEPTH, KIND),))


def _int(data: dict[str, Any], key: str, name: str, where: str) -> int:
    value = data.get(key)
    if not isinstance(value, str) or not value.isdigit():
        raise FormatError(where, f"{name}: {key} {value!r} is not a whole number")
    return int(value)


def _entries(data: dict[str, Any], key: str, name: str, where: str) -> list[list[str]]:
    raw = data.get(key, [])
    if not isinstance(raw, list):
        raise FormatError(where, f'{name}: "{key}" must be a list of levels')
    for e in raw:
        if not isinstance(e, list) or len(e) != 3 or e[0] not in ACTIONS or not all(isinstance(x, str) for x in e):
            raise FormatError(where, f"{name}: bad level {e!r}: want [new|change|delete, price, amount]")
    return raw


def _levels(inst: Instrument, raw: list[list[str]], name: str, where: str) -> list[Level]:
    out = []
    for action, price_text, amount_text in raw:
        price, size = units(price_text, inst.price_scale, where), units(amount_text, inst.size_scale, where)
        if price <= 0 or size < 0:
            # Refused here: the reader's own book must never hold what the server would reject.
            raise FormatError(where, f"{name}: level {price_text} x {amount_text} out of range")
        if price % inst.price_increment or size % inst.size_increment:
            raise FormatError(where, f"{name}: level {price_text} x {amount_text} is off the tick size or amount grid")
        if (size == 0) != (action == "delete"):
            raise FormatError(where, f"{name}: {action} {price_text} with amount {amount_text}")
        out.append((price, size))
    return out


def _misfit(held: Any, raw: list[list[str]], levels: list[Level], side: str) -> str:
    """Why an action does not fit the book: "new" for a held price, "change"
    or "delete" for one not held; "" when all fit (a price listed twice is
    judged after the earlier action)."""
    sizes: dict[int, int] = {}
    for (action, price_text, _), (price, size) in zip(raw, levels, strict=True):
        exists = (sizes[price] if price in sizes else held(price)) > 0
        if exists == (action == "new"):
            return f"{action} {side} {price_text}, which the book {'holds' if exists else 'does not hold'}"
        sizes[price] = size
    return ""


def _from_data(name: str, raw: list[list[str]], where: str) -> Instrument:
    return instrument_from_text(name, [e[1] for e in raw], [e[2] for e in raw], VENUE, where)
