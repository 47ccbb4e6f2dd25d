"""A batch of one update takes `Market.apply`'s short path (`apply_one`):
the same deltas, positions, owners and errors as the general path, under a
hypothesis schedule of valid and invalid updates, sources and limits."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orderbook.core.errors import OrderbookError
from orderbook.core.events import BookUpdate, FeedBatch
from orderbook.core.instrument import Instrument
from orderbook.core.market import FEED, FeedLimits, Market

pytestmark = pytest.mark.timeout(120)

INSTRUMENTS = {s: Instrument(s, price_scale=2, size_scale=4) for s in ("A", "B")}
SOURCES = (FEED, "simulator")

prices = st.one_of(st.integers(min_value=90, max_value=110), st.integers(min_value=-(2**70), max_value=2**70))
sizes = st.one_of(st.integers(min_value=0, max_value=9), st.integers(min_value=-3, max_value=2**70))
sides = st.lists(st.tuples(prices, sizes), max_size=6).map(tuple)
updates = st.builds(BookUpdate, symbol=st.sampled_from(("A", "B", "C")), bids=sides, asks=sides, replace=st.booleans())
steps = st.lists(st.tuples(updates, st.sampled_from(SOURCES), st.booleans()), max_size=40)
limits = st.builds(
    FeedLimits,
    max_levels_per_side=st.sampled_from((0, 3, 8)),
    max_batch_levels=st.sampled_from((0, 5, 100)),
)


def outcome(market: Market, batch: FeedBatch, source: str, takeover: bool):
    seen = []
    try:
        result = market.apply(batch, 7, seen.append, source, takeover)
    except OrderbookError as exc:
        return ("error", type(exc).__name__, str(exc))
    return ("ok", result.deltas, result.positions, tuple(seen))


@settings(max_examples=200, deadline=None)
@given(steps=steps, limits=limits)
def test_one_update_short_path_equals_the_general_path(steps, limits):
    short, general = Market(1, limits), Market(1, limits)
    for market in (short, general):
        for inst in INSTRUMENTS.values():
            market.define(inst)
    for update, source, takeover in steps:
        # Redefining a symbol with the same terms changes nothing, but a batch
        # with a definition takes the general path.
        again = INSTRUMENTS["A"] if update.symbol == "C" else INSTRUMENTS[update.symbol]
        want = outcome(general, FeedBatch(updates=(update,), instruments=(again,)), source, takeover)
        got = outcome(short, FeedBatch(updates=(update,)), source, takeover)
        assert got == want, update
        for symbol in INSTRUMENTS:
            a, b = short.get(symbol), general.get(symbol)
            assert (a.seq, a.book.bids(), a.book.asks()) == (b.seq, b.book.bids(), b.book.asks())
