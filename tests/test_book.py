"""The L2 book against a plain-dict reference model."""

from __future__ import annotations

import zlib

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    precondition,
    rule,
)

from orderbook.core.book import Book, _Keys
from orderbook.core.errors import InvariantViolation

pytestmark = pytest.mark.timeout(120)

# Mostly a narrow band so that levels collide and get replaced or deleted;
# sometimes far from the top, in both directions, negative included.
prices = st.one_of(
    st.integers(min_value=-30, max_value=30),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.integers(min_value=-(10**6), max_value=10**6),
)
sizes = st.one_of(st.integers(min_value=1, max_value=9), st.integers(min_value=1, max_value=2**64 - 1))
sizes0 = st.one_of(st.just(0), sizes)
levels = st.lists(st.tuples(prices, sizes0), max_size=25)


def model_checksum(bids: dict[int, int], asks: dict[int, int]) -> int:
    """Kraken-style CRC32 written from the spec, independently of orderbook.core."""
    top_asks = sorted(asks.items())[:10]
    top_bids = sorted(bids.items(), reverse=True)[:10]
    text = "".join(str(p) + str(s) for p, s in top_asks + top_bids)
    return zlib.crc32(text.encode()) & 0xFFFFFFFF


class BookMachine(RuleBasedStateMachine):
    prices_seen = Bundle("prices_seen")

    def __init__(self) -> None:
        super().__init__()
        self.book = Book()
        self.bids: dict[int, int] = {}
        self.asks: dict[int, int] = {}
        self.frozen: tuple[Book, dict[int, int], dict[int, int]] | None = None

    def _set(self, model: dict[int, int], setter, price: int, size: int) -> None:
        old = setter(price, size)
        assert old == model.get(price, 0)
        if size:
            model[price] = size
        else:
            model.pop(price, None)

    @rule(target=prices_seen, price=prices, size=sizes0)
    def set_bid(self, price, size):
        self._set(self.bids, self.book.set_bid, price, size)
        return price

    @rule(target=prices_seen, price=prices, size=sizes0)
    def set_ask(self, price, size):
        self._set(self.asks, self.book.set_ask, price, size)
        return price

    @rule(price=prices_seen, size=sizes0)
    def reset_known_price(self, price, size):
        # Hit a price that was used before: replace or delete an existing level.
        self._set(self.bids, self.book.set_bid, price, size)
        self._set(self.asks, self.book.set_ask, price, 0 if size else 1)

    @rule(price=consumes(prices_seen))
    def delete_known_price(self, price):
        self._set(self.bids, self.book.set_bid, price, 0)
        self._set(self.asks, self.book.set_ask, price, 0)
        assert self.book.bid_size(price) == 0 and self.book.ask_size(price) == 0

    @precondition(lambda self: self.bids)
    @rule()
    def delete_best_bid(self):
        price = max(self.bids)
        self._set(self.bids, self.book.set_bid, price, 0)

    @precondition(lambda self: self.asks)
    @rule()
    def delete_worst_ask(self):
        price = max(self.asks)
        self._set(self.asks, self.book.set_ask, price, 0)

    @rule(bids=levels, asks=levels)
    def replace(self, bids, asks):
        self.book.replace(bids, asks)
        # Documented: size-0 levels are skipped, otherwise the last one wins.
        self.bids = {p: s for p, s in bids if s}
        self.asks = {p: s for p, s in asks if s}

    @rule()
    def clear(self):
        self.book.clear()
        self.bids, self.asks = {}, {}

    @rule()
    def take_copy(self):
        self.frozen = (self.book.copy(), dict(self.bids), dict(self.asks))

    @rule(n=st.integers(min_value=0, max_value=40))
    def top_n(self, n):
        want_b = sorted(self.bids.items(), reverse=True)
        want_a = sorted(self.asks.items())
        if n:
            want_b, want_a = want_b[:n], want_a[:n]
        assert self.book.bids(n) == want_b
        assert self.book.asks(n) == want_a

    @invariant()
    def copy_is_independent(self):
        # A copy taken earlier still equals the model state at that time.
        if self.frozen is not None:
            copy, bids, asks = self.frozen
            assert copy.bids() == sorted(bids.items(), reverse=True)
            assert copy.asks() == sorted(asks.items())
            assert (copy == self.book) == (bids == self.bids and asks == self.asks)

    @invariant()
    def agrees_with_model(self):
        book = self.book
        book.check()
        want_b = sorted(self.bids.items(), reverse=True)
        want_a = sorted(self.asks.items())
        assert book.bids() == want_b
        assert book.asks() == want_a
        assert book.bids(None) == want_b
        for n in (1, 3, 10):
            assert book.bids(n) == want_b[:n]
            assert book.asks(n) == want_a[:n]
        assert book.best_bid() == (want_b[0] if want_b else None)
        assert book.best_ask() == (want_a[0] if want_a else None)
        assert book.bid_count() == len(self.bids)
        assert book.ask_count() == len(self.asks)
        assert len(book) == len(self.bids) + len(self.asks)
        assert book.checksum() == model_checksum(self.bids, self.asks)
        crossed = bool(want_b and want_a and want_b[0][0] >= want_a[0][0])
        assert book.crossed() == crossed
        for p, s in list(self.bids.items())[:5]:
            assert book.bid_size(p) == s
        for p, s in list(self.asks.items())[:5]:
            assert book.ask_size(p) == s


TestBookMachine = BookMachine.TestCase
# One bug shrunk at a time: shrinking several at once can run for minutes.
TestBookMachine.settings = settings(max_examples=120, stateful_step_count=40, deadline=None, report_multiple_bugs=False)


class SmallHeadBookMachine(BookMachine):
    """The same rules with the plain-list head of each side's keys cut to
    11-12 keys, so that keys move between it and the sorted rest all the
    time (with the real limits, 64-128 keys, few books here reach them)."""

    def __init__(self) -> None:
        self._limits = (_Keys.HEAD_MAX, _Keys.HEAD_REFILL)
        _Keys.HEAD_MAX, _Keys.HEAD_REFILL = 12, 11
        super().__init__()

    def teardown(self) -> None:
        _Keys.HEAD_MAX, _Keys.HEAD_REFILL = self._limits

    @rule(
        bid=st.booleans(),
        changes=st.lists(st.tuples(st.integers(min_value=-40, max_value=40), sizes0), min_size=5, max_size=40),
    )
    def many_sets(self, bid, changes):
        # One level at a time, so a side grows past the head and shrinks below it.
        for price, size in changes:
            if bid:
                self._set(self.bids, self.book.set_bid, price, size)
            else:
                self._set(self.asks, self.book.set_ask, price, size)


TestSmallHeadBookMachine = SmallHeadBookMachine.TestCase
TestSmallHeadBookMachine.settings = settings(
    max_examples=120, stateful_step_count=60, deadline=None, report_multiple_bugs=False
)


def test_keys_move_between_head_and_rest_in_order(monkeypatch):
    monkeypatch.setattr(_Keys, "HEAD_MAX", 12)
    monkeypatch.setattr(_Keys, "HEAD_REFILL", 11)
    book = Book()
    for p in range(100):
        book.set_ask(p, 1)
    book.check()
    for p in range(95):  # from the best: the head drains and refills from the rest
        book.set_ask(p, 0)
        book.check()
        assert book.asks(3) == [(q, 1) for q in range(p + 1, min(p + 4, 100))]
    assert book.asks() == [(q, 1) for q in range(95, 100)]


# ----------------------------------------------------------------------------- examples


def test_negative_and_zero_prices_order():
    b = Book()
    for p in (-5, 0, 3, -100):
        b.set_bid(p, 1)
        b.set_ask(p, 2)
    assert b.bids() == [(3, 1), (0, 1), (-5, 1), (-100, 1)]
    assert b.asks() == [(-100, 2), (-5, 2), (0, 2), (3, 2)]
    assert b.crossed()


def test_set_returns_old_size_and_zero_removes():
    b = Book()
    assert b.set_bid(100, 5) == 0
    assert b.set_bid(100, 5) == 5  # same size: no change
    assert b.set_bid(100, 7) == 5
    assert b.set_bid(100, 0) == 7
    assert b.set_bid(100, 0) == 0  # deleting a missing level is harmless
    assert b.bids() == [] and len(b) == 0


def test_equality_ignores_insertion_order():
    a, b = Book(), Book()
    a.set_bid(1, 1)
    a.set_bid(2, 2)
    b.set_bid(2, 2)
    b.set_bid(1, 1)
    assert a == b
    b.set_ask(1, 1)
    assert a != b
    assert a != object()


def test_check_detects_violations():
    b = Book()
    b.set_bid(10, 4)
    b.set_ask(15, 6)
    b.check()
    b.check(price_increment=5, size_increment=2)
    with pytest.raises(InvariantViolation):
        b.check(price_increment=10)  # 15 is off a 10-tick grid
    with pytest.raises(InvariantViolation):
        b.check(size_increment=4)  # 6 lots off a 4-lot grid
    b.set_bid(9, -1)  # the book stores what it is told; check() must catch it
    with pytest.raises(InvariantViolation):
        b.check()
