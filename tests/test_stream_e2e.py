"""End to end over real sockets: snapshot, deltas, resume after an abrupt drop,
history exhausted, many symbols on one socket, the JSON encoding, publishing."""

from __future__ import annotations

import asyncio

import pytest

from orderbook.core.history import HistoryLimits
from orderbook.core.resume import ResumePoint
from orderbook.v1 import stream_pb2
from orderbook.wire import codec

from .harness import Publisher, Subscriber, eventually, instrument, serve_in_process, test_settings, update

pytestmark = pytest.mark.timeout(30)


def server_book(srv, symbol):
    sb = srv.hub.channels[symbol].seqbook
    return sb.book, sb.seq, sb.epoch


async def publish_steps(pub, symbol: str, n: int, start: int = 0) -> int:
    """n changes; returns the seq after them."""
    reply = None
    for i in range(start, start + n):
        reply = await pub.send(updates=[update(symbol, bids=[(1000 - i % 7, 10 + i)], asks=[(1010 + i % 5, 20 + i)])])
        assert reply.WhichOneof("kind") == "ack", reply
    return reply.ack.positions[0].seq


async def test_snapshot_then_deltas_match_server_book():
    async with serve_in_process() as srv, Publisher.connect(srv.feed_url) as pub:
        await pub.send([instrument("A")], [update("A", bids=[(990, 5)], asks=[(1011, 7)])])
        async with Subscriber.connect(srv.url) as sub:
            await sub.subscribe("A")
            await sub.until(lambda: sub.snapshots.get("A"))
            assert sub.acks[0].start == stream_pb2.START_SNAPSHOT
            assert sub.acks[0].reason == stream_pb2.SNAPSHOT_REASON_NEW
            seq = await publish_steps(pub, "A", 20)
            await sub.until_seq("A", seq)
            book, server_seq, epoch = server_book(srv, "A")
            f = sub.followers["A"]
            assert (f.book, f.seq, f.epoch) == (book, server_seq, epoch)
            assert [s for _, s in sub.seen["A"]] == list(range(2, seq + 1))


async def test_abrupt_drop_then_resume_gets_exactly_the_missed_deltas():
    async with serve_in_process() as srv, Publisher.connect(srv.feed_url) as pub:
        await pub.send([instrument("A")], [update("A", bids=[(990, 5)])])
        async with Subscriber.connect(srv.url) as sub:
            await sub.subscribe("A")
            seq = await publish_steps(pub, "A", 5)
            await sub.until_seq("A", seq)
            follower = sub.followers["A"]
            sub.abort()  # TCP gone, no close frame
        await eventually(lambda: not srv.hub.connections, 5, "the dropped connection gone")
        missed_to = await publish_steps(pub, "A", 12, start=5)
        async with Subscriber.connect(srv.url) as sub2:
            sub2.followers["A"] = follower  # the same local book, carried over
            await sub2.subscribe("A", resume=follower.resume_point())
            await sub2.until_seq("A", missed_to)
            ack = sub2.acks[0]
            assert ack.start == stream_pb2.START_RESUMED and ack.seq == seq
            assert sub2.snapshots.get("A") is None
            assert [s for _, s in sub2.seen["A"]] == list(range(seq + 1, missed_to + 1))
            assert follower.book == server_book(srv, "A")[0]


async def test_resume_after_history_exhausted_gets_a_snapshot():
    settings = test_settings(history=HistoryLimits(max_entries=3, max_bytes=1 << 20))
    async with serve_in_process(settings) as srv, Publisher.connect(srv.feed_url) as pub:
        await pub.send([instrument("A")], [update("A", bids=[(990, 5)])])
        async with Subscriber.connect(srv.url) as sub:
            await sub.subscribe("A")
            seq = await publish_steps(pub, "A", 2)
            await sub.until_seq("A", seq)
            point = sub.followers["A"].resume_point()
        last = await publish_steps(pub, "A", 10, start=2)
        async with Subscriber.connect(srv.url) as sub2:
            await sub2.subscribe("A", resume=point)
            await sub2.until_seq("A", last)
            ack = sub2.acks[0]
            assert ack.start == stream_pb2.START_SNAPSHOT
            assert ack.reason == stream_pb2.SNAPSHOT_REASON_HISTORY_EXHAUSTED
            assert sub2.snapshots["A"] == 1
            assert sub2.followers["A"].book == server_book(srv, "A")[0]


async def test_resume_point_ahead_of_server_gets_a_snapshot():
    async with serve_in_process() as srv, Publisher.connect(srv.feed_url) as pub:
        await pub.send([instrument("A")], [update("A", bids=[(990, 5)])])
        epoch = srv.hub.epoch
        async with Subscriber.connect(srv.url) as sub:
            await sub.subscribe("A", resume=ResumePoint(epoch, 99))
            await sub.until(lambda: sub.snapshots.get("A"))
            assert sub.acks[0].reason == stream_pb2.SNAPSHOT_REASON_AHEAD


async def test_many_symbols_on_one_socket_each_in_order():
    symbols = [f"S{i}" for i in range(12)]
    async with serve_in_process() as srv, Publisher.connect(srv.feed_url) as pub:
        await pub.send([instrument(s) for s in symbols], [update(s, bids=[(100, 1)]) for s in symbols])
        async with Subscriber.connect(srv.url) as sub:
            for s in symbols:
                await sub.subscribe(s)
            await sub.until(lambda: len(sub.snapshots) == len(symbols))
            for i in range(10):
                # One batch touching every symbol: interleaved on the socket.
                await pub.send(updates=[update(s, asks=[(200 + i, 1 + k)]) for k, s in enumerate(symbols)])
            for s in symbols:
                await sub.until_seq(s, 11)
                assert [q for _, q in sub.seen[s]] == list(range(2, 12))
                assert sub.followers[s].book == server_book(srv, s)[0]
            # Unsubscribing one symbol leaves the others flowing.
            await sub.send(codec.unsubscribe_message("S0", 77))
            await sub.until(lambda: "S0" not in _live(sub))
            await pub.send(updates=[update(s, asks=[(300, 1)]) for s in symbols])
            await sub.until_seq("S11", 12)
            assert sub.followers["S0"].seq == 11


def _live(sub) -> set[str]:
    """Symbols not yet acknowledged as unsubscribed (reads the raw acks)."""
    return set(sub.followers) - sub.unsubscribed


async def test_json_encoding_carries_the_same_stream():
    async with serve_in_process() as srv, Publisher.connect(srv.feed_url) as pub:
        await pub.send(
            [instrument("J", price_scale=2, size_scale=8)],
            [update("J", bids=[(6000001, 1)], asks=[(6000002, 123456789)])],
        )
        async with Subscriber.connect(srv.url, codec.Encoding.JSON) as js, Subscriber.connect(srv.url) as pb:
            assert js.ws.subprotocol == "orderbook.v1.json"
            assert pb.ws.subprotocol is None
            await js.subscribe("J")
            await pb.subscribe("J")
            seq = await publish_steps(pub, "J", 5)
            await js.until_seq("J", seq)
            await pb.until_seq("J", seq)
            assert js.followers["J"].book == pb.followers["J"].book == server_book(srv, "J")[0]
            assert js.seen == pb.seen
            # A raw frame is canonical JSON text with 64-bit values as strings.
            await publish_steps(pub, "J", 1, start=5)
            raw = await asyncio.wait_for(js.ws.recv(), 5)
            assert isinstance(raw, str) and '"prevSeq":"' in raw


async def test_feed_publishing_acks_positions_and_replace():
    async with serve_in_process() as srv, Publisher.connect(srv.feed_url) as pub:
        reply = await pub.send([instrument("F")], [update("F", bids=[(10, 1), (9, 2)], asks=[(11, 3)])])
        assert reply.ack.changes == 1
        assert (reply.ack.positions[0].symbol, reply.ack.positions[0].seq) == ("F", 1)
        assert reply.ack.positions[0].epoch == srv.hub.epoch
        # A no-op update consumes no seq.
        reply = await pub.send(updates=[update("F", bids=[(10, 1)])])
        assert reply.ack.changes == 0 and reply.ack.positions[0].seq == 1
        async with Subscriber.connect(srv.url) as sub:
            await sub.subscribe("F")
            await sub.until(lambda: sub.snapshots.get("F"))
            # replace: the subscriber receives the difference as one delta.
            reply = await pub.send(updates=[update("F", bids=[(9, 5)], asks=[(12, 1)], replace=True)])
            assert reply.ack.positions[0].seq == 2
            await sub.until_seq("F", 2)
            f = sub.followers["F"]
            assert f.book.bids() == [(9, 5)] and f.book.asks() == [(12, 1)]
