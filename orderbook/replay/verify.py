"""Rebuild books from a reader's records and compare them with the venue's
own references after every record. Pure: the same code checks a file
offline and, fed a subscriber's books, a replay end to end."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace

from orderbook.core.book import Book
from orderbook.core.errors import InvalidInput
from orderbook.core.events import Delta, FeedBatch
from orderbook.core.market import Market

from .records import BestPrices, Checksum, Record, Reference, TopLevels

MAX_MISMATCHES_KEPT = 20


def check_reference(book: Book, ref: Reference) -> str | None:
    """None if `book` agrees with `ref`, else a one-line description of how not."""
    if isinstance(ref, Checksum):
        got = book.checksum()
        return None if got == ref.value else f"checksum {got} != venue's {ref.value}"
    if isinstance(ref, BestPrices):
        return _check_best(book, ref)
    if isinstance(ref, TopLevels):
        return _check_top(book, ref)
    raise TypeError(f"unknown reference {ref!r}")


def _check_best(book: Book, ref: BestPrices) -> str | None:
    problems = []
    for side, want, got, size_known in (
        ("bid", ref.bid, book.best_bid(), ref.bid_size_known),
        ("ask", ref.ask, book.best_ask(), ref.ask_size_known),
    ):
        if want is None or got is None:
            if want != got:
                problems.append(f"best {side} {got} != venue's {want}")
        elif got[0] != want[0] or (size_known and got[1] != want[1]):
            problems.append(f"best {side} {got} != venue's {want}")
    return "; ".join(problems) or None


def _check_top(book: Book, ref: TopLevels) -> str | None:
    problems = []
    for side, want, levels, count in (
        # (depth 0 would mean "all levels" to the book: an empty side compares nothing)
        ("bids", ref.bids, book.bids(len(ref.bids)) if ref.bids else [], book.bid_count()),
        ("asks", ref.asks, book.asks(len(ref.asks)) if ref.asks else [], book.ask_count()),
    ):
        if tuple(levels) != tuple(want):
            # The first level that differs, or where the shorter side ends.
            first = next(
                (i for i, (a, b) in enumerate(zip(levels, want, strict=False)) if a != b), min(len(levels), len(want))
            )
            problems.append(
                f"{side} differ at level {first + 1}: "
                f"{levels[first] if first < len(levels) else None} != venue's {want[first] if first < len(want) else None}"
            )
        elif ref.depth and count > ref.depth:
            problems.append(f"{side}: {count} levels, venue shows at most {ref.depth}")
        elif ref.depth and len(want) < ref.depth and count != len(want):
            # The venue shows a short side: nothing may hide beneath it.
            problems.append(f"{side}: {count} levels, venue shows only {len(want)}")
    return "; ".join(problems) or None


_KINDS = {Checksum: "checksum", BestPrices: "best bid/ask"}


def reference_kind(ref: Reference) -> str:
    if isinstance(ref, TopLevels):
        return ref.kind
    return _KINDS[type(ref)]


@dataclass(slots=True)
class SymbolReport:
    symbol: str
    records: int = 0
    level_changes: int = 0
    checks: dict[str, int] = field(default_factory=dict)  # kind -> count checked
    matched: dict[str, int] = field(default_factory=dict)  # kind -> count matched

    @property
    def checked(self) -> int:
        return sum(self.checks.values())

    @property
    def failed(self) -> int:
        return self.checked - sum(self.matched.values())


@dataclass(frozen=True, slots=True)
class Mismatch:
    record: int  # 0-based index of the record in the file
    time_ns: int
    symbol: str
    kind: str
    detail: str


@dataclass(slots=True)
class Report:
    symbols: dict[str, SymbolReport] = field(default_factory=dict)
    records: int = 0
    notes: dict[str, int] = field(default_factory=dict)
    mismatches: list[Mismatch] = field(default_factory=list)
    mismatch_count: int = 0
    rejected: list[str] = field(default_factory=list)  # updates the service refused
    # False for a format that carries no references (Tardis): then a clean
    # rebuild with nothing to compare is a pass, and the report says so.
    references_expected: bool = True

    @property
    def checked(self) -> int:
        return sum(s.checked for s in self.symbols.values())

    @property
    def matched(self) -> int:
        return sum(sum(s.matched.values()) for s in self.symbols.values())

    @property
    def ok(self) -> bool:
        return self.mismatch_count == 0 and not self.rejected and (self.checked > 0 or not self.references_expected)

    def by_kind(self) -> dict[str, tuple[int, int]]:
        out: dict[str, list[int]] = {}
        for s in self.symbols.values():
            for kind, n in s.checks.items():
                pair = out.setdefault(kind, [0, 0])
                pair[0] += s.matched.get(kind, 0)
                pair[1] += n
        return {k: (m, n) for k, (m, n) in out.items()}

    def symbol(self, name: str) -> SymbolReport:
        rep = self.symbols.get(name)
        if rep is None:
            rep = self.symbols[name] = SymbolReport(name)
        return rep

    def note_check(self, index: int, time_ns: int, ref: Reference, problem: str | None, kind: str = "") -> None:
        kind = kind or reference_kind(ref)
        rep = self.symbol(ref.symbol)
        rep.checks[kind] = rep.checks.get(kind, 0) + 1
        if problem is None:
            rep.matched[kind] = rep.matched.get(kind, 0) + 1
            return
        self.mismatch_count += 1
        if len(self.mismatches) < MAX_MISMATCHES_KEPT:
            self.mismatches.append(Mismatch(index, time_ns, ref.symbol, kind, problem))

    def lines(self) -> list[str]:
        """A human-readable summary table."""
        out = [f"{'symbol':<14} {'records':>8} {'changes':>8}  checks matched"]
        for name in sorted(self.symbols):
            s = self.symbols[name]
            detail = ", ".join(f"{kind} {s.matched.get(kind, 0)}/{n}" for kind, n in sorted(s.checks.items()))
            out.append(f"{name:<14} {s.records:>8} {s.level_changes:>8}  {detail or '-'}")
        for kind, (m, n) in sorted(self.by_kind().items()):
            out.append(f"total {kind}: {m} of {n} match")
        for note, n in sorted(self.notes.items()):
            out.append(f"events without a book change: {note} x{n}")
        for mm in self.mismatches:
            out.append(f"MISMATCH record {mm.record} {mm.symbol} {mm.kind}: {mm.detail}")
        if self.mismatch_count > len(self.mismatches):
            out.append(f"... {self.mismatch_count - len(self.mismatches)} more mismatches")
        for r in self.rejected[:MAX_MISMATCHES_KEPT]:
            out.append(f"REJECTED {r}")
        verdict = "OK" if self.ok else ("NOTHING CHECKED" if not self.checked else "FAILED")
        if not self.checked and not self.references_expected:
            out.append(f"{verdict}: {self.records} records rebuilt; the format carries no references to check")
        else:
            out.append(f"{verdict}: {self.matched} of {self.checked} references match over {self.records} records")
        return out


class Verifier:
    """Applies records to a Market exactly as the server would (validated
    whole, then sequenced) and checks each reference after its record."""

    def __init__(self) -> None:
        self.market = Market(epoch=1)
        self.report = Report()

    def book(self, symbol: str) -> Book:
        return self.market.get(symbol).book

    def feed(self, record: Record) -> None:
        report = self.report
        index = report.records
        report.records = index + 1
        if record.note:
            report.notes[record.note] = report.notes.get(record.note, 0) + 1
        updates = record.updates
        symbols = report.symbols
        try:
            if len(updates) == 1 and not record.instruments:
                # Most records (every Kraken update): the batch of one update.
                update = updates[0]
                delta = self.market.apply_one(update)
                deltas: tuple[Delta, ...] = () if delta is None else (delta,)
            else:
                deltas = self.market.apply(FeedBatch(index, record.instruments, updates)).deltas
        except InvalidInput as exc:
            report.rejected.append(f"record {index}: {exc}")
            return
        # The per-symbol counts, looked up directly: this runs for every record.
        for update in updates:
            rep = symbols.get(update.symbol) or report.symbol(update.symbol)
            rep.records += 1
        for delta in deltas:
            rep = symbols.get(delta.symbol) or report.symbol(delta.symbol)
            rep.level_changes += len(delta.bids) + len(delta.asks)
        checks = record.checks
        if not checks:
            return
        find = self.market.find
        for ref in checks:
            sb = find(ref.symbol)
            if sb is None:
                report.note_check(index, record.time_ns, ref, "symbol has no book yet")
            elif type(ref) is Checksum:
                # The most common reference (every Kraken update): checked
                # and counted inline, as `check_reference` and `note_check` do.
                if sb.book.checksum() != ref.value:
                    report.note_check(index, record.time_ns, ref, check_reference(sb.book, ref))
                    continue
                rep = symbols.get(ref.symbol) or report.symbol(ref.symbol)
                kinds = rep.checks
                kinds["checksum"] = kinds.get("checksum", 0) + 1
                kinds = rep.matched
                kinds["checksum"] = kinds.get("checksum", 0) + 1
            else:
                report.note_check(index, record.time_ns, ref, check_reference(sb.book, ref))


# Records read ahead of the books: reading a run of records, then applying
# the run, keeps each stage's code and data hot (about 20% faster than one
# record at a time on a 2-core machine) and holds only this many.
READ_AHEAD = 256


def verify(records: Iterable[Record], references_expected: bool = True) -> Report:
    v = Verifier()
    v.report.references_expected = references_expected
    feed = v.feed
    it = iter(records)
    while True:
        run: list[Record] = []
        try:
            for record in it:
                run.append(record)
                if len(run) == READ_AHEAD:
                    break
        finally:
            # Records read before a reader's error are applied first, as one by one.
            for record in run:
                feed(record)
        if len(run) < READ_AHEAD:
            return v.report


def with_rebuilt_references(records: Iterable[Record]) -> Iterator[Record]:
    """For a format with no references of its own: check every record against
    the books rebuilt offline from the file (the whole book of each symbol the
    record updates), so an end-to-end replay still proves the served books
    are the file's books at every step."""
    v = Verifier()
    for record in records:
        v.feed(record)
        symbols = dict.fromkeys(u.symbol for u in record.updates if u.symbol in v.market)
        refs = tuple(TopLevels(s, tuple(v.book(s).bids()), tuple(v.book(s).asks())) for s in symbols)
        yield replace(record, checks=record.checks + refs)
