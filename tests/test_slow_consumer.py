"""A subscriber that stops reading never slows anyone else: it loses its
backlog, gets a fresh snapshot once it drains, and is closed only if it stays
stuck."""

from __future__ import annotations

import asyncio
import socket

import pytest
import websockets

from orderbook.wire import codec

from .harness import Publisher, Subscriber, instrument, serve_in_process, test_settings, update

pytestmark = pytest.mark.timeout(60)

WIDE = range(1000, 1100)


def churn(i: int):
    """One update changing 200 levels, so deltas are big and buffers fill fast
    (the kernel's socket buffers hold megabytes before the server's own grows)."""
    return update("S", bids=[(p - 2000, 1 + i) for p in WIDE], asks=[(p, 1 + i) for p in WIDE])


def churn_batch(i: int, n: int = 10):
    return [churn(i * n + k) for k in range(n)]


async def small_buffer_connection(url: str):
    """A client socket with a tiny receive buffer that never reads unless told."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    host, port = url.split("//")[1].split("/")[0].split(":")
    await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
    # max_queue=1: the library stops reading from the socket once one message waits.
    return await websockets.connect(url, sock=sock, max_queue=1, max_size=None)


async def test_slow_client_is_resynced_and_never_delays_the_fast_one():
    settings = test_settings(client_buffer_limit=64 * 1024, slow_client_timeout=60.0)
    async with serve_in_process(settings) as srv, Publisher.connect(srv.feed_url) as pub:
        await pub.send([instrument("S")], [churn(0)])
        ws = await small_buffer_connection(srv.url)
        slow = Subscriber(ws)
        async with Subscriber.connect(srv.url) as fast:
            await slow.subscribe("S")
            await fast.subscribe("S")
            await fast.until(lambda: fast.snapshots.get("S"))
            seq = 1
            lagging = lambda: any(c.lagging_since is not None for c in srv.hub.connections)  # noqa: E731
            for i in range(1, 2000):
                reply = await pub.send(updates=churn_batch(i))
                seq = reply.ack.positions[0].seq
                # The fast client is never held back by the slow one.
                await fast.until_seq("S", seq, timeout=5)
                if lagging() and i > 50:
                    break
            assert lagging(), "the slow client never went over its buffer limit"
            for i in range(20):
                seq = (await pub.send(updates=churn_batch(10_000 + i))).ack.positions[0].seq
                await fast.until_seq("S", seq, timeout=5)
            assert [s for _, s in fast.seen["S"]] == list(range(2, seq + 1))

            # The slow client now reads: it drains, then gets a fresh snapshot
            # and continues in sync with the server.
            await slow.until(lambda: slow.snapshots.get("S", 0) >= 2, timeout=30)
            last = (await pub.send(updates=[churn(20_000)])).ack.positions[0].seq
            await slow.until_seq("S", last, timeout=10)
            assert slow.followers["S"].book == srv.hub.channels["S"].seqbook.book
            assert srv.hub.stats_resyncs >= 1
            # It missed deltas rather than receiving them late: fewer than published.
            assert len(slow.seen["S"]) < last - 1
        await ws.close()


async def test_client_stuck_past_the_timeout_is_closed():
    settings = test_settings(client_buffer_limit=32 * 1024, slow_client_timeout=0.5)
    async with serve_in_process(settings) as srv, Publisher.connect(srv.feed_url) as pub:
        await pub.send([instrument("S")], [churn(0)])
        ws = await small_buffer_connection(srv.url)
        await ws.send(codec.subscribe_message("S").SerializeToString())
        async with Subscriber.connect(srv.url) as fast:
            await fast.subscribe("S")
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 30
            i = 0
            while len(srv.hub.connections) == 2:
                assert loop.time() < deadline, "stuck client was never closed"
                i += 1
                seq = (await pub.send(updates=churn_batch(i))).ack.positions[0].seq
                await fast.until_seq("S", seq, timeout=5)
            assert srv.hub.stats_slow_closed == 1
            # The well-behaved client is still served.
            seq = (await pub.send(updates=[churn(i + 1)])).ack.positions[0].seq
            await fast.until_seq("S", seq, timeout=5)
        # The stuck client learns why once it reads: 1013, or a dropped socket.
        with pytest.raises(websockets.ConnectionClosed) as info:
            while True:
                await asyncio.wait_for(ws.recv(), 10)
        rcvd = info.value.rcvd
        assert rcvd is None or rcvd.code == 1013
        await ws.close()


async def test_a_client_falling_behind_is_degraded_to_conflated_updates_before_any_drop():
    """Past half its buffer limit a client is moved to merged deltas (each
    continuing the last, so nothing is lost), and once it has drained it gets
    a fresh snapshot and every change live again; the fast client never notices."""
    settings = test_settings(client_buffer_limit=256 * 1024, slow_client_timeout=60.0, degrade_interval_ms=100)
    async with serve_in_process(settings) as srv, Publisher.connect(srv.feed_url) as pub:
        await pub.send([instrument("S")], [churn(0)])
        ws = await small_buffer_connection(srv.url)
        slow = Subscriber(ws)
        async with Subscriber.connect(srv.url) as fast:
            await slow.subscribe("S")
            await fast.subscribe("S")
            await fast.until(lambda: fast.snapshots.get("S"))
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 30
            i = 0
            # The server's own counter only decides when to stop publishing.
            while srv.hub.stats_degraded == 0:
                assert loop.time() < deadline, "the slow client was never degraded"
                i += 1
                seq = (await pub.send(updates=[churn(i)])).ack.positions[0].seq
                await fast.until_seq("S", seq, timeout=5)
                await asyncio.sleep(0.005)
            for k in range(30):  # several intervals' worth, now merged for the slow client
                seq = (await pub.send(updates=[churn(i + 1 + k)])).ack.positions[0].seq
                await fast.until_seq("S", seq, timeout=5)
                await asyncio.sleep(0.01)
            assert not any(c.lagging_since for c in srv.hub.connections), "dropped instead of degraded"

            # The slow client reads now: the queued live deltas, then merged
            # ones (seq jumping, prev_seq continuing), then a resync snapshot.
            order: list[tuple[str, int, int]] = []
            follower = slow.follower("S")
            while slow.snapshots.get("S", 0) < 2:
                msg = await slow.recv(timeout=10)
                if msg.WhichOneof("kind") == "delta":
                    order.append(("delta", msg.delta.prev_seq, msg.delta.seq))
                elif msg.WhichOneof("kind") == "snapshot":
                    order.append(("snapshot", 0, msg.snapshot.seq))
            merged = [(p, s) for kind, p, s in order if kind == "delta" and s - p > 1]
            assert merged, order[-10:]
            assert order[-1][0] == "snapshot"
            last = (await pub.send(updates=[churn(50_000)])).ack.positions[0].seq
            await slow.until_seq("S", last, timeout=10)
            assert follower.book == srv.hub.channels["S"].seqbook.book
            # Live again: the next change arrives on its own.
            assert slow.seen["S"][-1] == (slow.seen["S"][-1][0], last)
            await fast.until_seq("S", last, timeout=5)
            assert [s for _, s in fast.seen["S"]] == list(range(2, last + 1))
        await ws.close()
