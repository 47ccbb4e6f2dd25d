"""The built-in market simulator: coherent, deterministic, realistic-looking flow."""

from __future__ import annotations

import dataclasses
import random
import statistics
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orderbook.core.book import Book
from orderbook.core.events import BookUpdate, FeedBatch
from orderbook.core.instrument import Instrument
from orderbook.core.market import Market
from orderbook.feeds.simulator import DEFAULT_INSTRUMENTS, MarketSimulator

pytestmark = pytest.mark.timeout(60)

# Odd grids on purpose: increments that are not powers of ten, and unknown
# symbols, which take the simulator's generic style.
ODD = Instrument("ODD", price_scale=0, size_scale=3, price_increment=7, size_increment=3)
TINY = Instrument("TINY", price_scale=0, size_scale=0)
TICKY = Instrument("TICKY", price_scale=4, size_scale=2, price_increment=5, size_increment=25)


def assert_healthy(sim: MarketSimulator, market: Market) -> None:
    """Every book valid, uncrossed, two-sided, and identical to the simulator's."""
    for inst in sim.instruments:
        book = market.get(inst.symbol).book
        book.check(inst.price_increment, inst.size_increment)
        assert book.bid_count() > 0 and book.ask_count() > 0, inst.symbol
        assert book.best_bid()[0] < book.best_ask()[0], inst.symbol
        assert not book.crossed()
        assert book.bids()[-1][0] > 0, "a bid price reached zero"
        model = sim.book(inst.symbol)
        assert model.bids() == book.bids(), inst.symbol
        assert model.asks() == book.asks(), inst.symbol


def assert_update_shape(update: BookUpdate, symbols: set[str], now_ns: int) -> None:
    assert update.symbol in symbols
    assert not update.replace
    assert update.event_time_ns == now_ns
    assert 1 <= len(update.bids) + len(update.asks) <= 4
    for side in (update.bids, update.asks):
        prices = [p for p, _ in side]
        assert len(prices) == len(set(prices)), "a price twice on one side"


def drive(sim: MarketSimulator, sizes: list[int], t0: int = 1_000) -> Market:
    """Feed the initial batch and then one batch per size, checking after each."""
    market = Market(epoch=1)
    market.apply(sim.initial_batch(t0))
    assert_healthy(sim, market)
    symbols = {i.symbol for i in sim.instruments}
    for k, n in enumerate(sizes):
        now = t0 + (k + 1) * 1_000_000
        batch = sim.next_batch(now, n)
        assert batch.instruments == ()
        assert len(batch.updates) == n
        for u in batch.updates:
            assert_update_shape(u, symbols, now)
        market.apply(batch, now)
        assert_healthy(sim, market)
    return market


def mid2(book: Book) -> int:
    """Twice the mid price, to stay in integers."""
    return book.best_bid()[0] + book.best_ask()[0]


# Definitions ---------------------------------------------------------------------


def test_default_instruments_are_the_documented_ones() -> None:
    expected = {
        # symbol: (price_scale, size_scale, price_increment, size_increment)
        "BTC-USD": (2, 8, 1, 1),
        "ETH-USD": (2, 8, 1, 1000),
        "AAPL": (2, 0, 1, 1),
        "EUR-USD": (5, 0, 1, 1000),
        "ESZ6": (2, 0, 25, 1),
    }
    assert isinstance(DEFAULT_INSTRUMENTS, tuple)
    got = {i.symbol: (i.price_scale, i.size_scale, i.price_increment, i.size_increment) for i in DEFAULT_INSTRUMENTS}
    assert got == expected
    assert {i.venue for i in DEFAULT_INSTRUMENTS} == {"simulator"}
    btc = DEFAULT_INSTRUMENTS[0]
    assert (btc.base, btc.quote) == ("BTC", "USD")
    with pytest.raises(dataclasses.FrozenInstanceError):
        btc.price_scale = 3  # type: ignore[misc]


def test_initial_batch_defines_and_fills_every_book() -> None:
    sim = MarketSimulator(random.Random(1))
    assert sim.instruments == DEFAULT_INSTRUMENTS
    batch = sim.initial_batch(now_ns=42)
    assert isinstance(batch, FeedBatch)
    assert batch.instruments == DEFAULT_INSTRUMENTS
    assert [u.symbol for u in batch.updates] == [i.symbol for i in DEFAULT_INSTRUMENTS]
    for u in batch.updates:
        assert u.replace and u.event_time_ns == 42
        assert len(u.bids) == len(u.asks) == 50
    market = Market(epoch=1)
    result = market.apply(batch)
    assert len(result.new_instruments) == len(DEFAULT_INSTRUMENTS)
    assert_healthy(sim, market)


@pytest.mark.parametrize(
    ("symbol", "mid"),
    [
        ("BTC-USD", "60000"),
        ("ETH-USD", "3000"),
        ("AAPL", "190"),
        ("EUR-USD", "1.08"),
        ("ESZ6", "5000"),
    ],
)
def test_initial_prices_start_near_the_documented_mid(symbol: str, mid: str) -> None:
    sim = MarketSimulator(random.Random(3))
    inst = next(i for i in sim.instruments if i.symbol == symbol)
    target = inst.price_ticks(mid)
    got = mid2(sim.book(symbol))
    assert abs(got - 2 * target) * 1000 <= 2 * target  # within 0.1%


def test_levels_sets_the_initial_depth() -> None:
    sim = MarketSimulator(random.Random(5), levels=7)
    for u in sim.initial_batch().updates:
        assert len(u.bids) == len(u.asks) == 7


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError):
        MarketSimulator(random.Random(0), levels=0)
    with pytest.raises(ValueError):
        MarketSimulator(random.Random(0), instruments=())
    with pytest.raises(ValueError):
        MarketSimulator(random.Random(0), instruments=(TINY, TINY))
    with pytest.raises(ValueError):
        MarketSimulator(random.Random(0)).next_batch(0, -1)


# Determinism and purity ----------------------------------------------------------


def batches(seed: int, n: int = 30) -> list[FeedBatch]:
    sim = MarketSimulator(random.Random(seed))
    out = [sim.initial_batch(0)]
    out.extend(sim.next_batch(k, 25) for k in range(1, n))
    return out


def test_same_seed_gives_the_same_stream() -> None:
    assert batches(1234) == batches(1234)


def test_different_seeds_give_different_streams() -> None:
    a, b = batches(1), batches(2)
    assert a[0] != b[0]
    assert a[1:] != b[1:]


def test_randomness_and_time_come_only_from_the_arguments(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("the simulator must use only the injected rng and time")

    for name in ("random", "randrange", "randint", "choice", "choices", "getrandbits", "shuffle"):
        monkeypatch.setattr(random, name, forbidden)
    for name in ("time", "time_ns", "monotonic", "monotonic_ns"):
        monkeypatch.setattr(time, name, forbidden)
    sim = MarketSimulator(random.Random(9), levels=10)
    sim.initial_batch()
    for k in range(20):
        sim.next_batch(k, 50)


def test_empty_batch_and_increasing_batch_ids() -> None:
    sim = MarketSimulator(random.Random(11))
    first = sim.initial_batch()
    empty = sim.next_batch(5, 0)
    later = sim.next_batch(6, 3)
    assert empty.updates == () and empty.instruments == ()
    assert first.batch_id < empty.batch_id < later.batch_id


# Coherence with the core ---------------------------------------------------------


def test_market_follows_the_model_through_many_batches() -> None:
    rng = random.Random(77)
    sizes = [rng.choice((1, 2, 5, 20, 60, 150)) for _ in range(150)]
    drive(MarketSimulator(random.Random(2024)), sizes)


def test_initial_batch_later_resynchronises_a_fresh_market() -> None:
    sim = MarketSimulator(random.Random(8))
    live = drive(sim, [100] * 20)
    fresh = Market(epoch=2)
    fresh.apply(sim.initial_batch(now_ns=99))
    for inst in sim.instruments:
        assert fresh.get(inst.symbol).book == live.get(inst.symbol).book


def test_custom_instruments_stay_on_their_grids() -> None:
    sim = MarketSimulator(random.Random(31), instruments=(ODD, TINY, TICKY), levels=20)
    drive(sim, [50] * 60)


def test_a_single_level_per_side_never_empties_a_side() -> None:
    sim = MarketSimulator(random.Random(4), levels=1)
    drive(sim, [40] * 100)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    seed=st.integers(0, 2**64 - 1),
    levels=st.integers(1, 12),
    instruments=st.sampled_from([DEFAULT_INSTRUMENTS, (ODD, TINY, TICKY), (TINY,)]),
    sizes=st.lists(st.integers(0, 60), min_size=1, max_size=15),
)
def test_any_seed_keeps_every_book_valid(
    seed: int, levels: int, instruments: tuple[Instrument, ...], sizes: list[int]
) -> None:
    drive(MarketSimulator(random.Random(seed), instruments, levels), sizes)


# Realism -------------------------------------------------------------------------


def test_prices_wander_but_stay_in_a_sane_band_over_20k_updates() -> None:
    sim = MarketSimulator(random.Random(20_000))
    market = Market(epoch=1)
    market.apply(sim.initial_batch())
    start = {i.symbol: mid2(sim.book(i.symbol)) for i in sim.instruments}
    seen: dict[str, set[int]] = {s: set() for s in start}
    spreads: dict[str, list[int]] = {s: [] for s in start}
    depths: dict[str, list[int]] = {s: [] for s in start}
    for k in range(200):
        market.apply(sim.next_batch(k, 100))
        for inst in sim.instruments:
            s = inst.symbol
            book = market.get(s).book
            m2 = mid2(book)
            seen[s].add(m2)
            spreads[s].append(book.best_ask()[0] - book.best_bid()[0])
            depths[s] += [book.bid_count(), book.ask_count()]
            # Every level, not just the top, within 10% of the start.
            lo, hi = book.bids()[-1][0], book.asks()[-1][0]
            assert 2 * lo * 10 >= start[s] * 9 and 2 * hi * 10 <= start[s] * 11, s
    for s, m0 in start.items():
        # The price moves (a frozen book is no demo) ...
        assert len(seen[s]) >= 5, s
        # ... the spread stays tight: median under 0.1% of the price ...
        assert statistics.median(spreads[s]) * 2 * 1000 <= m0, s
        # ... and depth stays about `levels` (50) per side.
        assert 25 <= statistics.mean(depths[s]) <= 100, s


def test_event_mix_looks_like_a_real_feed() -> None:
    """Classify each update against the book it applies to."""
    sim = MarketSimulator(random.Random(99))
    sim.initial_batch()
    books = {i.symbol: sim.book(i.symbol) for i in sim.instruments}
    kinds = ["grow", "new_level", "partial", "remove", "top_hit", "sweep", "inside", "deep", "near_top"]
    counts = dict.fromkeys(kinds, 0)
    total = 0
    for k in range(60):
        for u in sim.next_batch(k, 100).updates:
            total += 1
            book = books[u.symbol]
            for is_bid, levels in ((True, u.bids), (False, u.asks)):
                side = book.bids() if is_bid else book.asks()
                old = dict(side)
                index = {p: i for i, (p, _) in enumerate(side)}
                best = side[0][0]
                removed_top = 0
                for price, size in levels:
                    before = old.get(price, 0)
                    if size > before:
                        counts["grow"] += 1
                    if before == 0 and size:
                        counts["new_level"] += 1
                        inside = price > best if is_bid else price < best
                        counts["inside"] += inside
                    if 0 < size < before:
                        counts["partial"] += 1
                    if before and size == 0:
                        counts["remove"] += 1
                    i = index.get(price)
                    if i is not None:
                        counts["deep"] += i >= 20
                        counts["near_top"] += i < 5
                        if i < 3 and size < before:
                            removed_top += 1
                            counts["top_hit"] += i == 0
                counts["sweep"] += removed_top >= 2
                setter = book.set_bid if is_bid else book.set_ask
                for price, size in levels:
                    setter(price, size)
    for name, n in counts.items():
        assert n > 0, f"no {name} events in {total} updates"
    # Most activity is at the top of the book, as on real venues.
    assert counts["near_top"] > total // 3
    assert counts["deep"] < counts["near_top"]
    for inst in sim.instruments:
        assert books[inst.symbol] == sim.book(inst.symbol)


def test_level_sizes_are_skewed_with_a_long_tail() -> None:
    sim = MarketSimulator(random.Random(123))
    sim.next_batch(0, 5_000)
    for inst in sim.instruments:
        book = sim.book(inst.symbol)
        sizes = sorted(s for _, s in book.bids() + book.asks())
        median = sizes[len(sizes) // 2]
        assert statistics.mean(sizes) > median, inst.symbol  # right-skewed
        assert sizes[-1] >= 10 * median, inst.symbol  # occasional large orders
    # Where a lot is many increments (crypto), sizes are not all round numbers.
    btc = sim.book("BTC-USD")
    sizes = [s for _, s in btc.bids() + btc.asks()]
    assert len(set(sizes)) > len(sizes) * 9 // 10
    assert sum(s % 10**6 != 0 for s in sizes) > len(sizes) // 2
