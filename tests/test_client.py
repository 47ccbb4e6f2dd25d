"""OrderbookClient against real servers over real sockets: books equal the
server's, reconnect and resume after a drop, fresh snapshots after a restart,
jittered backoff, in-band resync on a broken stream, refusals, heartbeats and
depth-limited books."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import socket
import urllib.request

import pytest
from websockets.asyncio.server import serve
from websockets.typing import Subprotocol

from orderbook.client import (
    Backoff,
    HandshakeRejected,
    OrderbookClient,
    SubscriptionRejected,
)
from orderbook.core.book import Book
from orderbook.core.events import Delta, Snapshot
from orderbook.core.instrument import Instrument
from orderbook.core.resume import SnapshotReason
from orderbook.wire import codec
from orderbook.wire.codec import Encoding, ErrorCode

from .harness import (
    FEED_TOKEN,
    FixedDelay,
    Publisher,
    instrument,
    serve_in_process,
    start_server_process,
    test_settings,
    update,
)

pytestmark = pytest.mark.timeout(60)


# ----------------------------------------------------------------------------- helpers


def quick_backoff(seed: int = 0) -> Backoff:
    return Backoff(base=0.02, cap=0.1, rng=random.Random(seed))


async def eventually(pred, timeout: float = 10.0, what: str = "condition") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not pred():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)  # polling a condition, bounded by the deadline


def server_state(srv, symbol: str):
    sb = srv.hub.channels[symbol].seqbook
    return sb.book, sb.epoch, sb.seq


def initial_levels(symbol: str):
    return update(symbol, bids=[(990 - i, 5 + i) for i in range(6)], asks=[(1010 + i, 7 + i) for i in range(6)])


def churn(rng: random.Random, symbols, i: int):
    """One batch changing every symbol: a size change that is never a no-op,
    plus a random insert or removal near the top. Bids < 1000 < asks."""
    out = []
    for s in symbols:
        bids = [(970 + i % 5, 1000 + i), (rng.randrange(980, 1000), rng.choice((0, 0, rng.randrange(1, 50))))]
        asks = [(rng.randrange(1001, 1020), rng.choice((0, rng.randrange(1, 50))))]
        out.append(update(s, bids=bids, asks=asks))
    return out


async def publish(pub, updates, instruments=()) -> None:
    reply = await pub.send(instruments, updates)
    assert reply.WhichOneof("kind") == "ack", reply


def _get_json(url: str):
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.load(r)


async def get_json(url: str):
    return await asyncio.to_thread(_get_json, url)


def seqs_are_consecutive(seen, epoch: int, first: int, last: int) -> bool:
    return seen == [(epoch, q) for q in range(first, last + 1)]


# ----------------------------------------------------------------------------- 1. books


@pytest.mark.parametrize("encoding", ["proto", "json"])
async def test_books_equal_the_servers_after_a_burst(encoding):
    symbols = ["A", "B", "C"]
    async with serve_in_process() as srv, Publisher.connect(srv.feed_url) as pub:
        await publish(pub, [initial_levels(s) for s in symbols], [instrument(s) for s in symbols])
        async with OrderbookClient(srv.url, symbols, encoding=encoding, record=True, backoff=quick_backoff()) as client:
            await client.wait_synced(timeout=5)
            # The server really speaks the requested encoding to this client.
            (conn,) = srv.hub.connections
            assert conn.encoding is (Encoding.JSON if encoding == "json" else Encoding.PROTOBUF)
            rng = random.Random(1)
            for i in range(40):
                await publish(pub, churn(rng, symbols, i))
            for s in symbols:
                book, epoch, seq = server_state(srv, s)
                f = await client.wait_seq(s, seq, timeout=5)
                assert (f.epoch, f.seq, f.synced) == (epoch, seq, True)
                assert f.book == book
                assert seqs_are_consecutive(client.seen_seqs[s], epoch, 2, seq)
            st = client.stats
            assert (st.snapshots, st.resyncs, st.connects, st.malformed) == (3, 0, 1, 0)
            assert st.deltas == sum(len(client.seen_seqs[s]) for s in symbols)


# ----------------------------------------------------------------------------- 2. drop and resume


async def test_server_side_drop_reconnects_and_resumes_without_gap():
    symbols = ["A", "B", "C"]
    async with serve_in_process() as srv, Publisher.connect(srv.feed_url) as pub:
        await publish(pub, [initial_levels(s) for s in symbols], [instrument(s) for s in symbols])
        resumed = {}

        def on_update(symbol, follower, kind):
            if kind == "resumed":
                # What the client held vs. what the server had published by then.
                resumed[symbol] = (follower.seq, srv.hub.channels[symbol].seqbook.seq)

        # A fixed reconnect delay guarantees updates are published while away.
        async with OrderbookClient(
            srv.url, symbols, record=True, backoff=FixedDelay(0.2), on_update=on_update
        ) as client:
            await client.wait_synced(timeout=5)
            stop = asyncio.Event()
            rng = random.Random(2)

            async def pump():
                i = 0
                while not stop.is_set():
                    await publish(pub, churn(rng, symbols, i))
                    i += 1
                    await asyncio.sleep(0.002)  # pacing the publisher, not waiting on a condition

            pumping = asyncio.create_task(pump())
            try:
                await client.wait_seq("A", 10, timeout=5)
                assert len(srv.hub.connections) == 1
                for conn in list(srv.hub.connections):
                    conn.transport.abort()  # no close frame: the TCP connection just ends
                await eventually(lambda: client.stats.resumes >= len(symbols), 10, "resumes")
                after = srv.hub.channels["A"].seqbook.seq
                await eventually(lambda: srv.hub.channels["A"].seqbook.seq >= after + 5, 10, "more updates")
            finally:
                stop.set()
                await pumping
            for s in symbols:
                book, epoch, seq = server_state(srv, s)
                f = await client.wait_seq(s, seq, timeout=5)
                assert f.book == book
                assert client.snapshot_counts[s] == 1  # resumed, not re-snapshotted
                (snap,) = client.snapshot_seqs[s]
                assert seqs_are_consecutive(client.seen_seqs[s], epoch, snap[1] + 1, seq)
                held, published = resumed[s]
                assert published > held, "nothing was missed: the resume replayed no deltas"
            st = client.stats
            assert st.reconnects == 1 and st.connects == 2
            assert st.resumes == len(symbols)
            assert (st.resyncs, st.gaps, st.duplicates, st.checksum_failures) == (0, 0, 0, 0)
            assert len(srv.hub.connections) == 1


# ----------------------------------------------------------------------------- 3. restart


async def test_server_restart_reconnects_with_backoff_and_takes_fresh_snapshots(tmp_path):
    # The built-in simulator (rate 0: it only defines the symbols and their
    # first book) makes AAPL exist the moment the server accepts connections,
    # so a reconnect cannot race the feed's republishing. The publisher takes
    # AAPL over from the simulator (one source per book), with a full book first.
    args = (
        "--feed-token",
        FEED_TOKEN,
        "--simulator-rate",
        "0",
        "--seed",
        "11",
        "--heartbeat",
        "3600",
        "--allow-takeover",
    )
    symbol = "AAPL"
    loop = asyncio.get_running_loop()

    async def publish_some(feed_url: str, start: int, n: int) -> int:
        async with Publisher.connect(feed_url) as pub:
            for i in range(start, start + n):
                # The first replaces the simulated book; the rest change it, never crossed.
                u = update(symbol, bids=[(18000 + i % 3, 1 + i)], asks=[(20000 + i % 4, 1 + i)], replace=i == start)
                reply = await pub.send(updates=[u])
                assert reply.WhichOneof("kind") == "ack", reply
        return reply.ack.positions[0].seq

    first = await asyncio.to_thread(start_server_process, tmp_path, *args)
    second = None
    try:
        async with OrderbookClient(
            first.url, [symbol], record=True, backoff=Backoff(0.05, 0.25, rng=random.Random(3))
        ) as client:
            await client.wait_synced(timeout=10)
            seq = await publish_some(first.feed_url, 0, 5)
            old_epoch = (await client.wait_seq(symbol, seq, timeout=5)).epoch

            await asyncio.to_thread(first.kill)
            down_at = loop.time()
            second = await asyncio.to_thread(start_server_process, tmp_path, *args, port=first.port)
            new_epoch = int((await get_json(second.http + "/healthz"))["epoch"])
            assert new_epoch != old_epoch
            await eventually(lambda: client.stats.reconnects >= 1, 10, "reconnect")
            down_for = loop.time() - down_at

            seq2 = await publish_some(second.feed_url, 100, 7)
            f = await client.wait_seq(symbol, seq2, epoch=new_epoch, timeout=10)
            server = await get_json(second.http + f"/book/{symbol}?depth=0")
            inst = f.instrument
            assert (int(server["epoch"]), server["seq"]) == (f.epoch, f.seq) == (new_epoch, seq2)
            assert [[inst.format_price(p), inst.format_size(s)] for p, s in f.book.bids()] == server["bids"]
            assert [[inst.format_price(p), inst.format_size(s)] for p, s in f.book.asks()] == server["asks"]
            assert server["checksum"] == f.book.checksum()

            st = client.stats
            assert st.reconnects == 1 and st.connects == 2
            # It retried while the server was down, but spaced out, not in a loop.
            assert 1 <= st.connect_failures <= 10 + down_for / 0.02
            # A new epoch cannot be resumed: a fresh snapshot from the new server.
            assert st.resumes == 0 and st.snapshots == 2
            assert client.snapshot_counts[symbol] == 2
            snap_epoch, snap_seq = client.snapshot_seqs[symbol][-1]
            assert snap_epoch == new_epoch
            new_seen = [x for x in client.seen_seqs[symbol] if x[0] == new_epoch]
            assert seqs_are_consecutive(new_seen, new_epoch, snap_seq + 1, seq2)
            assert (st.resyncs, st.gaps, st.epoch_changes) == (0, 0, 0)
    finally:
        await asyncio.to_thread(first.kill)
        if second is not None:
            await asyncio.to_thread(second.stop)


# ----------------------------------------------------------------------------- 4. backoff


async def test_reconnect_attempts_to_a_dead_server_are_spread_by_jitter():
    n, base, cap = 20, 0.4, 0.8
    with socket.socket() as s:  # a port nobody listens on: connections are refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"ws://127.0.0.1:{port}/ws"
    # The delays each client will draw, from generators seeded the same way.
    drawn = []
    for i in range(n):
        b = Backoff(base, cap, rng=random.Random(i))
        drawn.append([b.next_delay() for _ in range(50)])

    def attempts_possible(i: int, elapsed: float) -> int:
        """Upper bound on attempts by `elapsed`: each retry waits its delay."""
        total, k = 0.0, 1
        for d in drawn[i]:
            total += d
            if total > elapsed:
                break
            k += 1
        return k

    loop = asyncio.get_running_loop()
    clients = [
        OrderbookClient(url, ["X"], backoff=Backoff(base, cap, rng=random.Random(i)), open_timeout=2) for i in range(n)
    ]
    retried_at: list[float | None] = [None] * n
    async with contextlib.AsyncExitStack() as stack:
        t0 = loop.time()
        for c in clients:
            await stack.enter_async_context(c)
        while any(r is None for r in retried_at):
            elapsed = loop.time() - t0
            assert elapsed < 4.0, f"not every client retried: {retried_at}"
            for i, c in enumerate(clients):
                assert c.stats.connect_failures <= attempts_possible(i, elapsed), "retrying faster than its backoff"
                if retried_at[i] is None and c.stats.connect_failures >= 2:
                    retried_at[i] = elapsed
            await asyncio.sleep(0.005)  # polling the counters, bounded by the 4 s check
    first_retry = [r for r in retried_at if r is not None]
    for i, r in enumerate(retried_at):
        assert r is not None
        # Never sooner than the drawn delay (observation can only be later).
        assert r >= drawn[i][0] - 0.005
        assert r <= drawn[i][0] + 2.0
    assert all(c.stats.connects == 0 for c in clients)
    # No thundering herd: the retries are spread over the jitter window.
    assert max(first_retry) - min(first_retry) > base / 4
    assert len({int(r / 0.05) for r in first_retry}) >= 4


async def test_clients_dropped_together_do_not_reconnect_together():
    # A server dropping everyone at once (a restart, a proxy failing) is the
    # herd case: even the first reconnect after a good session is jittered.
    n, base = 10, 0.4
    drawn = [Backoff(base, 1.0, rng=random.Random(i)).next_delay() for i in range(n)]
    loop = asyncio.get_running_loop()
    async with serve_in_process() as srv, Publisher.connect(srv.feed_url) as pub:
        await publish(pub, [initial_levels("A")], [instrument("A")])
        async with contextlib.AsyncExitStack() as stack:
            clients = []
            for i in range(n):
                c = OrderbookClient(srv.url, ["A"], backoff=Backoff(base, 1.0, rng=random.Random(i)))
                clients.append(await stack.enter_async_context(c))
            for c in clients:
                await c.wait_synced(timeout=5)
            assert len(srv.hub.connections) == n
            t0 = loop.time()
            for conn in list(srv.hub.connections):
                conn.transport.abort()
            back_at: list[float | None] = [None] * n
            while any(r is None for r in back_at):
                elapsed = loop.time() - t0
                assert elapsed < 4.0, f"not every client came back: {back_at}"
                for i, c in enumerate(clients):
                    if back_at[i] is None and c.stats.reconnects >= 1:
                        back_at[i] = elapsed
                await asyncio.sleep(0.005)  # polling the counters, bounded by the 4 s check
            for c in clients:
                await c.wait_synced(timeout=5)
                assert c.stats.resumes == 1 and c.stats.reconnects == 1
    for i, r in enumerate(back_at):
        assert r is not None and drawn[i] - 0.005 <= r <= drawn[i] + 2.0
    assert max(back_at) - min(back_at) > base / 4


# ----------------------------------------------------------------------------- 5. in-band resync


class ScriptedPeer:
    """A deliberately misbehaving server on a real socket: the test reads what
    the client sends and decides every reply."""

    def __init__(self) -> None:
        self.connections: list = []
        self.accepted: asyncio.Queue = asyncio.Queue()

    async def handler(self, ws) -> None:
        self.connections.append(ws)
        await self.accepted.put(ws)
        await ws.wait_closed()


async def recv_request(ws):
    data = await asyncio.wait_for(ws.recv(), 5)
    return codec.parse_client_message(data, Encoding.PROTOBUF)


async def test_in_band_resync_on_checksum_mismatch_and_gap_without_reconnecting():
    symbol, epoch = "X", 77
    inst = Instrument(symbol, 2, 4)
    model = Book()
    model.replace([(100, 5), (99, 3)], [(101, 4), (103, 2)])
    peer = ScriptedPeer()

    async def send(ws, msg) -> None:
        await ws.send(msg.SerializeToString())

    def delta(seq: int, prev: int, bids=(), asks=(), checksum: int | None = None):
        for p, s in bids:
            model.set_bid(p, s)
        for p, s in asks:
            model.set_ask(p, s)
        cs = model.checksum() if checksum is None else checksum
        return codec.delta_message(Delta(symbol, epoch, seq, prev, tuple(bids), tuple(asks), cs))

    async def answer_subscribe(ws, seq: int) -> None:
        req = await recv_request(ws)
        assert req.WhichOneof("kind") == "subscribe" and req.subscribe.symbol == symbol
        assert not req.subscribe.HasField("resume"), "a broken book must not be offered for resuming"
        rid = req.subscribe.request_id
        await send(ws, codec.subscribed_message(symbol, rid, False, SnapshotReason.NEW, epoch, seq, 0, inst))
        snap = Snapshot(symbol, epoch, seq, inst, tuple(model.bids()), tuple(model.asks()), model.checksum())
        await send(ws, codec.snapshot_message(snap))

    async def answer_resync(ws, seq: int) -> None:
        req = await recv_request(ws)
        assert req.WhichOneof("kind") == "unsubscribe" and req.unsubscribe.symbol == symbol
        await send(ws, codec.unsubscribed_message(symbol, req.unsubscribe.request_id))
        await answer_subscribe(ws, seq)

    sub_proto = [Subprotocol(codec.SUBPROTOCOL_PROTO)]
    async with serve(peer.handler, "127.0.0.1", 0, subprotocols=sub_proto) as server:
        port = server.sockets[0].getsockname()[1]
        async with OrderbookClient(f"ws://127.0.0.1:{port}/ws", [symbol], backoff=quick_backoff()) as client:
            ws = await asyncio.wait_for(peer.accepted.get(), 5)
            await answer_subscribe(ws, 10)
            await client.wait_seq(symbol, 10, timeout=5)
            await send(ws, delta(11, 10, bids=[(100, 6)]))
            await client.wait_seq(symbol, 11, timeout=5)

            # (a) A wrong checksum; the next delta was already in flight and
            # must be ignored, not trigger a second resync.
            await send(ws, delta(12, 11, asks=[(102, 1)], checksum=model.checksum() ^ 1))
            await send(ws, delta(13, 12, bids=[(98, 2)]))
            await answer_resync(ws, 13)
            f = await client.wait_seq(symbol, 13, timeout=5)
            assert f.book == model and f.synced
            st = client.stats
            assert (st.checksum_failures, st.gaps, st.resyncs) == (1, 0, 1)

            # (b) prev_seq skips 14.
            model.set_bid(97, 1)  # the change of the delta the client never gets
            await send(ws, delta(15, 14, asks=[(104, 3)]))
            await answer_resync(ws, 15)
            await client.wait_seq(symbol, 15, timeout=5)
            await send(ws, delta(16, 15, bids=[(100, 0)]))
            f = await client.wait_seq(symbol, 16, timeout=5)
            assert f.book == model and f.synced and client.is_live(symbol)

            assert (st.checksum_failures, st.gaps, st.resyncs) == (1, 1, 2)
            assert (st.connects, st.reconnects, st.connect_failures) == (1, 0, 0)
            assert len(peer.connections) == 1 and client.connected
            assert st.snapshots == 3


# ----------------------------------------------------------------------------- 6. errors


async def test_unknown_symbol_is_refused_while_other_symbols_keep_working():
    async with serve_in_process() as srv, Publisher.connect(srv.feed_url) as pub:
        await publish(pub, [initial_levels("A")], [instrument("A")])
        async with OrderbookClient(srv.url, ["A", "NOPE"], backoff=quick_backoff()) as client:
            with pytest.raises(SubscriptionRejected) as ei:
                await client.wait_synced(["NOPE"], timeout=5)
            assert ei.value.code == ErrorCode.ERROR_CODE_UNKNOWN_SYMBOL
            assert ei.value.symbol == "NOPE"
            assert client.symbols == ("A",) and "NOPE" in client.failed
            await client.wait_synced(timeout=5)
            rng = random.Random(6)
            for i in range(10):
                await publish(pub, churn(rng, ["A"], i))
            book, _, seq = server_state(srv, "A")
            f = await client.wait_seq("A", seq, timeout=5)
            assert f.book == book
            st = client.stats
            assert (st.errors, st.connects, st.resyncs) == (1, 1, 0)
            assert st.last_error is not None and st.last_error.code == ErrorCode.ERROR_CODE_UNKNOWN_SYMBOL


async def test_bad_token_fails_once_without_retrying_and_the_right_one_works():
    async with serve_in_process(test_settings(subscriber_token="s")) as srv, Publisher.connect(srv.feed_url) as pub:
        await publish(pub, [initial_levels("A")], [instrument("A")])
        for token in ("wrong", None):
            client = OrderbookClient(srv.url, ["A"], token=token, backoff=quick_backoff())
            try:
                with pytest.raises(HandshakeRejected) as ei:
                    await asyncio.wait_for(client.run(), 5)
            finally:
                await client.close()
            assert ei.value.status == 401
            assert (client.stats.connect_failures, client.stats.connects) == (1, 0)
            # Waiting on a client whose run() failed reports why.
            with pytest.raises(HandshakeRejected):
                await client.wait_synced(timeout=1)
            assert not srv.hub.connections
        async with OrderbookClient(srv.url, ["A"], token="s", backoff=quick_backoff()) as client:
            await client.wait_synced(timeout=5)
            assert client.stats.connect_failures == 0 and len(srv.hub.connections) == 1


# ----------------------------------------------------------------------------- 7. heartbeats


@pytest.mark.parametrize("depth", [0, 3])
async def test_heartbeats_on_a_quiet_symbol_cause_no_resync(depth):
    async with serve_in_process(test_settings(symbol_heartbeat=0.2)) as srv, Publisher.connect(srv.feed_url) as pub:
        await publish(pub, [initial_levels("Q")], [instrument("Q")])
        async with OrderbookClient(srv.url, ["Q"], depth=depth, record=True, backoff=quick_backoff()) as client:
            await client.wait_synced(timeout=5)
            # Changes at the top, then one deep in the book: a depth-limited
            # view skips that seq, so its heartbeats state the view's seq.
            await publish(pub, [update("Q", bids=[(990, 11)])])
            await publish(pub, [update("Q", asks=[(1010, 0)])])
            await publish(pub, [update("Q", bids=[(900, 3)])])
            if depth:
                target = srv.hub.channels["Q"].groups[depth].view.seq
                assert target < srv.hub.channels["Q"].seqbook.seq
            else:
                target = srv.hub.channels["Q"].seqbook.seq
            await client.wait_seq("Q", target, timeout=5)
            seen = client.stats.heartbeats
            await eventually(lambda: client.stats.heartbeats >= seen + 3, 5, "heartbeats")
            st = client.stats
            assert (st.resyncs, st.gaps, st.epoch_changes, st.duplicates) == (0, 0, 0, 0)
            assert client.snapshot_counts["Q"] == 1 and client.is_live("Q")
            book = srv.hub.channels["Q"].seqbook.book
            f = client.books["Q"]
            assert f.book.bids() == book.bids(depth) and f.book.asks() == book.asks(depth)


# ----------------------------------------------------------------------------- 8. depth-limited


async def test_depth_limited_book_tracks_the_servers_top_levels():
    symbol, depth = "D", 3
    async with serve_in_process() as srv, Publisher.connect(srv.feed_url) as pub:
        await publish(pub, [initial_levels(symbol)], [instrument(symbol)])
        async with OrderbookClient(srv.url, [symbol], depth=depth, record=True, backoff=quick_backoff()) as client:
            await client.wait_synced(timeout=5)
            assert client.books[symbol].depth == depth
            rng = random.Random(8)
            sb = srv.hub.channels[symbol].seqbook

            async def check() -> None:
                f = await client.wait_seq(symbol, srv.hub.channels[symbol].groups[depth].view.seq, timeout=5)
                assert f.book.bids() == sb.book.bids(depth)
                assert f.book.asks() == sb.book.asks(depth)

            for i in range(150):
                book = sb.book
                (bb, _), (ba, _) = book.best_bid(), book.best_ask()
                op = rng.randrange(5)
                if op == 0 and book.bid_count() > 2:
                    u = update(symbol, bids=[(bb, 0)])  # the best bid leaves
                elif op == 1 and book.ask_count() > 2:
                    u = update(symbol, asks=[(ba, 0)])  # the best ask leaves
                elif op == 2:
                    # A better level enters (or the best one changes size).
                    u = update(symbol, bids=[(min(bb + 1, 999), 1 + i)], asks=[(max(ba - 1, 1001), 2 + i)])
                elif op == 3 and book.bid_count() > 3 and book.ask_count() > 3:
                    # Remove the second level on both sides: the fourth moves up.
                    bids, asks = book.bids(2), book.asks(2)
                    u = update(symbol, bids=[(bids[-1][0], 0)], asks=[(asks[-1][0], 0)])
                else:
                    # Mostly below the top 3: the view sends nothing and its seq skips.
                    bid, ask = rng.randrange(940, 980), rng.randrange(1020, 1060)
                    u = update(symbol, bids=[(bid, 3 + i)], asks=[(ask, 4 + i)])
                await publish(pub, [u])
                if i % 30 == 29:
                    await check()
            await check()
            st = client.stats
            assert (st.resyncs, st.gaps, st.checksum_failures) == (0, 0, 0)
            assert client.snapshot_counts[symbol] == 1
            assert len(client.books[symbol].book.bids()) <= depth
