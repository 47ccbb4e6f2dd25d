"""Coinbase Pro (Coinbase Exchange) WebSocket `level2` + `ticker`, as raw
cryptofeed captures (see `capture`). Messages, after the receive time:

    {"type": "snapshot", "product_id": "SKL-BTC", "bids": [[price, size], ...], "asks": [...]}
    {"type": "l2update", "product_id": "SKL-BTC", "changes": [["buy"|"sell", price, size]], "time": "<ISO>"}
    {"type": "ticker", "product_id": "SKL-BTC", "best_bid": "...", "best_ask": "...", ...}

Quirks handled here:
- No sequence numbers on level2: the only reference is the ticker's best bid
  and ask (prices only; the ticker gives no sizes at the top).
- The first ticker of each product on a connection is the last one known at
  subscribe time, older than the snapshot: it yields a record noted
  "stale ticker" with no check.
- `size` is the new absolute size; zero is written many ways ("0.0",
  "0.00000000", ...), so it is compared as a number.
- Coinbase writes no scales in the stream. Each product's scales are the most
  significant decimals in its first snapshot's prices resp. sizes (DASH-BTC
  writes "0.50000000" for sizes on a 0.001 grid), unless given: `price_scale`
  / `size_scale` for every product, or `products` per product (from
  `read_products` over the REST /products response). A later value needing
  more decimals is a `FormatError`, never rounded.
- Ticker prices may be written with more or fewer decimals; they convert exactly.
- match, last_match, subscriptions, heartbeat and other types yield nothing.
- A line that is not JSON, or cut short, stops the reader (`gaps="error"`,
  a FormatError naming file:line, the product where the text still names
  one and what was wrong), as does an l2update with no snapshot before it.
  With `gaps="resync"` either is a gap of that product (see `gaps`): its
  l2updates and tickers are skipped until its next snapshot, which notes how
  many were skipped (or the end of the file does). A damaged line naming no
  product, or one whose text shows a type that changes no book (a ticker),
  is noted as unreadable: a lost ticker is a lost check, not a lost book.

`time_ns` is the receive time; an l2update's `event_time_ns` is its ISO
"time" as exact integer ns; a snapshot's is the receive time.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date

from orderbook.core.book import Level
from orderbook.core.events import BookUpdate
from orderbook.core.instrument import Instrument

from ..records import BestPrices, FormatError, Record, loads, scale_of, significant_decimals, units
from .capture import BAD, OPENED, RECEIVED, REST, CaptureLine, read_capture
from .gaps import GapPolicy, Gaps, damage

VENUE = "coinbase"
STALE_TICKER = "stale ticker"
SIDES = {"buy": "bids", "sell": "asks"}
BOOK_TYPES = ("snapshot", "l2update")
# The product and type of a damaged message, from what is left of its text.
_PRODUCT = re.compile(r'"product_id"\s*:\s*"([^"]+)"')
_TYPE = re.compile(r'"type"\s*:\s*"([^"]+)"')

_ISO = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:?\d\d)\Z",
    re.ASCII,
)
_EPOCH_DAY = date(1970, 1, 1).toordinal()


@dataclass(slots=True)
class _State:
    price_scale: int | None
    size_scale: int | None
    products: Mapping[str, tuple[int, int]]
    instruments: dict[str, Instrument] = field(default_factory=dict)
    tickers_seen: set[str] = field(default_factory=set)  # per connection


def read(
    lines: Iterable[str],
    *,
    source: str = "coinbase",
    price_scale: int | None = None,
    size_scale: int | None = None,
    products: Mapping[str, tuple[int, int]] | None = None,
    gaps: Gaps = "error",
) -> Iterator[Record]:
    """Yield one `Record` per snapshot, l2update and ticker of a capture.

    `price_scale`/`size_scale` fix the scales of every product; `products`
    maps product_id -> (price scale, size scale) (see `read_products`).
    `gaps`: what a damaged line or an l2update with no book does (see `gaps`).
    """
    policy = GapPolicy(gaps)  # checks `gaps` now, not at the first record
    return _records(lines, _State(price_scale, size_scale, products or {}), policy, source)


def _records(lines: Iterable[str], state: _State, policy: GapPolicy, source: str) -> Iterator[Record]:
    time_ns = 0
    for line in read_capture(lines, source, bad_lines=True):
        time_ns = line.time_ns or time_ns
        if line.kind == BAD:
            yield from _damaged(policy, line, line.url, line.body)
            continue
        if line.kind == OPENED:
            state.tickers_seen.clear()  # a new subscription sends stale tickers again
            continue
        if line.kind != RECEIVED:
            continue
        try:
            msg = loads(line.body)
        except ValueError as exc:
            yield from _damaged(policy, line, line.body, damage(line.body, line.ended, exc))
            continue
        if not isinstance(msg, dict):
            raise FormatError(line.where, f"expected a JSON object, got {line.body[:80]!r}")
        kind = msg.get("type")
        if kind == "snapshot":
            record = _snapshot(state, msg, line.time_ns, line.where)
            yield from policy.resynced(record.updates[0].symbol, line.time_ns)
            yield record
        elif kind == "l2update":
            product = _product(msg, line.where)
            if policy.skip(product):
                continue  # waiting for its next snapshot
            if product not in state.instruments:
                yield policy.gap(product, "l2update before its snapshot", line.time_ns, line.where)
            else:
                yield _l2update(state, msg, line.time_ns, line.where)
        elif kind == "ticker":
            product = _product(msg, line.where)
            if policy.skip(product):
                # Held against a book left behind, it would fail; still its first on this connection.
                state.tickers_seen.add(product)
                continue
            yield _ticker(state, msg, line.time_ns, line.where)
    yield from policy.finish(list(policy.waiting), time_ns)


def _damaged(policy: GapPolicy, line: CaptureLine, text: str, problem: str) -> Iterator[Record]:
    """A line that cannot be read: an error; with resync, a gap of the
    product its text still names, else a note."""
    found = _PRODUCT.search(text)
    name = found.group(1) if found else None
    if name is None:
        if policy.gaps == "error":
            raise FormatError(line.where, problem)  # no product to name: the line and what was wrong
        note = policy.damaged(None, problem, line.time_ns, line.where)
    else:
        kind = _TYPE.search(text)
        if kind is None or kind.group(1) in BOOK_TYPES:
            note = policy.damaged(name, problem, line.time_ns, line.where)
        elif policy.gaps == "error":
            raise FormatError(line.where, f"{name}: {problem}")
        elif policy.skip(name):
            note = None
        else:
            # A ticker or match changes no book: noted, and the product's book goes on.
            note = policy.damaged(None, f"{name}: {problem}", line.time_ns, line.where)
    if note is not None:
        yield note


def read_products(lines: Iterable[str], *, source: str = "coinbase-products") -> dict[str, tuple[int, int]]:
    """product_id -> (price scale, size scale) from a capture's REST /products
    response: the decimals of `quote_increment` and `base_increment`."""
    out: dict[str, tuple[int, int]] = {}
    for line in read_capture(lines, source):
        if line.kind != REST:
            continue
        try:
            body = loads(line.body)
        except ValueError as exc:
            raise FormatError(line.where, f"not JSON: {exc}") from None
        if not isinstance(body, list):
            raise FormatError(line.where, "a /products response is a list of products")
        for p in body:
            try:
                out[p["id"]] = (significant_decimals(p["quote_increment"]), significant_decimals(p["base_increment"]))
            except (KeyError, TypeError):
                raise FormatError(line.where, f"product without id/quote_increment/base_increment: {p!r:.80}") from None
    return out


def iso_to_ns(text: object, where: str) -> int:
    """An ISO-8601 UTC time ("2021-04-17T16:43:37.075687Z") as exact Unix ns."""
    m = _ISO.match(text) if isinstance(text, str) else None
    if m is None:
        raise FormatError(where, f"not an ISO-8601 time: {text!r}")
    year, month, day, hour, minute, second, frac, zone = m.groups()
    try:
        days = date(int(year), int(month), int(day)).toordinal() - _EPOCH_DAY
    except ValueError:
        raise FormatError(where, f"not a date: {text!r}") from None
    if int(hour) > 23 or int(minute) > 59 or int(second) > 60:
        raise FormatError(where, f"not a time of day: {text!r}")
    seconds = days * 86400 + int(hour) * 3600 + int(minute) * 60 + int(second) - _offset_seconds(zone)
    return seconds * 10**9 + int((frac or "").ljust(9, "0"))


def _offset_seconds(zone: str) -> int:
    if zone == "Z":
        return 0
    digits = zone[1:].replace(":", "")
    minutes = int(digits[:2]) * 60 + int(digits[2:])
    return -minutes * 60 if zone[0] == "-" else minutes * 60


def _product(msg: dict[str, object], where: str) -> str:
    product = msg.get("product_id")
    if not isinstance(product, str) or not product:
        raise FormatError(where, f"{msg.get('type')} without product_id")
    return product


def _snapshot(state: _State, msg: dict[str, object], time_ns: int, where: str) -> Record:
    product = _product(msg, where)
    bids_raw, asks_raw = _pairs(msg, "bids", where), _pairs(msg, "asks", where)
    inst = state.instruments.get(product)
    if inst is None:
        inst = state.instruments[product] = _instrument(state, product, bids_raw + asks_raw)
    bids = tuple(_level(inst, e[0], e[1], where) for e in bids_raw)
    asks = tuple(_level(inst, e[0], e[1], where) for e in asks_raw)
    update = BookUpdate(product, bids, asks, replace=True, event_time_ns=time_ns)
    return Record(time_ns, instruments=(inst,), updates=(update,))


def _instrument(state: _State, product: str, levels: list[list[str]]) -> Instrument:
    given = state.products.get(product)
    price_scale = state.price_scale
    if price_scale is None:
        price_scale = given[0] if given else scale_of([e[0] for e in levels])
    size_scale = state.size_scale
    if size_scale is None:
        size_scale = given[1] if given else scale_of([e[1] for e in levels])
    base, _, quote = product.partition("-")
    return Instrument(product, price_scale, size_scale, base=base, quote=quote, venue=VENUE)


def _l2update(state: _State, msg: dict[str, object], time_ns: int, where: str) -> Record:
    product = _product(msg, where)
    inst = state.instruments[product]
    changes = msg.get("changes")
    if not isinstance(changes, list):
        raise FormatError(where, "l2update without a list of changes")
    sides: dict[str, list[Level]] = {"bids": [], "asks": []}
    for change in changes:
        if not isinstance(change, list) or len(change) != 3 or change[0] not in SIDES:
            raise FormatError(where, f'bad change {change!r}: want ["buy"|"sell", price, size]')
        sides[SIDES[change[0]]].append(_level(inst, change[1], change[2], where))
    event_ns = iso_to_ns(msg["time"], where) if "time" in msg else time_ns
    update = BookUpdate(product, tuple(sides["bids"]), tuple(sides["asks"]), event_time_ns=event_ns)
    return Record(time_ns, updates=(update,))


def _ticker(state: _State, msg: dict[str, object], time_ns: int, where: str) -> Record:
    product = _product(msg, where)
    if product not in state.tickers_seen:
        state.tickers_seen.add(product)
        return Record(time_ns, note=STALE_TICKER)
    inst = state.instruments.get(product)
    bid, ask = msg.get("best_bid"), msg.get("best_ask")
    if inst is None or not bid or not ask:
        # Nothing to hold it against: no book yet, or the venue left a side out.
        return Record(time_ns, note="ticker without book" if inst is None else "ticker without best bid/ask")
    check = BestPrices(
        product,
        (units(bid, inst.price_scale, where), 0),
        (units(ask, inst.price_scale, where), 0),
        bid_size_known=False,
        ask_size_known=False,
    )
    return Record(time_ns, checks=(check,))


def _pairs(msg: dict[str, object], key: str, where: str) -> list[list[str]]:
    raw = msg.get(key, [])
    if not isinstance(raw, list) or not all(isinstance(e, list) and len(e) >= 2 for e in raw):  # [price, size, ...]
        raise FormatError(where, f'"{key}" must be a list of [price, size]')
    return raw


def _level(inst: Instrument, price: object, size: object, where: str) -> Level:
    lots = units(size, inst.size_scale, where)
    if lots < 0:
        raise FormatError(where, f"negative size {size!r}")
    return units(price, inst.price_scale, where), lots
