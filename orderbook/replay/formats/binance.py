"""Binance spot diff-depth captures (the cryptofeed recorder's raw format).

Two files, both in the capture format of `capture.py`, on one local clock
(or one: see "Older layout" below):

- the WebSocket capture: combined-stream envelopes `{"stream": ..., "data": ...}`
  of `<sym>@depth@100ms` diffs (`{"e":"depthUpdate","E":ms,"s":SYM,"U":first id,
  "u":final id,"b":[[price,qty],...],"a":[...]}`, qty the new absolute size,
  zero removes) and `<sym>@bookTicker` (`{"u":id,"s":SYM,"b","B","a","A"}`);
  aggTrade, kline and any other stream are ignored;
- the REST depth snapshots: `<url>?symbol=SYM... -> <ts>: {"lastUpdateId":N,
  "bids":[...],"asks":[...]}`, one per symbol (another for the same symbol
  is a resync).

The two are merged by receive time and each symbol is synchronised the way
Binance documents: diffs are buffered until the symbol's snapshot (at most
`MAX_BUFFERED`, oldest dropped: a dropped diff that mattered shows up as a
gap), diffs with `u <= lastUpdateId` are dropped (a record noted "stale
diff"), the first applied diff must have `U <= lastUpdateId + 1 <= u` and
every later one `U == previous u + 1`.

A gap yields a record noted "gap"; the symbol's book is left as it was and
no diff or checkpoint is applied to it until its next snapshot, from which
it resyncs by the same rules (the recorder fetches one when it sees a gap).
A symbol whose diffs are still waiting for a snapshot at the end (none came,
or none after a gap) gets one record noted "no snapshot".

Scales are the decimals the first snapshot writes (Binance writes 8); a
later value needing more is a FormatError. The book is only as deep as the
snapshot (1000 or 5000 levels a side) plus what the diffs add.

Checkpoints: a bookTicker whose `u` equals the final `u` of an applied diff
shows the book right after that diff. The bookTicker is real time while
diffs come in 100 ms batches, so it usually arrives first: it is held (at
most `MAX_TICKERS` a symbol, only while its `u` is ahead of the book) and
its `BestPrices` is attached to the record of that diff; one arriving after
its diff, while the book still stands at that `u`, gets a record of its own.
Any other bookTicker falls inside a batch and cannot be checked exactly.

Record times are receive times; a buffered diff is released no earlier than
its snapshot, so times never step back. `event_time_ns` is the venue's `E`
(the snapshot has none: its receive time).

Older layout: cryptofeed's earlier recorder wrote one file per connection
with each REST response inline (`.../api/v1/depth?symbol=SYM&limit=1000 ->
<ts>: {"lastUpdateId":...}`), fetched lazily when the symbol's first diff
came in, so a symbol's first diffs precede its snapshot line. `read(lines,
[])` reads it: a REST line is a snapshot wherever it stands, and the diffs
before it are buffered like any others.

Bad input (a line that is not JSON or was cut short, a REST error body
instead of a snapshot, a value the scale cannot hold) and breaks in the
update ids follow `gaps`:

- None (the default): a break in the ids is noted "gap" and the symbol
  resyncs from its next snapshot, as Binance documents; bad input is a
  FormatError naming the line and the symbol;
- "error": both are a FormatError;
- "resync": both are noted "gap" (bad input with no symbol to blame:
  "unreadable line"), the symbol waits for its next snapshot, and a record
  noted "resync: SYM skipped N records" follows that snapshot's drain (N:
  the symbol's damaged lines plus the diffs found stale at the resync; a
  symbol still waiting at the end is noted "no snapshot: SYM skipped N
  records to the end").

Every record is built whole before it is yielded: an error never leaves half
of a message applied.
"""

from __future__ import annotations

import heapq
import re
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import chain, islice
from urllib.parse import parse_qs, urlsplit

from orderbook.core.book import Level
from orderbook.core.events import BookUpdate
from orderbook.core.instrument import Instrument
from orderbook.core.units import MAX_SCALE

from ..records import BestPrices, FormatError, Record, decimals, loads, units
from .capture import BAD, RECEIVED, REST, CaptureLine, read_capture
from .gaps import Gaps, check, no_snapshot_note, resync_note

VENUE = "binance"
BINANCE_DECIMALS = 8  # what Binance writes; the scale only of a snapshot with no level at all
MAX_BUFFERED = 5_000  # diffs held per symbol while it waits for a snapshot (over 8 minutes at 100 ms)
MAX_TICKERS = 5_000  # bookTickers held per symbol ahead of the diff they check
NS_PER_MS = 1_000_000

STALE = "stale diff"
GAP = "gap"
NO_SNAPSHOT = "no snapshot"
UNREADABLE = "unreadable line"

RawLevel = tuple[str, str]  # (price, qty) as written: converted once the scale is known


# ----------------------------------------------------------------------------- parsing


@dataclass(frozen=True, slots=True)
class Diff:
    time_ns: int
    event_ns: int
    first: int  # U
    final: int  # u
    bids: tuple[RawLevel, ...]
    asks: tuple[RawLevel, ...]
    where: str


@dataclass(frozen=True, slots=True)
class Ticker:
    time_ns: int
    update_id: int  # u
    bid: RawLevel
    ask: RawLevel
    where: str


class BadInput(FormatError):
    """A line the reader cannot use, with the symbol it belongs to where known."""

    def __init__(self, where: str, symbol: str | None, problem: str) -> None:
        super().__init__(where, f"{symbol}: {problem}" if symbol else problem)
        self.symbol = symbol
        self.problem = problem


def _json(line: CaptureLine) -> object:
    try:
        return loads(line.body)
    except ValueError as exc:
        if not line.ended:
            raise FormatError(line.where, f"cut short, the file ends mid-message: {line.body[-40:]!r}") from None
        raise FormatError(line.where, f"not JSON: {exc}") from None


_SYMBOL_IN_TEXT = (
    re.compile(r'"s"\s*:\s*"([A-Za-z0-9]+)"'),
    re.compile(r'"stream"\s*:\s*"([A-Za-z0-9]+)@'),
    re.compile(r"[?&]symbol=([A-Za-z0-9]+)"),
)


def guess_symbol(text: str) -> str | None:
    """The symbol a damaged line names, if any of it survives."""
    for pattern in _SYMBOL_IN_TEXT:
        found = pattern.search(text)
        if found:
            return found[1].upper()
    return None


def is_inline_snapshot(text: str) -> bool:
    """Whether a capture line is a REST depth response (cryptofeed's older layout writes them inline)."""
    head = text.partition(": ")[0]
    return " -> " in head and "/depth?" in head


def has_inline_snapshots(lines: Iterable[str], limit: int = 50_000) -> bool:
    """Whether one of the first `limit` lines is a REST depth response.
    The older recorder fetched each snapshot on the symbol's first diff, so
    the first one comes within the first moments of the connection."""
    return any(is_inline_snapshot(line) for line in islice(lines, limit))


def _int(obj: dict[str, object], key: str, where: str) -> int:
    value = obj.get(key)
    if type(value) is not int or value < 0:
        raise FormatError(where, f"{key!r} must be a non-negative integer, got {value!r}")
    return value


def _str(obj: dict[str, object], key: str, where: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise FormatError(where, f"{key!r} must be a non-empty string, got {value!r}")
    return value


def _raw_levels(obj: dict[str, object], key: str, where: str) -> tuple[RawLevel, ...]:
    levels = obj.get(key)
    if not isinstance(levels, list):
        raise FormatError(where, f"{key!r} must be a list of [price, qty], got {levels!r}")
    out: list[RawLevel] = []
    append = out.append  # (a snapshot has thousands of levels)
    for level in levels:
        # The old v1 REST API appends a third, empty element to each level.
        if type(level) is not list or len(level) < 2:
            raise FormatError(where, f"{key!r}: {level!r} is not [price, qty]")
        append((level[0], level[1]))
    return tuple(out)


def _diff(line: CaptureLine, data: dict[str, object]) -> Diff:
    where = line.where
    first, final = _int(data, "U", where), _int(data, "u", where)
    if first > final:
        raise FormatError(where, f"first update id U={first} is after the final u={final}")
    return Diff(
        line.time_ns,
        _int(data, "E", where) * NS_PER_MS,
        first,
        final,
        _raw_levels(data, "b", where),
        _raw_levels(data, "a", where),
        where,
    )


def _ticker(line: CaptureLine, data: dict[str, object]) -> Ticker:
    where = line.where
    bid = (_str(data, "b", where), _str(data, "B", where))
    ask = (_str(data, "a", where), _str(data, "A", where))
    return Ticker(line.time_ns, _int(data, "u", where), bid, ask, where)


DEPTH = "depth"
TICKER = "bookTicker"


def _payload(line: CaptureLine) -> tuple[str, dict[str, object]] | None:
    """(DEPTH or TICKER, the message's data), or None for any other message."""
    msg = _json(line)
    if not isinstance(msg, dict):
        raise FormatError(line.where, f"expected a JSON object, got {line.body[:80]!r}")
    # A combined stream wraps each message and names it; a raw stream sends it bare.
    stream = msg.get("stream")
    data = msg.get("data") if stream is not None else msg
    if not isinstance(data, dict):
        raise FormatError(line.where, f"'data' must be an object, got {data!r}")
    if data.get("e") == "depthUpdate":
        return DEPTH, data
    if stream is not None:
        return (TICKER, data) if str(stream).endswith("@bookTicker") else None
    return (TICKER, data) if "e" not in data and all(k in data for k in ("u", "s", "B", "A")) else None


def _snapshot_symbol(line: CaptureLine) -> str | None:
    """The symbol a depth snapshot is for, or None if the URL is not one."""
    url = urlsplit(line.url)
    if not url.path.endswith("/depth"):
        return None
    symbol = parse_qs(url.query).get("symbol", [""])[0].strip()
    if not symbol:
        raise FormatError(line.where, f"depth snapshot URL names no symbol: {line.url!r}")
    # Binance symbols are upper case; the streams' "s" writes them so.
    return symbol.upper()


# ----------------------------------------------------------------------------- conversion


def _instrument(symbol: str, bids: tuple[RawLevel, ...], asks: tuple[RawLevel, ...], where: str) -> Instrument:
    for level in chain(bids, asks):
        for value in level:
            if not isinstance(value, str):
                raise FormatError(where, f"expected a decimal string, got {value!r}")
    # zip(*...) and map(): a snapshot has thousands of levels; no Python-level loop per value.
    prices, sizes = zip(*chain(bids, asks), strict=True) if bids or asks else ((), ())
    price_scale = max(map(decimals, prices), default=BINANCE_DECIMALS)
    size_scale = max(map(decimals, sizes), default=BINANCE_DECIMALS)
    widest = max(price_scale, size_scale)
    if widest > MAX_SCALE:
        raise FormatError(where, f"{symbol}: values with {widest} decimals; at most {MAX_SCALE} are supported")
    return Instrument(symbol, price_scale, size_scale, venue=VENUE)


def _levels(inst: Instrument, raw: tuple[RawLevel, ...], where: str) -> tuple[Level, ...]:
    price_scale, size_scale = inst.price_scale, inst.size_scale
    return tuple([(units(p, price_scale, where), units(q, size_scale, where)) for p, q in raw])


def _side(inst: Instrument, raw: RawLevel, where: str) -> Level | None:
    level = _levels(inst, (raw,), where)[0]
    # Binance shows an empty side as price and quantity zero.
    return None if level == (0, 0) else level


# ----------------------------------------------------------------------------- synchronisation


@dataclass(slots=True)
class SymbolSync:
    """One symbol's place in Binance's snapshot-and-diff procedure."""

    symbol: str
    instrument: Instrument | None = None
    # The snapshot's lastUpdateId, then the final u of each applied diff; None while unsynced.
    last_id: int | None = None
    applied: bool = False  # a diff has been applied since the snapshot
    buffered: deque[Diff] = field(default_factory=lambda: deque(maxlen=MAX_BUFFERED))
    tickers: deque[Ticker] = field(default_factory=lambda: deque(maxlen=MAX_TICKERS))
    waiting: bool = False  # gaps="resync": a gap was noted and no snapshot has come since
    skipped: int = 0  # gaps="resync": the symbol's records lost since the gap

    def take_tickers(self, final: int) -> list[Ticker]:
        """Discard the held bookTickers a diff ending at `final` passes; return those at it."""
        at = []
        while self.tickers and self.tickers[0].update_id <= final:
            ticker = self.tickers.popleft()
            if ticker.update_id == final:
                at.append(ticker)
        return at

    def lose_sync(self) -> None:
        self.last_id = None
        self.applied = False
        self.tickers.clear()


class BinanceReader:
    """Turns merged capture lines into records; holds only the per-symbol sync state."""

    def __init__(self, gaps: Gaps | None = None) -> None:
        check(gaps, optional=True)
        self.gaps = gaps
        self.symbols: dict[str, SymbolSync] = {}
        self.now_ns = 0

    def sync(self, symbol: str) -> SymbolSync:
        state = self.symbols.get(symbol)
        if state is None:
            state = self.symbols[symbol] = SymbolSync(symbol)
        return state

    def line(self, line: CaptureLine) -> Iterator[Record]:
        self.now_ns = max(self.now_ns, line.time_ns)
        try:
            yield from self._line(line)
        except FormatError as exc:
            yield from self.bad_input(line, exc)

    def _line(self, line: CaptureLine) -> Iterator[Record]:
        if line.kind == BAD:
            raise FormatError(line.where, line.body)
        if line.kind == REST:
            symbol = _snapshot_symbol(line)
            if symbol is not None:
                yield from self.snapshot(symbol, line)
        elif line.kind == RECEIVED:
            found = _payload(line)
            if found is None:
                return
            kind, data = found
            state = self.sync(_str(data, "s", line.where))
            try:
                if kind == DEPTH:
                    diff = _diff(line, data)
                else:
                    ticker = _ticker(line, data)
            except FormatError as exc:
                raise BadInput(exc.where, state.symbol, str(exc).removeprefix(f"{exc.where}: ")) from None
            if kind == DEPTH:
                yield from self.depth(state, diff)
            else:
                yield from self.ticker(state, ticker)

    def bad_input(self, line: CaptureLine, exc: FormatError) -> Iterator[Record]:
        """A line the reader cannot use: an error naming it and its symbol, or
        with gaps="resync" a gap on that symbol until its next snapshot."""
        if isinstance(exc, BadInput):
            symbol, where, problem = exc.symbol, exc.where, exc.problem
        else:
            symbol, where = guess_symbol(line.url + " " + line.body), exc.where
            problem = str(exc).removeprefix(f"{where}: ")
        if self.gaps != "resync":
            if symbol is None:
                raise FormatError(where, f"{problem} (symbol unknown)") from None
            raise BadInput(where, symbol, problem) from None
        if symbol is None:
            # Nothing to hold back: a depth diff lost here breaks its symbol's
            # id chain, which the next diff shows.
            yield Record(self.now_ns, note=UNREADABLE)
            return
        state = self.sync(symbol)
        state.skipped += 1
        yield from self.wait_for_snapshot(state, self.now_ns)

    def wait_for_snapshot(self, state: SymbolSync, time_ns: int) -> Iterator[Record]:
        state.lose_sync()
        if not state.waiting:
            state.waiting = True
            yield Record(time_ns, note=GAP)

    def snapshot(self, symbol: str, line: CaptureLine) -> Iterator[Record]:
        msg = _json(line)
        if not isinstance(msg, dict) or "lastUpdateId" not in msg:
            if isinstance(msg, dict) and "code" in msg:
                problem = f"not a depth snapshot but an error: code {msg.get('code')}, {msg.get('msg')!r}"
            else:
                problem = f"not a depth snapshot: {line.body[:120]!r}"
            raise BadInput(line.where, symbol, problem)
        try:
            last_id = _int(msg, "lastUpdateId", line.where)
            bids, asks = _raw_levels(msg, "bids", line.where), _raw_levels(msg, "asks", line.where)
            state = self.sync(symbol)
            new = state.instrument is None
            # A resync keeps the first snapshot's scales: a value needing more is an error.
            inst = state.instrument or _instrument(symbol, bids, asks, line.where)
            book = _levels(inst, bids, line.where), _levels(inst, asks, line.where)
        except FormatError as exc:
            raise BadInput(exc.where, symbol, str(exc).removeprefix(f"{exc.where}: ")) from None
        state.instrument = inst
        update = BookUpdate(symbol, *book, replace=True, event_time_ns=line.time_ns)
        state.last_id = last_id
        state.applied = False
        # Held bookTickers at or before the snapshot match no diff that will be applied.
        state.take_tickers(last_id)
        yield Record(line.time_ns, (inst,) if new else (), (update,))
        resyncing, state.waiting = state.waiting, False
        held, state.buffered = state.buffered, deque(maxlen=MAX_BUFFERED)
        for diff in held:
            # A gap while draining re-buffers the rest, for the next snapshot.
            for record in self.depth(state, diff, released_ns=line.time_ns):
                state.skipped += record.note == STALE
                yield record
        if resyncing:
            yield Record(line.time_ns, note=resync_note(symbol, state.skipped))
        state.skipped = 0

    def depth(self, state: SymbolSync, diff: Diff, released_ns: int = 0) -> Iterator[Record]:
        time_ns = max(diff.time_ns, released_ns)
        last = state.last_id
        if last is None:
            if state.waiting and len(state.buffered) == state.buffered.maxlen:
                state.skipped += 1  # the oldest falls out
            state.buffered.append(diff)
            return
        if diff.final <= last:
            yield Record(time_ns, note=STALE)
            return
        follows = diff.first <= last + 1 if not state.applied else diff.first == last + 1
        if not follows:
            want = f"U <= {last + 1} <= u" if not state.applied else f"U == {last + 1}"
            problem = f"update ids break: U={diff.first} u={diff.final}, expected {want}"
            if self.gaps == "error":
                raise BadInput(diff.where, state.symbol, problem + "; the capture lost data here")
            state.buffered.append(diff)
            if self.gaps == "resync":
                yield from self.wait_for_snapshot(state, time_ns)
            else:
                state.lose_sync()
                yield Record(time_ns, note=GAP)
            return
        inst = state.instrument
        assert inst is not None  # set by the snapshot that synced the symbol
        try:
            bids, asks = _levels(inst, diff.bids, diff.where), _levels(inst, diff.asks, diff.where)
            checks = tuple(self.best_prices(state, t) for t in state.take_tickers(diff.final))
        except FormatError as exc:
            raise BadInput(exc.where, state.symbol, str(exc).removeprefix(f"{exc.where}: ")) from None
        update = BookUpdate(state.symbol, bids, asks, replace=False, event_time_ns=diff.event_ns)
        state.last_id = diff.final
        state.applied = True
        yield Record(time_ns, updates=(update,), checks=checks)

    def ticker(self, state: SymbolSync, ticker: Ticker) -> Iterator[Record]:
        last = state.last_id
        if last is None or ticker.update_id > last:
            state.tickers.append(ticker)
        elif state.applied and ticker.update_id == last:
            try:
                check = self.best_prices(state, ticker)
            except FormatError as exc:
                raise BadInput(exc.where, state.symbol, str(exc).removeprefix(f"{exc.where}: ")) from None
            yield Record(ticker.time_ns, checks=(check,))

    def best_prices(self, state: SymbolSync, ticker: Ticker) -> BestPrices:
        inst = state.instrument
        assert inst is not None
        return BestPrices(state.symbol, _side(inst, ticker.bid, ticker.where), _side(inst, ticker.ask, ticker.where))

    def finish(self) -> Iterator[Record]:
        for state in self.symbols.values():
            if state.waiting:
                lost = state.skipped + len(state.buffered)
                yield Record(self.now_ns, note=no_snapshot_note(state.symbol, lost))
            elif state.last_id is None and state.buffered:
                yield Record(self.now_ns, note=NO_SNAPSHOT)


def read(
    ws_lines: Iterable[str],
    snapshot_lines: Iterable[str] = (),
    *,
    source: str = "binance",
    snapshot_source: str | None = None,
    gaps: Gaps | None = None,
) -> Iterator[Record]:
    """Records of a WebSocket capture and its REST snapshots, merged by receive
    time; errors name `source:line` (`snapshot_source`, default "<source>
    snapshots", for the snapshot file). A capture of the older layout carries
    its snapshots inline: pass no `snapshot_lines`. `gaps`: see the module."""
    reader = BinanceReader(gaps)  # checks `gaps` now, not at the first record
    return _read(reader, ws_lines, snapshot_lines, source, snapshot_source)


def _read(
    reader: BinanceReader,
    ws_lines: Iterable[str],
    snapshot_lines: Iterable[str],
    source: str,
    snapshot_source: str | None,
) -> Iterator[Record]:
    # Lines that are no capture lines come through too, so that the error names their symbol.
    ws = read_capture(ws_lines, source, bad_lines=True)
    rest = read_capture(snapshot_lines, snapshot_source or f"{source} snapshots", bad_lines=True)
    # On equal times the WebSocket line goes first; a diff it holds is buffered either way.
    for line in heapq.merge(ws, rest, key=_time):
        yield from reader.line(line)
    yield from reader.finish()


def _time(line: CaptureLine) -> int:
    return line.time_ns
