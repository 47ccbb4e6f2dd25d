"""Sequencing of book changes, and whole-batch validation in Market."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orderbook.core.book import Book
from orderbook.core.errors import (
    InstrumentConflict,
    InvalidInstrument,
    InvalidUpdate,
    UnknownSymbol,
)
from orderbook.core.events import BookUpdate, FeedBatch, Position
from orderbook.core.instrument import Instrument
from orderbook.core.market import Market
from orderbook.core.sequencer import MAX_SIZE, SequencedBook

pytestmark = pytest.mark.timeout(120)

EPOCH = 77
BTC = Instrument("BTC-USD", price_scale=2, size_scale=8)
GRID = Instrument("GRID", price_scale=2, size_scale=0, price_increment=5, size_increment=10)

prices = st.one_of(st.integers(-12, 12), st.integers(-(2**63), 2**63 - 1))
sizes0 = st.one_of(st.just(0), st.integers(1, 4), st.integers(1, MAX_SIZE), st.just(MAX_SIZE))
side = st.lists(st.tuples(prices, sizes0), max_size=8)


def sides(book: Book) -> tuple[list, list]:
    return book.bids(), book.asks()


def apply_to(book: Book, bids, asks) -> None:
    for p, s in bids:
        book.set_bid(p, s)
    for p, s in asks:
        book.set_ask(p, s)


def expected_after(before: Book, u: BookUpdate) -> Book:
    """The book an update must produce, computed with plain dicts."""
    if u.replace:
        # Last write wins per price, as in a plain update; size 0 = absent.
        bids = {p: s for p, s in dict(u.bids).items() if s}
        asks = {p: s for p, s in dict(u.asks).items() if s}
    else:
        bids, asks = dict(before.bids()), dict(before.asks())
        for model, levels in ((bids, u.bids), (asks, u.asks)):
            for p, s in levels:
                if s:
                    model[p] = s
                else:
                    model.pop(p, None)
    out = Book()
    out.replace(bids.items(), asks.items())
    return out


def effective(before: Book, after: Book) -> tuple[set, set]:
    """The level changes between two books, as (bids, asks) sets of (price, size)."""
    out = []
    for a, b in ((dict(before.bids()), dict(after.bids())), (dict(before.asks()), dict(after.asks()))):
        ch = {(p, 0) for p in a if p not in b}
        ch |= {(p, s) for p, s in b.items() if a.get(p) != s}
        out.append(ch)
    return out[0], out[1]


# ----------------------------------------------------------------------------- SequencedBook


def test_seq_grows_by_one_and_noop_consumes_nothing():
    sb = SequencedBook(BTC, EPOCH)
    d1 = sb.apply(BookUpdate("BTC-USD", bids=((100, 5),)), now_ns=9)
    assert (d1.seq, d1.prev_seq, d1.epoch, d1.symbol) == (1, 0, EPOCH, "BTC-USD")
    assert d1.bids == ((100, 5),) and d1.asks == ()
    assert d1.publish_time_ns == 9
    # Same size again, and deleting a missing level: no change, no seq.
    assert sb.apply(BookUpdate("BTC-USD", bids=((100, 5),))) is None
    assert sb.apply(BookUpdate("BTC-USD", asks=((101, 0),))) is None
    assert sb.apply(BookUpdate("BTC-USD", bids=((100, 5), (7, 0)), asks=((3, 0),))) is None
    assert sb.apply(BookUpdate("BTC-USD")) is None
    assert sb.seq == 1
    d2 = sb.apply(BookUpdate("BTC-USD", asks=((101, 3),), event_time_ns=42))
    assert (d2.seq, d2.prev_seq, d2.event_time_ns) == (2, 1, 42)
    assert d2.checksum == sb.book.checksum()


def test_duplicate_prices_last_wins():
    sb = SequencedBook(BTC, EPOCH)
    sb.apply(BookUpdate("BTC-USD", bids=((100, 5),)))
    d = sb.apply(BookUpdate("BTC-USD", bids=((100, 9), (101, 1), (100, 5), (101, 2), (102, 3), (102, 0))))
    # 100 ends where it started, 102 appears and vanishes: only 101 changed.
    assert d.bids == ((101, 2),)
    assert sb.book.bids() == [(101, 2), (100, 5)]
    assert sb.apply(BookUpdate("BTC-USD", bids=((100, 1), (100, 5)))) is None
    assert sb.seq == 1 + 1


def test_replace_duplicate_price_last_wins():
    # The same levels must give the same book with or without replace when
    # the book starts empty: "last write wins within one update".
    levels = ((5, 1), (5, 0), (6, 2), (6, 3))
    plain = SequencedBook(BTC, EPOCH)
    plain.apply(BookUpdate("BTC-USD", bids=levels))
    assert plain.book.bids() == [(6, 3)]
    replaced = SequencedBook(BTC, EPOCH)
    d = replaced.apply(BookUpdate("BTC-USD", bids=levels, replace=True))
    assert replaced.book.bids() == [(6, 3)], (
        "replace=True keeps (5, 1) although a later (5, 0) in the same update removes it"
    )
    assert d.bids == ((6, 3),)


def test_starting_seq_and_snapshot():
    sb = SequencedBook(BTC, EPOCH, seq=1000)
    sb.apply(BookUpdate("BTC-USD", bids=((1, 1), (2, 2), (3, 3)), asks=((5, 1), (6, 1))))
    assert sb.seq == 1001
    full = sb.snapshot(now_ns=5)
    assert (full.seq, full.epoch, full.depth, full.time_ns) == (1001, EPOCH, 0, 5)
    assert full.bids == ((3, 3), (2, 2), (1, 1)) and full.asks == ((5, 1), (6, 1))
    assert full.checksum == sb.book.checksum()
    assert full.instrument is BTC
    top = sb.snapshot(depth=2)
    assert top.bids == ((3, 3), (2, 2)) and top.asks == ((5, 1), (6, 1)) and top.depth == 2
    t = Book()
    t.replace(top.bids, top.asks)
    assert top.checksum == t.checksum()


@settings(max_examples=100, deadline=None, report_multiple_bugs=False)
@given(st.lists(st.tuples(side, side, st.booleans()), max_size=10))
def test_replace_and_updates_produce_exact_diff(steps):
    sb = SequencedBook(BTC, EPOCH)
    for bids, asks, replace in steps:
        if replace:
            # One entry per price: duplicates in a replace have their own test
            # below (test_replace_duplicate_price_last_wins).
            bids, asks = list(dict(bids).items()), list(dict(asks).items())
        u = BookUpdate("BTC-USD", tuple(bids), tuple(asks), replace)
        before = sb.book.copy()
        seq = sb.seq
        want = expected_after(before, u)
        d = sb.apply(u)
        assert sb.book == want
        sb.book.check()
        want_b, want_a = effective(before, want)
        if not want_b and not want_a:
            assert d is None and sb.seq == seq
            continue
        assert (d.seq, d.prev_seq) == (seq + 1, seq) and sb.seq == seq + 1
        # Only effective changes, each price at most once per side.
        assert set(d.bids) == want_b and len(d.bids) == len(want_b)
        assert set(d.asks) == want_a and len(d.asks) == len(want_a)
        assert d.checksum == want.checksum()


def test_validate_rejects():
    sb = SequencedBook(GRID, EPOCH)
    sb.validate(BookUpdate("GRID", bids=((-15, 20), (0, 0)), asks=((10, 10),)))
    bad = [
        BookUpdate("GRID", bids=((12, 10),)),  # off the 5-tick grid
        BookUpdate("GRID", asks=((10, 15),)),  # off the 10-lot grid
        BookUpdate("GRID", asks=((10, -10),)),  # negative size
        BookUpdate("GRID", bids=((10.0, 10),)),  # not an int
        BookUpdate("GRID", bids=((10, True),)),  # bool is not a size
    ]
    for u in bad:
        with pytest.raises(InvalidUpdate) as exc:
            sb.validate(u)
        assert exc.value.symbol == "GRID"
    # On a unit grid: negative sizes, and sizes past int64 (what a negative
    # number written into the uint64 field looks like), are rejected.
    for size in (-1, MAX_SIZE + 1, 2**64 - 1):
        with pytest.raises(InvalidUpdate):
            SequencedBook(BTC, EPOCH).validate(BookUpdate("BTC-USD", asks=((1, size),)))
    SequencedBook(BTC, EPOCH).validate(BookUpdate("BTC-USD", bids=((1, MAX_SIZE),)))


# ----------------------------------------------------------------------------- Market


def state(m: Market):
    return {sb.instrument.symbol: (sb.instrument, sb.epoch, sb.seq, sb.book.copy()) for sb in m}


def seeded_market() -> Market:
    m = Market(EPOCH)
    m.apply(
        FeedBatch(
            1,
            (BTC, GRID),
            (
                BookUpdate("BTC-USD", bids=((100, 5), (99, 1)), asks=((101, 2),)),
                BookUpdate("GRID", bids=((10, 20),), asks=((15, 30),)),
            ),
        )
    )
    return m


GOOD = BookUpdate("BTC-USD", bids=((98, 4),), asks=((101, 0),))


@pytest.mark.parametrize(
    "batch, error",
    [
        (FeedBatch(2, (), (GOOD, BookUpdate("NOPE", bids=((1, 1),)))), UnknownSymbol),
        (FeedBatch(2, (), (GOOD, BookUpdate("GRID", bids=((11, 10),)))), InvalidUpdate),
        (FeedBatch(2, (), (GOOD, BookUpdate("GRID", asks=((10, 5),)))), InvalidUpdate),
        (FeedBatch(2, (), (GOOD, BookUpdate("BTC-USD", asks=((1, -3),)))), InvalidUpdate),
        (FeedBatch(2, (), (GOOD, BookUpdate("BTC-USD", asks=((1, 2**64 - 1),)))), InvalidUpdate),
        (FeedBatch(2, (Instrument("BTC-USD", 3, 8),), (GOOD,)), InstrumentConflict),
        (FeedBatch(2, (Instrument("NEW", 1, 1), Instrument("NEW", 2, 1)), (GOOD,)), InstrumentConflict),
        (FeedBatch(2, (Instrument("NEW", 1, 1), Instrument("", 1, 1)), (GOOD,)), InvalidInstrument),
        # A new symbol defined in the batch is validated against its own grid.
        (
            FeedBatch(2, (Instrument("NEW", 1, 1, price_increment=3),), (GOOD, BookUpdate("NEW", bids=((4, 1),)))),
            InvalidUpdate,
        ),
        # An update before its symbol exists anywhere in the batch.
        (FeedBatch(2, (), (GOOD, BookUpdate("NEW", bids=((4, 1),)))), UnknownSymbol),
    ],
)
def test_rejected_batch_changes_nothing(batch, error):
    m = seeded_market()
    before = state(m)
    with pytest.raises(error):
        m.apply(batch)
    after = state(m)
    assert after.keys() == before.keys()
    for sym, (inst, epoch, seq, book) in before.items():
        inst2, epoch2, seq2, book2 = after[sym]
        assert inst2 is inst and (epoch2, seq2) == (epoch, seq)
        assert book2 == book and sides(book2) == sides(book)
    assert "NEW" not in m and len(m) == 2


def test_market_apply_reports():
    m = Market(EPOCH)
    new = Instrument("NEW", 1, 1)
    res = m.apply(
        FeedBatch(
            5,
            (BTC, new, BTC),
            (
                BookUpdate("BTC-USD", bids=((1, 1),)),
                BookUpdate("NEW", asks=((2, 2),)),
                BookUpdate("BTC-USD", bids=((1, 1),)),  # no-op: no delta, no seq
                BookUpdate("BTC-USD", bids=((1, 2),)),
            ),
        ),
        now_ns=3,
    )
    assert res.new_instruments == (BTC, new)
    assert [(d.symbol, d.seq, d.prev_seq) for d in res.deltas] == [("BTC-USD", 1, 0), ("NEW", 1, 0), ("BTC-USD", 2, 1)]
    assert all(d.publish_time_ns == 3 and d.epoch == EPOCH for d in res.deltas)
    assert set(res.positions) == {Position("BTC-USD", EPOCH, 2), Position("NEW", EPOCH, 1)}
    assert m.symbols() == ["BTC-USD", "NEW"] and "NEW" in m and len(m) == 2
    # Re-defining with equal terms is accepted and not new.
    res2 = m.apply(FeedBatch(6, (Instrument("NEW", 1, 1, venue="v"),), ()))
    assert res2.new_instruments == () and res2.deltas == ()
    assert m.get("NEW").instrument is new
    with pytest.raises(UnknownSymbol):
        m.get("MISSING")
    # An update that changes nothing still reports the symbol's position.
    res3 = m.apply(FeedBatch(7, (), (BookUpdate("NEW", asks=((2, 2),)),)))
    assert res3.deltas == () and res3.positions == (Position("NEW", EPOCH, 1),)


symbols = st.sampled_from(["A", "B", "C"])
market_updates = st.builds(
    lambda sym, b, a, r: BookUpdate(sym, tuple(b), tuple(a), r),
    symbols,
    side,
    side,
    st.sampled_from([False, False, False, True]),
)


@settings(max_examples=60, deadline=None, report_multiple_bugs=False)
@given(st.lists(st.lists(market_updates, max_size=5), max_size=8))
def test_replaying_deltas_rebuilds_the_market(batches):
    m = Market(EPOCH)
    insts = tuple(Instrument(s, 2, 2) for s in "ABC")
    replica = {s: Book() for s in "ABC"}
    last = dict.fromkeys("ABC", 0)
    for n, updates_ in enumerate(batches):
        res = m.apply(FeedBatch(n, insts if n == 0 else (), tuple(updates_)))
        for d in res.deltas:
            # Each delta continues its symbol's chain by exactly one.
            assert (d.prev_seq, d.seq) == (last[d.symbol], last[d.symbol] + 1)
            last[d.symbol] = d.seq
            book = replica[d.symbol]
            before = book.copy()
            apply_to(book, d.bids, d.asks)
            # Every level in the delta really changes the replica.
            assert effective(before, book) == (set(d.bids), set(d.asks))
            assert d.checksum == book.checksum()
    for s in "ABC":
        if s in m:
            assert replica[s] == m.get(s).book
            assert m.get(s).seq == last[s]


# The sequencer reuses the previous checksum when a change lies strictly below
# the 10th level; these streams concentrate changes around that boundary.
@settings(max_examples=200, deadline=None)
@given(
    depth=st.integers(8, 14),
    changes=st.lists(
        st.tuples(st.booleans(), st.integers(0, 16), st.integers(0, 3)),
        min_size=1,
        max_size=40,
    ),
)
def test_checksum_is_right_after_changes_around_the_tenth_level(depth, changes):
    sb = SequencedBook(Instrument("C", 0, 0), epoch=1)
    sb.apply(
        BookUpdate("C", bids=tuple((100 - i, 1) for i in range(depth)), asks=tuple((101 + i, 1) for i in range(depth)))
    )
    for is_bid, rank, size in changes:
        # rank counts from the best price outward, so 9 is the 10th level.
        update = BookUpdate("C", bids=((100 - rank, size),)) if is_bid else BookUpdate("C", asks=((101 + rank, size),))
        delta = sb.apply(update)
        if delta is not None:
            assert delta.checksum == sb.book.checksum()
