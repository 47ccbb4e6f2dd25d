"""Backoff: bounds, growth, reset, and jitter that keeps clients apart."""

from __future__ import annotations

import itertools
import random
import statistics

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orderbook.client.backoff import Backoff


def test_ceiling_grows_by_factor_until_cap() -> None:
    b = Backoff(base=0.25, cap=30.0, factor=2.0)
    assert [b.ceiling(n) for n in range(9)] == [0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]


def test_ceiling_survives_huge_attempt_counts() -> None:
    # factor**attempt would overflow a float; the cap still applies.
    assert Backoff(base=0.25, cap=30.0).ceiling(100_000) == 30.0
    assert Backoff(base=1.0, cap=5.0, factor=1.0).ceiling(100_000) == 1.0


def test_delays_stay_within_bounds() -> None:
    b = Backoff(base=0.1, cap=2.0, rng=random.Random(1))
    for attempt in range(50):
        d = b.next_delay()
        assert 0.0 <= d <= min(2.0, 0.1 * 2**attempt)
    assert b.attempt == 50


def test_delays_grow_on_average() -> None:
    # Mean of uniform(0, c) is c/2: the windows double, so the means do too.
    means = []
    for attempt in range(5):
        delays = []
        for seed in range(400):
            b = Backoff(base=1.0, cap=100.0, rng=random.Random(seed))
            b.attempt = attempt
            delays.append(b.next_delay())
        means.append(statistics.fmean(delays))
    for lower, higher in itertools.pairwise(means):
        assert higher > 1.5 * lower


def test_reset_starts_over() -> None:
    b = Backoff(base=0.5, cap=60.0, rng=random.Random(3))
    for _ in range(10):
        b.next_delay()
    assert b.ceiling(b.attempt) == 60.0
    b.reset()
    assert b.attempt == 0
    assert b.next_delay() <= 0.5
    assert b.attempt == 1


def test_seeded_rng_is_deterministic() -> None:
    a = Backoff(rng=random.Random(42))
    b = Backoff(rng=random.Random(42))
    assert [a.next_delay() for _ in range(20)] == [b.next_delay() for _ in range(20)]


def test_does_not_touch_global_random_state() -> None:
    random.seed(5)
    expected = random.random()
    random.seed(5)
    Backoff(rng=random.Random(1)).next_delay()
    Backoff().next_delay()
    assert random.random() == expected


@pytest.mark.parametrize("attempt", [0, 3, 6, 10])
def test_jitter_spreads_many_clients_over_the_window(attempt: int) -> None:
    """1000 clients dropped at the same moment must not come back in lockstep:
    their delays for one attempt cover the whole window roughly evenly."""
    rng = random.Random(2024)
    delays = []
    for _ in range(1000):
        b = Backoff(base=0.25, cap=30.0, rng=random.Random(rng.getrandbits(64)))
        for _ in range(attempt):
            b.next_delay()
        delays.append(b.next_delay())
    ceiling = min(30.0, 0.25 * 2**attempt)
    assert all(0.0 <= d <= ceiling for d in delays)
    # No pile-up: almost all distinct, and every tenth of the window is used
    # by roughly a tenth of the clients (uniform: 100 expected, sd ~9.5).
    assert len(set(delays)) > 990
    buckets = [0] * 10
    for d in delays:
        buckets[min(int(d / ceiling * 10), 9)] += 1
    assert all(60 <= n <= 140 for n in buckets), buckets
    assert min(delays) < 0.05 * ceiling and max(delays) > 0.95 * ceiling


def test_zero_base_means_no_delay() -> None:
    b = Backoff(base=0.0, cap=10.0)
    assert [b.next_delay() for _ in range(5)] == [0.0] * 5


@pytest.mark.parametrize("kwargs", [{"base": -1.0}, {"cap": -1.0}, {"factor": 0.5}])
def test_rejects_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Backoff(**kwargs)


@given(
    base=st.floats(0.001, 10.0),
    cap=st.floats(0.001, 100.0),
    factor=st.floats(1.0, 10.0),
    seed=st.integers(0, 2**32),
    attempts=st.integers(1, 200),
)
def test_property_never_exceeds_cap_or_ceiling(
    base: float, cap: float, factor: float, seed: int, attempts: int
) -> None:
    b = Backoff(base=base, cap=cap, factor=factor, rng=random.Random(seed))
    previous_ceiling = 0.0
    for n in range(attempts):
        ceiling = b.ceiling(n)
        assert ceiling <= cap
        assert ceiling >= previous_ceiling  # never shrinks
        previous_ceiling = ceiling
        assert 0.0 <= b.next_delay() <= ceiling
