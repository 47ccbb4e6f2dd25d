"""Depth-limited views: a subscriber of the top N holds exactly the top N."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from orderbook.core.book import Book
from orderbook.core.checksum import book_checksum
from orderbook.core.depth import TopNView
from orderbook.core.events import BookUpdate
from orderbook.core.follower import BookFollower
from orderbook.core.instrument import Instrument
from orderbook.core.sequencer import SequencedBook

pytestmark = pytest.mark.timeout(120)

EPOCH = 3
INST = Instrument("D", 0, 0)

# A narrow band so that levels cross the top-N boundary often, plus far levels.
prices = st.one_of(st.integers(-25, 25), st.integers(-(10**9), 10**9))
levels = st.lists(st.tuples(prices, st.integers(0, 3)), max_size=6)


class DepthMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.sb = SequencedBook(INST, EPOCH)
        self.view: TopNView | None = None
        self.followers: list[BookFollower] = []

    @initialize(depth=st.one_of(st.integers(1, 4), st.integers(1, 15)), bids=levels, asks=levels)
    def start(self, depth, bids, asks):
        # The book may already hold levels (and a seq) when the view is made.
        self.sb.apply(BookUpdate("D", tuple(bids), tuple(asks)))
        self.depth = depth
        self.view = TopNView(depth, self.sb.book, self.sb.seq)
        self.subscribe()

    @rule()
    def subscribe(self):
        # A new subscriber mid-stream: the view's snapshot, stamped at the view's seq.
        snap = self.view.snapshot(self.sb.snapshot(self.depth))
        assert snap.seq == self.view.seq and snap.depth == self.depth
        f = BookFollower("D")
        f.apply_snapshot(snap.epoch, snap.seq, snap.bids, snap.asks, snap.checksum, snap.instrument, snap.depth)
        self.followers = [*self.followers[-2:], f]

    @rule(bids=levels, asks=levels, replace=st.sampled_from([False] * 6 + [True]))
    def update(self, bids, asks, replace):
        self._send(BookUpdate("D", tuple(bids), tuple(asks), replace))

    @rule(is_bid=st.booleans(), start=st.integers(-25, 25), n=st.integers(5, 20), size=st.integers(1, 3))
    def fill(self, is_bid, start, n, size):
        # A side deeper than the view (and than the 10 checksum levels).
        lv = tuple((start + k, size) for k in range(n))
        self._send(BookUpdate("D", bids=lv) if is_bid else BookUpdate("D", asks=lv))

    @rule(is_bid=st.booleans(), size=st.integers(0, 3), data=st.data())
    def touch_below_view(self, is_bid, size, data):
        # A change no top-N subscriber sees: the view's seq must stay behind.
        side = self.sb.book.bids() if is_bid else self.sb.book.asks()
        deep = side[self.depth :]
        if not deep:
            return
        price = data.draw(st.sampled_from(deep))[0]
        lv = ((price, size),)
        self._send(BookUpdate("D", bids=lv) if is_bid else BookUpdate("D", asks=lv))

    def _send(self, upd: BookUpdate) -> None:
        delta = self.sb.apply(upd)
        if delta is None:
            return
        prev_view_seq = self.view.seq
        vd = self.view.update(self.sb.book, delta)
        if vd is None:
            assert self.view.seq == prev_view_seq
            return
        assert (vd.seq, vd.prev_seq, vd.epoch) == (delta.seq, prev_view_seq, EPOCH)
        # The checksum of the top N, computed independently.
        book = self.sb.book
        assert vd.checksum == book_checksum(book.asks(self.depth)[:10], book.bids(self.depth)[:10])
        for f in self.followers:
            before = f.book.copy()
            # Raises on a gap, a duplicate or a checksum mismatch.
            f.apply_delta(vd.epoch, vd.seq, vd.prev_seq, vd.bids, vd.asks, vd.checksum)
            # Every level sent is a real change for the subscriber, once per side.
            for lv, sizes_before in ((vd.bids, before.bid_size), (vd.asks, before.ask_size)):
                assert len({p for p, _ in lv}) == len(lv)
                assert all(sizes_before(p) != s for p, s in lv)

    @invariant()
    def followers_hold_top_n(self):
        if self.view is None:
            return
        want_b, want_a = self.sb.book.bids(self.depth), self.sb.book.asks(self.depth)
        assert self.view.levels() == (want_b, want_a)
        for f in self.followers:
            assert f.synced and f.seq == self.view.seq
            assert f.book.bids() == want_b
            assert f.book.asks() == want_a
            assert f.book.checksum() == book_checksum(want_a, want_b)


TestDepthMachine = DepthMachine.TestCase
# One bug shrunk at a time: shrinking several at once can run for minutes.
TestDepthMachine.settings = settings(
    max_examples=120, stateful_step_count=25, deadline=None, report_multiple_bugs=False
)


def test_depth_must_be_positive():
    for depth in (0, -1):
        with pytest.raises(ValueError):
            TopNView(depth, Book(), 0)


def test_level_pushed_out_becomes_removal():
    sb = SequencedBook(INST, EPOCH)
    sb.apply(BookUpdate("D", bids=((10, 1), (9, 1))))
    view = TopNView(2, sb.book, sb.seq)
    d = sb.apply(BookUpdate("D", bids=((11, 5),)))
    vd = view.update(sb.book, d)
    assert set(vd.bids) == {(11, 5), (9, 0)} and vd.asks == ()
    # A change below a full view is invisible and keeps the view's seq.
    d = sb.apply(BookUpdate("D", bids=((1, 1),)))
    assert view.update(sb.book, d) is None and view.seq == 2
    # Removing a top level pulls the next one in.
    d = sb.apply(BookUpdate("D", bids=((11, 0),)))
    vd = view.update(sb.book, d)
    assert set(vd.bids) == {(11, 0), (9, 1)} and vd.prev_seq == 2 and vd.seq == 4
