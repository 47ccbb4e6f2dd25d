"""Several nodes on one (private, real) Redis serve the same books with the
same epoch, seqs and bytes; the sequencer role fails over without a gap."""

from __future__ import annotations

import asyncio

import pytest

from orderbook.wire import codec

from .harness import (
    FEED_TOKEN,
    Publisher,
    Subscriber,
    has_symbol,
    instrument,
    readyz,
    sequencer_of,
    start_server_process,
    until,
    update,
)
from .redis_harness import redis_factory, redis_proc  # noqa: F401

pytestmark = pytest.mark.timeout(120)


def start_node(tmp_path, redis_url: str, *extra: str):
    return start_server_process(tmp_path, "--redis", redis_url, "--feed-token", FEED_TOKEN, "--lease-ttl", "1", *extra)


async def delta_frames(sub: Subscriber, symbol: str, last_seq: int) -> list[bytes]:
    """The raw bytes of every Delta for `symbol` up to `last_seq`."""
    out = []
    while True:
        data = await asyncio.wait_for(sub.ws.recv(), 20)
        msg = codec.parse_server_message(data)
        if msg.WhichOneof("kind") == "delta" and msg.delta.symbol == symbol:
            out.append(data)
            if msg.delta.seq == last_seq:
                return out


async def test_nodes_serve_identical_epoch_seq_and_bytes(tmp_path, redis_proc):  # noqa: F811
    nodes = [start_node(tmp_path, redis_proc.url) for _ in range(3)]
    try:
        async with Publisher.connect(nodes[0].feed_url) as pub:
            reply = await pub.send([instrument("C")], [update("C", bids=[(100, 1)], asks=[(101, 1)])])
            assert reply.WhichOneof("kind") == "ack", reply
            await until(lambda: all(has_symbol(n.http, "C") for n in nodes))
            async with (
                Subscriber.connect(nodes[0].url) as s0,
                Subscriber.connect(nodes[1].url) as s1,
                Subscriber.connect(nodes[2].url) as s2,
            ):
                subs = [s0, s1, s2]
                for s in subs:
                    await s.subscribe("C")
                    await s.until(lambda s=s: s.snapshots.get("C"))
                assert len({s.followers["C"].epoch for s in subs}) == 1
                start = subs[0].followers["C"].seq
                for i in range(30):
                    await pub.send(updates=[update("C", bids=[(100 - i % 4, 2 + i)], asks=[(101 + i % 3, 1 + i)])])
                frames = [await delta_frames(s, "C", start + 30) for s in subs]
                assert frames[0] == frames[1] == frames[2]
                seqs = [codec.parse_server_message(f).delta.seq for f in frames[0]]
                assert seqs == list(range(start + 1, start + 31))
    finally:
        for n in nodes:
            n.stop()


async def test_sequencer_killed_under_load_standby_continues_without_loss(tmp_path, redis_proc):  # noqa: F811
    nodes = [start_node(tmp_path, redis_proc.url) for _ in range(3)]
    try:
        sequencer = await sequencer_of(nodes)
        survivors = [n for n in nodes if n is not sequencer]
        published = 0
        async with Publisher.connect(survivors[0].feed_url) as pub, Subscriber.connect(survivors[1].url) as sub:
            await pub.send([instrument("K")], [update("K", asks=[(10_000, 1)])])
            await until(lambda: has_symbol(survivors[1].http, "K"))
            await sub.subscribe("K")
            await sub.until(lambda: sub.snapshots.get("K"))
            for i in range(150):
                # One new bid level per update: every update is one change.
                reply = await pub.send(updates=[update("K", bids=[(1 + i, 1)])])
                assert reply.WhichOneof("kind") == "ack", reply
                published += 1
                if i == 50:
                    sequencer.kill()
                await asyncio.sleep(0.01)  # a steady publish rate
            await until(lambda: any(readyz(n.http).get("role") == "sequencer" for n in survivors))
            await sub.until(lambda: sub.followers["K"].book.bid_count() == published, timeout=30)
            seqs = [s for _, s in sub.seen["K"]]
            assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # no gap, no duplicate
            assert sub.followers["K"].seq == 1 + published
    finally:
        for n in nodes:
            n.kill()


async def test_late_node_starts_from_the_snapshot_of_a_trimmed_log(tmp_path, redis_proc):  # noqa: F811
    small = ("--snapshot-every", "20", "--log-retention", "5")
    first = start_node(tmp_path, redis_proc.url, *small)
    late = None
    try:
        async with Publisher.connect(first.feed_url) as pub:
            await pub.send([instrument("L")], [update("L", asks=[(500, 1)])])
            for i in range(100):
                reply = await pub.send(updates=[update("L", bids=[(100 + i % 7, 1 + i)])])
                assert reply.WhichOneof("kind") == "ack", reply
            await until(lambda: readyz(first.http).get("log_position", 0) >= 101, timeout=5)
            # The log was trimmed behind the snapshots: the start is gone.
            import redis

            r = redis.Redis.from_url(redis_proc.url)
            try:
                oldest = r.xrange("orderbook:log", count=1)[0][0]
                assert int(oldest.split(b"-")[0]) > 1
                assert r.get("orderbook:snapshot") is not None
            finally:
                r.close()
            late = start_node(tmp_path, redis_proc.url, *small)
            await until(lambda: readyz(late.http).get("caught_up") is True)
            for i in range(5):
                await pub.send(updates=[update("L", asks=[(501 + i, 2)])])
            async with Subscriber.connect(first.url) as a, Subscriber.connect(late.url) as b:
                for s in (a, b):
                    await s.subscribe("L")
                    await s.until_seq("L", 106)
                assert a.followers["L"].book == b.followers["L"].book
                assert a.followers["L"].epoch == b.followers["L"].epoch
    finally:
        first.stop()
        if late is not None:
            late.stop()


async def test_sequencer_paused_past_its_lease_is_fenced_and_rejoins_as_replica(tmp_path, redis_proc):  # noqa: F811
    import signal

    nodes = [start_node(tmp_path, redis_proc.url) for _ in range(2)]
    try:
        old = await sequencer_of(nodes)
        other = next(n for n in nodes if n is not old)
        async with Publisher.connect(other.feed_url) as pub, Subscriber.connect(other.url) as sub:
            await pub.send([instrument("P")], [update("P", asks=[(900, 1)])])
            await until(lambda: has_symbol(other.http, "P"))
            await sub.subscribe("P")
            await sub.until(lambda: sub.snapshots.get("P"))
            old.proc.send_signal(signal.SIGSTOP)
            try:
                # Published while the old sequencer is frozen past its lease.
                for i in range(40):
                    reply = await pub.send(updates=[update("P", bids=[(1 + i, 1)])])
                    assert reply.WhichOneof("kind") == "ack", reply
                await until(lambda: readyz(other.http).get("role") == "sequencer")
            finally:
                old.proc.send_signal(signal.SIGCONT)
            for i in range(40, 60):
                await pub.send(updates=[update("P", bids=[(1 + i, 1)])])
            await sub.until(lambda: sub.followers["P"].book.bid_count() == 60, timeout=30)
            # The woken node is fenced: it follows as a replica, in step.
            await until(
                lambda: (
                    readyz(old.http).get("role") == "replica"
                    and readyz(old.http).get("log_position") == readyz(other.http).get("log_position")
                )
            )
            seqs = [s for _, s in sub.seen["P"]]
            assert seqs == list(range(2, 62))
        async with Subscriber.connect(old.url) as again:
            await again.subscribe("P")
            await again.until_seq("P", 61)
            assert again.followers["P"].book == sub.followers["P"].book
    finally:
        for n in nodes:
            if n.proc.poll() is None:
                n.proc.send_signal(signal.SIGCONT)
            n.stop()
