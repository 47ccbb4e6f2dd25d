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
from bisect import bisect_left, insort
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from orderbook.core.book import Level
from orderbook.core.events import BookUpdate
from orderbook.core.instrument import Instrument

from ..records import Checksum, FormatError, Record, decimals, known_units, loads, seconds_to_ns, units
from .capture import BAD, OPENED, RECEIVED, CaptureLine, read_capture
from .gaps import GapPolicy, Gaps, damage

VENUE = "kraken"
REPUBLISH = "r"
_NS_SCALE = tuple(10 ** (9 - n) for n in range(10))  # fraction digits -> ns per unit
# The pair of a damaged book message, from what is left of its text: the pair
# name after the channel name at its end, else the channel ID at its start.
_PAIR = re.compile(r'"book[^"]*"\s*,\s*"([^"]+)"\s*\]')
_CHANNEL_ID = re.compile(r"\s*\[\s*(\d+)\s*,")


class _Side:
    """One side of the reader's copy of a book: sizes by key and the keys
    sorted, best first (bids keyed by -price). Only what trimming to the
    depth needs: no checksum is kept (the node's `Book` keeps one, and the
    reader's copy never leaves it)."""

    __slots__ = ("keys", "negate", "sizes")

    def __init__(self, negate: bool, levels: Iterable[Level] = ()) -> None:
        self.negate = negate
        self.sizes: dict[int, int] = {-p if negate else p: s for p, s in levels if s}
        self.keys: list[int] = sorted(self.sizes)

    def apply(self, levels: list[Level]) -> None:
        """Set each level in order; size 0 removes."""
        sizes, keys, negate = self.sizes, self.keys, self.negate
        for price, size in levels:
            key = -price if negate else price
            old = sizes.get(key, 0)
            if size:
                sizes[key] = size
                if not old:
                    insort(keys, key)
            elif old:
                del sizes[key]
                del keys[bisect_left(keys, key)]

    def trim(self, depth: int, out: list[Level]) -> None:
        """Drop the levels past `depth`, worst first, appending each removal to `out`."""
        keys, sizes = self.keys, self.sizes
        while len(keys) > depth:
            key = keys.pop()
            del sizes[key]
            out.append((-key if self.negate else key, 0))

    def levels(self) -> tuple[Level, ...]:
        """Best first."""
        sizes = self.sizes
        if self.negate:
            return tuple([(-k, sizes[k]) for k in self.keys])
        return tuple([(k, sizes[k]) for k in self.keys])


@dataclass(slots=True)
class _Pair:
    """What the reader keeps per pair: its definition, depth and current book."""

    instrument: Instrument
    depth: int
    bids: _Side = field(default_factory=lambda: _Side(True))
    asks: _Side = field(default_factory=lambda: _Side(False))


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
    pairs, channels, waiting = state.pairs, state.channels, policy.waiting
    for line in read_capture(lines, source, bad_lines=True):
        kind, line_ns, body, _, where, _ = line
        time_ns = line_ns or time_ns
        if kind != RECEIVED:
            if kind == BAD:
                yield from _damaged(state, policy, line, line.url, body)
            elif kind == OPENED:
                channels.clear()  # channel IDs belong to one connection
                state.book_channels.clear()
            continue
        try:
            msg = loads(body)
        except ValueError as exc:
            yield from _damaged(state, policy, line, body, damage(body, line.ended, exc))
            continue
        if type(msg) is list and len(msg) == 4:
            # Nearly every message: one side's update to a book already
            # known, taken here with the checks `_book_message` makes, in
            # an order that yields the same result; anything else goes there.
            part, channel_name, pair = msg[1], msg[2], msg[3]
            if (
                type(pair) is str
                and type(channel_name) is str
                and type(part) is dict
                and channel_name.startswith("book")
                and "as" not in part
                and "bs" not in part
                and pair not in waiting
            ):
                entry = pairs.get(pair)
                known = channels.get(msg[0])
                if entry is not None and (known is None or known == pair):
                    yield _update(entry, pair, (part,), line_ns, where)
                    continue
        if isinstance(msg, dict):
            _control(state, msg, where)
        elif isinstance(msg, list):
            yield from _book_message(state, policy, msg, line_ns, where)
        else:
            raise FormatError(where, f"unexpected message {body[:80]!r}")
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
        yield _update(state.pairs[pair], pair, parts, time_ns, where)


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
        scales = state.scales[pair] = (
            max(map(decimals, [e[0] for e in written])),
            max(map(decimals, [e[1] for e in written])),
        )
    base, _, quote = pair.partition("/")
    instrument = Instrument(pair, scales[0], scales[1], base=base, quote=quote, venue=VENUE)
    bids = _levels(instrument, bids_raw, where)
    asks = _levels(instrument, asks_raw, where)
    entry = _Pair(instrument, depth, _Side(True, bids), _Side(False, asks))
    entry.bids.trim(depth, [])
    entry.asks.trim(depth, [])
    state.pairs[pair] = entry  # kept once whole: a bad level leaves the last book as it was
    update = BookUpdate(pair, entry.bids.levels(), entry.asks.levels(), replace=True, event_time_ns=time_ns)
    return Record(time_ns, instruments=(instrument,), updates=(update,))


def _update(entry: _Pair, pair: str, parts: Sequence[dict[str, object]], time_ns: int, where: str) -> Record:
    bids: list[Level] = []
    asks: list[Level] = []
    checksum: int | None = None
    event_ns = 0
    inst = entry.instrument
    for part in parts:
        # (A side not there has no levels to add and no time to take.)
        if "a" in part:
            event_ns = _side(part, "a", asks, inst, event_ns, where)
        if "b" in part:
            event_ns = _side(part, "b", bids, inst, event_ns, where)
        if "c" in part:
            checksum = _checksum(part["c"], where)
    depth = entry.depth
    if bids:
        entry.bids.apply(bids)
        if len(entry.bids.keys) > depth:
            entry.bids.trim(depth, bids)
    if asks:
        entry.asks.apply(asks)
        if len(entry.asks.keys) > depth:
            entry.asks.trim(depth, asks)
    # Positional: this runs for every message, and keywords cost more.
    update = BookUpdate(pair, tuple(bids), tuple(asks), False, event_ns or time_ns)
    return Record(time_ns, (), (update,), () if checksum is None else (Checksum(pair, checksum),))


def _side(part: dict[str, object], key: str, out: list[Level], inst: Instrument, event_ns: int, where: str) -> int:
    """Add the levels of `part[key]` to `out`; return the latest of
    `event_ns` and their times. `_entries`, `_levels` and the times in one
    call, their checks (and errors) in the same order."""
    raw = part[key]
    if type(raw) is not list:
        raw = _entries(part, key, where)  # raises
    for e in raw:
        # `_entries`'s checks, unrolled: this runs for every level of every message.
        if (
            type(e) is not list
            or not 3 <= len(e) <= 4
            or type(e[0]) is not str
            or type(e[1]) is not str
            or type(e[2]) is not str
            or (len(e) == 4 and e[3] != REPUBLISH)
        ):
            _entries(part, key, where)  # raises the error `_entries` names
    price_scale, size_scale = inst.price_scale, inst.size_scale
    negative = False
    for e in raw:
        # The cached conversion first; `units` again only to raise its error.
        price = known_units(e[0], price_scale)
        if price is None:
            price = units(e[0], price_scale, where)
        size = known_units(e[1], size_scale)
        if size is None:
            size = units(e[1], size_scale, where)
        if size < 0:
            negative = True
        out.append((price, size))
    if negative:
        raise FormatError(where, f"negative volume in {raw!r}")
    for e in raw:
        # `seconds_to_ns`'s plain-digits path inlined: one per level.
        whole, _, frac = e[2].partition(".")
        digits = whole + frac
        if len(frac) <= 9 and len(whole) <= 19 and digits.isdigit() and digits.isascii():
            level_ns = int(digits) * _NS_SCALE[len(frac)]
        else:
            level_ns = seconds_to_ns(e[2], where)
        if level_ns > event_ns:
            event_ns = level_ns
    return event_ns


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


def _levels(inst: Instrument, raw: list[list[str]], where: str) -> list[Level]:
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
