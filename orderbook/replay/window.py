"""Play part of a recording: records before the window are applied to local
books but not sent, and the window opens with a snapshot of every book, so
subscribers still see exactly the venue's books from its first instant."""

from __future__ import annotations

import re
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation

from orderbook.core.events import BookUpdate, FeedBatch
from orderbook.core.market import Market

from .records import Record

NS = 1_000_000_000


@dataclass(frozen=True, slots=True)
class TimePoint:
    """A window bound: `relative` seconds after the first record, or an absolute time in ns."""

    ns: int
    relative: bool

    def resolve(self, first_ns: int) -> int:
        return first_ns + self.ns if self.relative else self.ns


_RELATIVE = re.compile(r"\+?([0-9]+(?:\.[0-9]*)?)(ms|s|m|h)?\Z")
_UNIT_NS = {"ms": 1_000_000, "s": NS, "m": 60 * NS, "h": 3600 * NS, None: NS}


def parse_time(text: str) -> TimePoint:
    """ "+30s", "+1.5m", "90" (seconds after the first record) or an ISO-8601
    time ("2021-04-17T16:49:00Z"; no zone = UTC)."""
    t = text.strip()
    m = _RELATIVE.match(t)
    if m:
        try:
            return TimePoint(int(Decimal(m.group(1)) * _UNIT_NS[m.group(2)]), True)
        except InvalidOperation:  # pragma: no cover - the pattern admits only numbers
            pass
    try:
        dt = datetime.fromisoformat(t.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"not a time: {text!r} (use +SECONDS, +30s, +2m or an ISO-8601 time)") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    delta = dt - datetime(1970, 1, 1, tzinfo=UTC)
    return TimePoint((delta.days * 86_400 + delta.seconds) * NS + delta.microseconds * 1000, False)


def within(
    records: Iterable[Record], start: TimePoint | None = None, end: TimePoint | None = None
) -> Generator[Record, None, None]:
    """The records from `start` up to and including `end`; see the module doc."""
    it = iter(records)
    first = next(it, None)
    if first is None:
        return
    start_ns = start.resolve(first.time_ns) if start else None
    end_ns = end.resolve(first.time_ns) if end else None
    pending: Iterator[Record] = _chain_one(first, it)
    if start_ns is not None and first.time_ns < start_ns:
        market = Market(epoch=1)
        for rec in pending:
            if rec.time_ns >= start_ns:
                yield _opening(market, start_ns)
                pending = _chain_one(rec, it)
                break
            market.apply(FeedBatch(0, rec.instruments, rec.updates))
        else:
            return  # the window starts after the recording ends
    for rec in pending:
        if end_ns is not None and rec.time_ns > end_ns:
            return
        yield rec


def _chain_one(first: Record, rest: Iterator[Record]) -> Iterator[Record]:
    yield first
    yield from rest


def _opening(market: Market, time_ns: int) -> Record:
    snaps = market.snapshot()
    return Record(
        time_ns,
        tuple(s.instrument for s in snaps),
        tuple(BookUpdate(s.symbol, s.bids, s.asks, replace=True, event_time_ns=time_ns) for s in snaps),
        note="window opens",
    )
