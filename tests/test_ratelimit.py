"""The pure token bucket: never admits more than burst + rate * elapsed."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orderbook.core.ratelimit import KeyedBuckets, TokenBucket

steps = st.lists(
    st.tuples(st.floats(min_value=0, max_value=5, allow_nan=False), st.sampled_from([0.5, 1, 1, 2, 3])),
    min_size=1,
    max_size=200,
)


@settings(max_examples=300, deadline=None)
@given(
    rate=st.floats(min_value=0, max_value=1000, allow_nan=False),
    burst=st.floats(min_value=0.5, max_value=100, allow_nan=False),
    start=st.floats(min_value=-1e6, max_value=1e6, allow_nan=False),
    steps=steps,
)
def test_never_more_than_burst_plus_rate_times_elapsed(rate, burst, start, steps):
    b = TokenBucket(rate, burst, start)
    now, admitted = start, 0.0
    for dt, n in steps:
        now += dt
        if b.take(now, n):
            admitted += n
        assert admitted <= burst + rate * (now - start) + 1e-6 * (1 + admitted)
        assert 0 <= b.tokens(now) <= burst


@settings(max_examples=200, deadline=None)
@given(
    rate=st.floats(min_value=0.01, max_value=1000, allow_nan=False),
    burst=st.floats(min_value=1, max_value=100, allow_nan=False),
    spent=st.floats(min_value=0, max_value=1, allow_nan=False),
    n=st.floats(min_value=0.1, max_value=1, allow_nan=False),
)
def test_wait_time_is_when_take_succeeds(rate, burst, spent, n):
    b = TokenBucket(rate, burst, 0.0)
    b.take(0.0, burst * spent)
    w = b.wait_time(0.0, n)
    assert w >= 0
    if w > 0:
        assert not b.take(0.0, n)
    assert b.take(w * (1 + 1e-9) + 1e-9, n)


def test_basics():
    b = TokenBucket(rate=2, burst=3, now=10.0)
    assert [b.take(10.0) for _ in range(4)] == [True, True, True, False]
    assert b.wait_time(10.0) == pytest.approx(0.5)
    assert not b.take(10.4)
    assert b.take(10.5)
    assert b.wait_time(10.5, 4) == math.inf  # more than the burst
    assert TokenBucket(0, 1, 0).wait_time(0, 1) == 0
    z = TokenBucket(0, 1, 0)
    z.take(0)
    assert z.wait_time(100) == math.inf
    # A clock going backwards counts as the last time seen.
    assert not b.take(5.0, 2)
    with pytest.raises(ValueError):
        TokenBucket(1, 0, 0)
    with pytest.raises(ValueError):
        TokenBucket(-1, 1, 0)


def test_keyed_buckets_are_independent_and_forgotten_when_full():
    kb = KeyedBuckets(rate=1, burst=2)
    assert kb.take("a", 0) and kb.take("a", 0) and not kb.take("a", 0)
    assert kb.take("b", 0)
    assert kb.wait_time("a", 0) == pytest.approx(1)
    assert kb.wait_time("c", 0) == 0
    kb.sweep(100)
    assert len(kb) == 0
