"""Kraken WebSocket v1 `book` channel, as raw cryptofeed captures (see `capture`).

Messages, after the capture's receive time:

    {"event": "subscriptionStatus", "channelID": 992, "pair": "XMR/USD", "channelName": "book-1000", ...}
    [992, {"as": [[price, volume, time], ...], "bs": [...]}, "book-1000", "XMR/USD"]        snapshot
    [992, {"a": [[price, volume, time(, "r")], ...], "c": "<crc32>"}, "book-1000", "XMR/USD"]  update
    [992, {"a": [...]}, {"b": [...], "c": "..."}, "book-1000", "XMR/USD"]                    both sides

Quirks handled here:
- `volume` is the new absolute size; "0.00000000" deletes the level. An entry
  flagged "r" (a republish) is applied like any other.
- Each pair writes a fixed number of decimals; the snapshot's decimals are the
  instrument's scales, because Kraken's checksum is taken over those digits
  (REST AssetPairs' `pair_decimals` is coarser for some pairs, e.g. ADA/XBT 8
  vs 9 written, so it is not used). A later value written differently is
  accepted only if it is exact at that scale.
- After every message Kraken keeps only `depth` levels per side (from the
  channel name, "book-1000") and sends no delete for a level pushed out. The
  reader tracks each book and puts those removals into the same update, so a
  book rebuilt from the records stays equal to Kraken's.
- Each update's "c" becomes a `Checksum` reference, checked by verify
  (offline and against a node), where a mismatch is counted and reported; it
  is not a gap here: Kraken sends no new snapshot without a new subscription,
  so resyncing would drop the pair for the rest of the connection, while a
  counted mismatch keeps every later check. Heartbeats, systemStatus and
  other channels (trade, ticker) yield nothing.
- A line that is not JSON, or cut short, stops the reader (`gaps="error"`,
  a FormatError naming file:line, the pair where the text still names one
  (its pair name, or a book channel's ID) and what was wrong), as does an
  update with no snapshot before it. With `gaps="resync"` either is a gap
  of that pair (see `gaps`): its book is dropped and its messages skipped
  until its next snapshot, which notes how many were skipped (or the end of
  the file does); a damaged line naming no pair is noted as unreadable.

`time_ns` is the receive time. An update's `event_time_ns` is the latest
level time in it; a snapshot's is the receive time (Kraken states none).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from orderbook.core.book import Book, Level
from orderbook.core.events import BookUpdate
from orderbook.core.instrument import Instrument

from ..records import Checksum, FormatError, Record, decimals, loads, seconds_to_ns, units
from .capture import BAD, OPENED, RECEIVED, CaptureLine, read_capture
from .gaps import GapPolicy, Gaps, damage

VENUE = "kraken"
REPUBLISH = "r"
# The pair of a damaged book message, from what is left of its text: the pair
# name after the channel name at its end, else the channel ID at its start.
_PAIR = re.compile(r'"book[^"]*"\s*,\s*"([^"]+)"\s*\]')
_CHANNEL_ID = re.compile(r"\s*\[\s*(\d+)\s*,")


@dataclass(slots=True)
class _Pair:
    """What the reader keeps per pair: its definition, depth and current book."""

    instrument: Instrument
    depth: int
    book: Book = field(default_factory=Book)


@dataclass(slots=True)
class _State:
    depth: int | None
    channels: dict[int, str] = field(default_factory=dict)  # channelID -> pair, per connection
    book_channels: set[int] = field(default_factory=set)  # the channelIDs of book channels, per connection
    pairs: dict[str, _Pair] = field(default_factory=dict)
    scales: dict[str, tuple[int, int]] = field(default_factory=dict)  # pair -> scales, fixed once seen


def read(
    lines: Iterable[str], *, depth: int | None = None, gaps: Gaps = "error", source: str = "kraken"
) -> Iterator[Record]:
    """Yield one `Record` per snapshot or update in a Kraken v1 book capture.

    `depth` overrides the depth named by each channel ("book-1000" -> 1000).
    `gaps`: what a damaged line or an update with no book does (see `gaps`).
    """
    if depth is not None and depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    policy = GapPolicy(gaps)  # checks `gaps` now, not at the first record
    return _records(lines, _State(depth), policy, source)


def _records(lines: Iterable[str], state: _State, policy: GapPolicy, source: str) -> Iterator[Record]:
    time_ns = 0
    for line in read_capture(lines, source, bad_lines=True):
        time_ns = line.time_ns or time_ns
        if line.kind == BAD:
            yield from _damaged(state, policy, line, line.url, line.body)
            continue
        if line.kind == OPENED:
            state.channels.clear()  # channel IDs belong to one connection
            state.book_channels.clear()
            continue
        if line.kind != RECEIVED:
            continue
        try:
            msg = loads(line.body)
        except ValueError as exc:
            yield from _damaged(state, policy, line, line.body, damage(line.body, line.ended, exc))
            continue
        if isinstance(msg, dict):
            _control(state, msg, line.where)
        elif isinstance(msg, list):
            yield from _book_message(state, policy, msg, line.time_ns, line.where)
        else:
            raise FormatError(line.where, f"unexpected message {line.body[:80]!r}")
    yield from policy.finish(list(policy.waiting), time_ns)


def _damaged(state: _State, policy: GapPolicy, line: CaptureLine, text: str, problem: str) -> Iterator[Record]:
    """A line that cannot be read: an error; with resync, a gap of the pair
    its text still names, else a note."""
    found = _PAIR.search(text)
    name = found.group(1) if found else None
    if name is None:
        channel = _CHANNEL_ID.match(text)
        if channel is not None and int(channel.group(1)) in state.book_channels:
            name = state.channels[int(channel.group(1))]
    if name is None and policy.gaps == "error":
        raise FormatError(line.where, problem)  # no pair to name: the line and what was wrong
    note = policy.damaged(name, problem, line.time_ns, line.where)
    if name is not None:
        state.pairs.pop(name, None)  # already so if it was waiting
    if note is not None:
        yield note


def _control(state: _State, msg: dict[str, object], where: str) -> None:
    if msg.get("event") != "subscriptionStatus" or msg.get("status") != "subscribed":
        return  # heartbeat, systemStatus, unsubscribes, pings: no book change
    channel, pair = msg.get("channelID"), msg.get("pair")
    if not isinstance(channel, int) or not isinstance(pair, str):
        raise FormatError(where, "subscriptionStatus without channelID and pair")
    state.channels[channel] = pair
    if str(msg.get("channelName", "")).startswith("book"):
        state.book_channels.add(channel)
    else:
        state.book_channels.discard(channel)


def _book_message(state: _State, policy: GapPolicy, msg: list[Any], time_ns: int, where: str) -> Iterator[Record]:
    # `msg` is a decoded JSON array; each element is checked before it is used.
    if len(msg) < 4 or not isinstance(msg[-2], str) or not isinstance(msg[-1], str):
        raise FormatError(where, f"not a channel message: {json.dumps(msg)[:80]}")
    channel_name, pair = msg[-2], msg[-1]
    if not channel_name.startswith("book"):
        return  # trade, ticker, spread...: not this reader's business
    known = state.channels.get(msg[0])
    if known is not None and known != pair:
        raise FormatError(where, f"channel {msg[0]} is {known}, message says {pair}")
    parts = msg[1:-2]
    if not all(isinstance(p, dict) for p in parts):
        raise FormatError(where, "book payloads must be objects")
    if "as" in parts[0] or "bs" in parts[0]:
        record = _snapshot(state, pair, _depth(state, channel_name, where), parts[0], time_ns, where)
        yield from policy.resynced(pair, time_ns)
        yield record
    elif policy.skip(pair):
        return  # waiting for its next snapshot
    elif pair not in state.pairs:
        yield policy.gap(pair, "update before its snapshot", time_ns, where)
    else:
        yield _update(state, pair, parts, time_ns, where)


def _depth(state: _State, channel_name: str, where: str) -> int:
    if state.depth is not None:
        return state.depth
    _, dash, n = channel_name.partition("-")
    if not dash or not n.isdigit() or int(n) < 1:
        raise FormatError(where, f"no depth in channel name {channel_name!r}; pass depth=")
    return int(n)


def _snapshot(state: _State, pair: str, depth: int, snap: dict[str, object], time_ns: int, where: str) -> Record:
    asks_raw, bids_raw = _entries(snap, "as", where), _entries(snap, "bs", where)
    scales = state.scales.get(pair)
    if scales is None:
        written = asks_raw + bids_raw
        if not written:
            raise FormatError(where, f"{pair}: empty first snapshot, its decimals are unknown")
        scales = state.scales[pair] = (max(decimals(e[0]) for e in written), max(decimals(e[1]) for e in written))
    base, _, quote = pair.partition("/")
    instrument = Instrument(pair, scales[0], scales[1], base=base, quote=quote, venue=VENUE)
    entry = _Pair(instrument, depth)
    entry.book.replace(_levels(entry, bids_raw, where), _levels(entry, asks_raw, where))
    _trim(entry.book, depth, [], [])
    state.pairs[pair] = entry  # kept once whole: a bad level leaves the last book as it was
    update = BookUpdate(pair, tuple(entry.book.bids()), tuple(entry.book.asks()), replace=True, event_time_ns=time_ns)
    return Record(time_ns, instruments=(instrument,), updates=(update,))


def _update(state: _State, pair: str, parts: list[dict[str, object]], time_ns: int, where: str) -> Record:
    entry = state.pairs[pair]
    bids: list[Level] = []
    asks: list[Level] = []
    checksum: int | None = None
    event_ns = 0
    for part in parts:
        for key, out in (("a", asks), ("b", bids)):
            if key not in part:
                continue  # (no levels: nothing to add, no time to take)
            raw = _entries(part, key, where)
            out.extend(_levels(entry, raw, where))
            for e in raw:
                level_ns = seconds_to_ns(e[2], where)
                if level_ns > event_ns:
                    event_ns = level_ns
        if "c" in part:
            checksum = _checksum(part["c"], where)
    book = entry.book
    for price, size in bids:
        book.set_bid(price, size)
    for price, size in asks:
        book.set_ask(price, size)
    _trim(book, entry.depth, bids, asks)
    update = BookUpdate(pair, tuple(bids), tuple(asks), event_time_ns=event_ns or time_ns)
    checks = () if checksum is None else (Checksum(pair, checksum),)
    return Record(time_ns, updates=(update,), checks=checks)


def _entries(part: dict[str, object], key: str, where: str) -> list[list[str]]:
    raw = part.get(key, [])
    if not isinstance(raw, list):
        raise FormatError(where, f'"{key}" must be a list of levels')
    for e in raw:
        # Loops, not all(): this runs for every level of every message.
        if type(e) is not list or not 3 <= len(e) <= 4:
            raise FormatError(where, f"bad level entry {e!r}: want [price, volume, time] strings")
        for x in e:
            if type(x) is not str:
                raise FormatError(where, f"bad level entry {e!r}: want [price, volume, time] strings")
        if len(e) == 4 and e[3] != REPUBLISH:
            raise FormatError(where, f"unknown level flag {e[3]!r} in {e!r}")
    return raw


def _levels(entry: _Pair, raw: list[list[str]], where: str) -> list[Level]:
    inst = entry.instrument
    price_scale, size_scale = inst.price_scale, inst.size_scale
    out = [(units(e[0], price_scale, where), units(e[1], size_scale, where)) for e in raw]
    if any(size < 0 for _, size in out):
        # Refused here: the reader's own book must never hold what the server would reject.
        raise FormatError(where, f"negative volume in {raw!r}")
    return out


def _checksum(value: object, where: str) -> int:
    if not isinstance(value, str) or not value.isdigit() or int(value) >= 2**32:
        raise FormatError(where, f"checksum {value!r} is not an unsigned 32-bit decimal string")
    return int(value)


def _trim(book: Book, depth: int, bids: list[Level], asks: list[Level]) -> None:
    """Drop the levels past `depth`, worst first, recording each removal."""
    while book.bid_count() > depth:
        price = book.nth_bid_price(book.bid_count() - 1)
        assert price is not None  # the count is above depth >= 0: the worst level exists
        book.set_bid(price, 0)
        bids.append((price, 0))
    while book.ask_count() > depth:
        price = book.nth_ask_price(book.ask_count() - 1)
        assert price is not None
        book.set_ask(price, 0)
        asks.append((price, 0))
