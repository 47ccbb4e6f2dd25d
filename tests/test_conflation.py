"""Conflation: merged deltas rebuild exactly the book they stand for, from
the first merged delta's prev_seq or from any seq inside the interval; and
end to end, conflated subscribers over real sockets get fewer messages, each
continuing the last, with checksums matching, full book or top N."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orderbook.core.book import Book
from orderbook.core.conflation import Conflator
from orderbook.core.events import BookUpdate
from orderbook.core.follower import BookFollower
from orderbook.core.instrument import Instrument
from orderbook.core.sequencer import SequencedBook
from orderbook.wire import codec

from .harness import Publisher, Subscriber, instrument, serve_in_process, test_settings, update

pytestmark = pytest.mark.timeout(60)

levels = st.lists(st.tuples(st.integers(90, 110), st.integers(0, 5)), max_size=4)
updates = st.lists(st.tuples(levels, levels), min_size=1, max_size=30)


@settings(max_examples=300, deadline=None)
@given(updates, st.data())
def test_merged_delta_rebuilds_the_book_from_any_seq_inside(steps, data):
    sb = SequencedBook(Instrument("X", 0, 0), epoch=1)
    books = {0: Book()}
    deltas = []
    for bids, asks in steps:
        d = sb.apply(BookUpdate("X", tuple(bids), tuple(asks)))
        if d is not None:
            deltas.append(d)
            books[d.seq] = sb.book.copy()
    if not deltas:
        return
    start = data.draw(st.integers(0, len(deltas) - 1))
    c = Conflator("X")
    for d in deltas[start:]:
        c.add(d)
    assert c.count == len(deltas) - start
    merged = c.take()
    assert merged.seq == deltas[-1].seq and merged.checksum == deltas[-1].checksum
    # From the first merged delta's prev_seq, or any later seq a joiner holds.
    for held in [deltas[start].prev_seq] + [d.seq for d in deltas[start:-1]]:
        f = BookFollower("X")
        b = books[held]
        f.apply_snapshot(1, held, b.bids(), b.asks(), b.checksum())
        relabelled = c.peek() or merged
        f.apply_delta(1, merged.seq, held, merged.bids, merged.asks, merged.checksum)
        assert f.book == sb.book
        assert relabelled is merged or relabelled is None
    assert not c and c.take() is None


def test_a_delta_that_does_not_continue_is_refused():
    sb = SequencedBook(Instrument("X", 0, 0), epoch=1)
    d1 = sb.apply(BookUpdate("X", ((100, 1),)))
    sb.apply(BookUpdate("X", ((101, 1),)))
    d3 = sb.apply(BookUpdate("X", ((102, 1),)))
    c = Conflator("X")
    c.add(d1)
    with pytest.raises(ValueError, match="does not follow"):
        c.add(d3)


# ----------------------------------------------------------------------------- end to end


def level_update(i: int):
    # Moves the top of the book each time, and touches a deep level too.
    return update("S", bids=[(1000 + i % 7, 1 + i), (900 - i % 50, 1 + i % 3)], asks=[(1100 + i % 5, 2 + i)])


async def publish(pub: Publisher, n: int, start: int = 0, pause: float = 0.002) -> int:
    seq = 0
    for i in range(start, start + n):
        seq = (await pub.send(updates=[level_update(i)])).ack.positions[0].seq
        await asyncio.sleep(pause)  # spread over time, so intervals have something to merge
    return seq


@pytest.mark.parametrize("depth", [0, 10, 3])
async def test_conflated_subscriber_gets_fewer_messages_and_the_same_book(depth):
    async with serve_in_process(test_settings()) as srv, Publisher.connect(srv.feed_url) as pub:
        await pub.send([instrument("S")], [level_update(0)])
        async with Subscriber.connect(srv.url) as live, Subscriber.connect(srv.url) as slow:
            await live.subscribe("S", depth)
            await slow.send(codec.subscribe_message("S", depth, None, 7, interval_ms=100))
            await live.until(lambda: live.snapshots.get("S"))
            await slow.until(lambda: slow.snapshots.get("S"))
            assert slow.acks[0].interval_ms == 100 and live.acks[0].interval_ms == 0
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            last = await publish(pub, 200)
            elapsed = loop.time() - t0
            if depth == 0:
                await live.until_seq("S", last)
            await live.until(lambda: live.followers["S"].book == expected(srv, depth), timeout=5)
            await slow.until(lambda: slow.followers["S"].book == expected(srv, depth), timeout=5)
            # Every merged delta continued the previous one and matched its checksum
            # (the follower raises otherwise), and far fewer were sent.
            n_slow = len(slow.seen["S"])
            assert 1 <= n_slow <= elapsed / 0.1 + 3
            if depth == 0:
                assert [s for _, s in live.seen["S"]] == list(range(2, last + 1))
                assert n_slow < len(live.seen["S"]) / 5


def expected(srv, depth: int) -> Book:
    book = srv.hub.channels["S"].seqbook.book
    if not depth:
        return book
    top = Book()
    top.replace(book.bids(depth), book.asks(depth))
    return top


async def test_joining_and_resuming_mid_interval_continue_the_chain():
    async with serve_in_process(test_settings()) as srv, Publisher.connect(srv.feed_url) as pub:
        await pub.send([instrument("S")], [level_update(0)])
        async with Subscriber.connect(srv.url) as first:
            await first.send(codec.subscribe_message("S", 0, None, 1, interval_ms=300))
            await first.until(lambda: first.snapshots.get("S"))
            await publish(pub, 20, 1, pause=0)
            # Changes are pending in the group now; a second one joins, a third resumes.
            async with Subscriber.connect(srv.url) as joiner, Subscriber.connect(srv.url) as resumer:
                await joiner.send(codec.subscribe_message("S", 0, None, 2, interval_ms=300))
                # The resumer holds what `first` holds, as a client reconnecting would.
                held = first.followers["S"]
                copy = resumer.follower("S")
                copy.apply_snapshot(held.epoch, held.seq, held.book.bids(), held.book.asks(), held.book.checksum())
                await resumer.send(codec.subscribe_message("S", 0, held.resume_point(), 3, interval_ms=300))
                await joiner.until(lambda: joiner.snapshots.get("S"))
                last = await publish(pub, 20, 100, pause=0)
                for s in (first, joiner, resumer):
                    await s.until(lambda s=s: s.followers.get("S") and s.followers["S"].seq == last, timeout=5)
                    assert s.followers["S"].book == srv.hub.channels["S"].seqbook.book
                assert resumer.acks[0].start == codec.stream_pb2.START_RESUMED


async def test_conflated_heartbeat_states_the_seq_the_subscriber_holds():
    async with serve_in_process(test_settings(symbol_heartbeat=0.2)) as srv, Publisher.connect(srv.feed_url) as pub:
        await pub.send([instrument("S")], [level_update(0)])
        async with Subscriber.connect(srv.url) as sub:
            await sub.send(codec.subscribe_message("S", 0, None, 1, interval_ms=200))
            await sub.until(lambda: sub.snapshots.get("S"))
            last = await publish(pub, 10, 1, pause=0)
            # A heartbeat checked against the held seq raises on any mismatch.
            await sub.until(lambda: len(sub.heartbeats) >= 2, timeout=5)
            assert sub.heartbeats[-1].seq == last == sub.followers["S"].seq


async def test_an_interval_beyond_the_maximum_is_refused():
    async with serve_in_process(test_settings()) as srv, Publisher.connect(srv.feed_url) as pub:
        await pub.send([instrument("S")], [level_update(0)])
        async with Subscriber.connect(srv.url) as sub:
            await sub.send(codec.subscribe_message("S", 0, None, 5, interval_ms=60_001))
            await sub.until(lambda: sub.errors)
            assert sub.errors[0].code == codec.ErrorCode.ERROR_CODE_INVALID_ARGUMENT
            assert "interval_ms" in sub.errors[0].message and sub.errors[0].request_id == 5
            # The connection is fine: a valid subscription still works.
            await sub.send(codec.subscribe_message("S", 0, None, 6, interval_ms=1000))
            await sub.until(lambda: sub.snapshots.get("S"))


async def test_the_python_client_keeps_a_verified_conflated_book():
    from orderbook.client import OrderbookClient

    async with serve_in_process(test_settings()) as srv, Publisher.connect(srv.feed_url) as pub:
        await pub.send([instrument("S")], [level_update(0)])
        async with OrderbookClient(srv.url, ["S"], interval_ms=100, record=True) as client:
            await client.wait_synced(timeout=5)
            last = await publish(pub, 100)
            f = await client.wait_seq("S", last, timeout=5)
            assert f.book == srv.hub.channels["S"].seqbook.book
            assert (client.stats.resyncs, client.stats.gaps, client.stats.checksum_failures) == (0, 0, 0)
            assert len(client.seen_seqs["S"]) < 30  # 100 changes over ~0.5 s, merged
