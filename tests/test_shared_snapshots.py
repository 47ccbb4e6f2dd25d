"""Subscribers that join at one seq share one encoded snapshot: the same
bytes, built once (its `time_ns` is when the first of them asked); a change
makes the next joiner's snapshot fresh. Each one still verifies."""

from __future__ import annotations

import asyncio

import pytest
import websockets

from orderbook.core.follower import BookFollower
from orderbook.wire import codec

from .harness import Publisher, instrument, serve_in_process, test_settings, update

pytestmark = pytest.mark.timeout(60)

LEVELS = 500


async def snapshot_frame(url: str, symbol: str, depth: int) -> bytes:
    """Subscribe on a fresh connection; the raw bytes of its snapshot, after
    checking them against the book they describe."""
    async with websockets.connect(url, max_size=None) as ws:
        await ws.send(codec.encode(codec.subscribe_message(symbol, depth, None, 1), codec.Encoding.PROTOBUF))
        while True:
            data = await asyncio.wait_for(ws.recv(), 10)
            msg = codec.parse_server_message(data)
            if msg.WhichOneof("kind") == "snapshot":
                s = codec.snapshot_from_pb(msg.snapshot)
                BookFollower(symbol).apply_snapshot(s.epoch, s.seq, s.bids, s.asks, s.checksum, s.instrument, s.depth)
                return data


async def test_joiners_at_one_seq_share_one_snapshot_and_a_change_makes_a_new_one():
    async with serve_in_process(test_settings()) as srv, Publisher.connect(srv.feed_url) as pub:
        bids = [(100_000 - i, 1 + i) for i in range(LEVELS)]
        asks = [(100_001 + i, 1 + i) for i in range(LEVELS)]
        reply = await pub.send([instrument("S")], [update("S", bids=bids, asks=asks)])
        assert reply.WhichOneof("kind") == "ack", reply

        for depth in (0, 10):
            frames = await asyncio.gather(*(snapshot_frame(srv.url, "S", depth) for _ in range(20)))
            assert len(set(frames)) == 1, f"depth {depth}: {len(set(frames))} different snapshots at one seq"
            snap = codec.parse_server_message(frames[0]).snapshot
            assert (snap.seq, snap.depth, len(snap.bids)) == (1, depth, depth or LEVELS)

        before = await snapshot_frame(srv.url, "S", 0)
        reply = await pub.send(updates=[update("S", bids=[(100_000, 77)])])
        assert reply.WhichOneof("kind") == "ack", reply
        after = await snapshot_frame(srv.url, "S", 0)
        old, new = (codec.parse_server_message(f).snapshot for f in (before, after))
        assert (old.seq, new.seq) == (1, 2)
        assert new.bids[0].size == 77
        assert new.time_ns >= old.time_ns
