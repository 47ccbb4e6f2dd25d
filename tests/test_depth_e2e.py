"""Depth-limited subscriptions on real data: Kraken's capture replayed into a
server while subscribers hold the top 10, 25, 100 and 500 levels (and the
full book), live or conflated. Every delta's checksum is verified on
arrival, and each client's book ends exactly the server's top N."""

from __future__ import annotations

import pytest

from orderbook.replay.files import open_records
from orderbook.replay.player import FeedSink, play
from orderbook.wire import codec

from .harness import FEED_TOKEN, Subscriber, serve_in_process, test_settings

pytestmark = pytest.mark.timeout(120)

PAIRS = ("XBT/CHF", "SC/EUR", "ADA/XBT")
DEPTHS = (10, 25, 100, 500, 0)


@pytest.mark.parametrize("interval_ms", [0, 50])
async def test_every_depth_tracks_the_servers_top_levels(shared_data, interval_ms):
    path = shared_data / "kraken-book-2021-04-17/KRAKEN.ws.50.0"
    records = list(open_records(path, "kraken"))
    definitions = [r for r in records if r.instruments]
    rest = [r for r in records if not r.instruments]
    async with serve_in_process(test_settings()) as srv:
        sink = await FeedSink.connect(srv.http, FEED_TOKEN)
        try:
            # The snapshots define the pairs; subscribers join, then the updates flow.
            await play(lambda: iter(definitions), sink, speed=0)
            subs = []
            for depth in DEPTHS:
                s = Subscriber(await _connect(srv.url))
                for pair in PAIRS:
                    await s.send(codec.subscribe_message(pair, depth, None, 0, interval_ms=interval_ms))
                subs.append((depth, s))
            for _, s in subs:
                await s.until(lambda s=s: all(s.snapshots.get(p) for p in PAIRS))
            sink = await FeedSink.connect(srv.http, FEED_TOKEN)
            await play(lambda: iter(rest), sink, speed=0)
        finally:
            await sink.close()
        hub = srv.hub
        for depth, s in subs:
            for pair in PAIRS:
                book = hub.channels[pair].seqbook.book

                def reached(s=s, pair=pair, depth=depth, book=book) -> bool:
                    f = s.followers[pair]
                    return f.book.bids() == book.bids(depth) and f.book.asks() == book.asks(depth)

                await s.until(reached, timeout=10)
                f = s.followers[pair]
                if depth:
                    # Never more than N levels: levels leaving the top were removed.
                    assert f.book.bid_count() <= depth and f.book.ask_count() <= depth
                assert f.synced and s.snapshots[pair] == 1  # no resync was needed
            await s.ws.close()
        top10 = sum(len(s.seen.get(p, [])) for d, s in subs if d == 10 for p in PAIRS)
        # Live, the capture moves levels in and out of the top 10 many times;
        # conflated, those changes arrive merged in a few messages.
        assert top10 > 100 if not interval_ms else 1 <= top10 < 100


async def _connect(url: str):
    import websockets

    return await websockets.connect(url, max_size=None)
