"""Immutable values passed between the layers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from .book import Level
from .instrument import Instrument


@dataclass(frozen=True, slots=True)
class BookUpdate:
    """One atomic change to one symbol's book, as a feed sends it.

    `bids`/`asks` hold (price ticks, size lots); size 0 removes the level. With
    `replace`, the book becomes exactly these levels.
    """

    symbol: str
    bids: tuple[Level, ...] = ()
    asks: tuple[Level, ...] = ()
    replace: bool = False
    event_time_ns: int = 0


@dataclass(frozen=True, slots=True)
class FeedBatch:
    """Instrument definitions and updates, validated whole, then applied in order."""

    batch_id: int = 0
    instruments: tuple[Instrument, ...] = ()
    updates: tuple[BookUpdate, ...] = ()


class Delta(NamedTuple):
    """The stamped, effective change: only levels whose size really changed,
    each at most once per side; size 0 means removed.

    A named tuple rather than a frozen dataclass: one is built per change on
    the ingest path, and a tuple is built in one step where a frozen
    dataclass sets each field through `object.__setattr__`. Still immutable;
    `delta._replace(...)` makes a changed copy."""

    symbol: str
    epoch: int
    seq: int
    prev_seq: int
    bids: tuple[Level, ...]
    asks: tuple[Level, ...]
    checksum: int
    event_time_ns: int = 0
    publish_time_ns: int = 0


@dataclass(frozen=True, slots=True)
class Snapshot:
    symbol: str
    epoch: int
    seq: int
    instrument: Instrument
    bids: tuple[Level, ...]
    asks: tuple[Level, ...]
    checksum: int
    depth: int = 0
    time_ns: int = 0


@dataclass(frozen=True, slots=True)
class Position:
    """Where one symbol's sequence stands."""

    symbol: str
    epoch: int
    seq: int


@dataclass(frozen=True, slots=True)
class BatchResult:
    deltas: tuple[Delta, ...] = ()
    positions: tuple[Position, ...] = ()
    new_instruments: tuple[Instrument, ...] = field(default=())
