"""`orderbook serve --workers N`: N processes on one port (SO_REUSEPORT), all
serving the same sequenced stream, over real sockets and real processes.

Which worker a connection landed on: each connection first asks GET /healthz
(its "worker" is the pid that answered), then upgrades to a WebSocket on the
same connection, so the subscriber is known to be served by that pid.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import struct
import time
from collections.abc import AsyncIterator

import pytest
import websockets

from orderbook.core.events import FeedBatch
from orderbook.core.market import FeedLimits
from orderbook.replication.local import HELLO, LocalFollower, LocalSequencer, frame
from orderbook.v1 import stream_pb2
from orderbook.wire import codec

from .harness import (
    FEED_TOKEN,
    Publisher,
    ServerProcess,
    Subscriber,
    free_port,
    http_get,
    instrument,
    start_server_process,
    update,
)
from .redis_harness import redis_factory, redis_proc  # noqa: F401
from .test_replay_cli import final_books, same_book

pytestmark = pytest.mark.timeout(180)

# Connections tried to reach a given worker: the kernel spreads them by hash,
# so a worker out of N is missed by all of them with odds (1 - 1/N)**200.
TRIES = 200


def _request(sock: socket.socket, path: str) -> bytes:
    """GET `path` on a kept-alive connection; the body."""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: keep-alive\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError(f"closed before the answer to {path}")
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    length = next(
        int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += sock.recv(4096)
    return body


def _pinned(port: int) -> tuple[int, socket.socket]:
    """A connection to the node, and the pid of the worker that accepted it."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        pid = json.loads(_request(sock, "/healthz"))["worker"]
    except BaseException:
        sock.close()
        raise
    return int(pid), sock


async def worker_pids(port: int, want: int, timeout: float = 60.0) -> set[int]:
    """Connect until `want` distinct workers have answered."""
    seen: set[int] = set()
    deadline = time.monotonic() + timeout
    while len(seen) < want:
        if time.monotonic() > deadline:
            raise TimeoutError(f"saw workers {seen}, wanted {want}")
        try:
            pid, sock = await asyncio.to_thread(_pinned, port)
            sock.close()
            seen.add(pid)
        except OSError:
            await asyncio.sleep(0.05)  # polling while a worker starts, bounded by the deadline
    return seen


@contextlib.asynccontextmanager
async def on_worker(node: ServerProcess, want=None, avoid=(), feed: bool = False) -> AsyncIterator[tuple[int, object]]:
    """A Subscriber (or a Publisher with `feed`) on a worker whose pid is
    `want` (any, if None) and not in `avoid`."""
    for _ in range(TRIES):
        try:
            pid, sock = await asyncio.to_thread(_pinned, node.port)
        except OSError:
            # Reset: queued at a worker as it was killed. A client reconnects.
            await asyncio.sleep(0.05)
            continue
        if (want is None or pid == want) and pid not in avoid:
            break
        sock.close()
    else:
        raise AssertionError(f"no connection reached worker {want} (avoiding {avoid})")
    sock.setblocking(False)
    if feed:
        headers = {"Authorization": f"Bearer {FEED_TOKEN}"}
        async with websockets.connect(node.feed_url, sock=sock, additional_headers=headers, max_size=None) as ws:
            yield pid, Publisher(ws)
    else:
        async with websockets.connect(node.url, sock=sock, max_size=None) as ws:
            yield pid, Subscriber(ws)


async def delta_frames(sub: Subscriber, symbol: str, last_seq: int, timeout: float = 20) -> dict[int, bytes]:
    """The raw bytes of each Delta for `symbol` up to `last_seq`, by seq
    (each also applied to the subscriber's follower: a gap would raise)."""
    out: dict[int, bytes] = {}
    while True:
        data = await asyncio.wait_for(sub.ws.recv(), timeout)
        msg = codec.parse_server_message(data)
        kind = msg.WhichOneof("kind")
        if kind == "delta" and msg.delta.symbol == symbol:
            d = codec.delta_from_pb(msg.delta)
            sub.follower(symbol).apply_delta(d.epoch, d.seq, d.prev_seq, d.bids, d.asks, d.checksum)
            out[d.seq] = data
            if d.seq >= last_seq:
                return out
        elif kind == "snapshot":
            s = codec.snapshot_from_pb(msg.snapshot)
            sub.follower(s.symbol).apply_snapshot(s.epoch, s.seq, s.bids, s.asks, s.checksum, s.instrument, s.depth)


async def until_ready(node: ServerProcess, pid: int, timeout: float = 60.0) -> None:
    """Until worker `pid` answers /readyz with "ready"."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError):
            got, sock = await asyncio.to_thread(_pinned, node.port)
            try:
                if got == pid and json.loads(await asyncio.to_thread(_request, sock, "/readyz"))["status"] == "ready":
                    return
            finally:
                sock.close()
        assert time.monotonic() < deadline, f"worker {pid} not ready after {timeout} s"
        await asyncio.sleep(0.02)  # polling a condition, bounded by the deadline


def start_workers(tmp_path, n: int, *extra: str) -> ServerProcess:
    node = start_server_process(tmp_path, "--workers", str(n), "--feed-token", FEED_TOKEN, *extra)
    return node


def stop_and_check_workers_gone(node: ServerProcess, pids: set[int]) -> None:
    node.stop()
    assert node.proc.returncode == 0, node.log_path.read_text()[-3000:]
    deadline = time.monotonic() + 15
    for pid in pids:
        while _alive(pid):
            assert time.monotonic() < deadline, f"worker {pid} outlived its supervisor"
            time.sleep(0.05)  # polling the process table, bounded by the deadline


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie not reaped yet counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


async def identical_and_resumable(node: ServerProcess, workers: int, symbol: str) -> None:
    """Two subscribers on different workers see the same (epoch, seq, bytes);
    then one moves to another worker and resumes with no gap."""
    pids = await worker_pids(node.port, workers)
    first, second = sorted(pids)[:2]
    async with on_worker(node, want=first) as (_, a), on_worker(node, want=second) as (_, b):
        for s in (a, b):
            await s.subscribe(symbol)
            await s.until(lambda s=s: s.snapshots.get(symbol))
        assert a.followers[symbol].epoch == b.followers[symbol].epoch
        start = max(a.followers[symbol].seq, b.followers[symbol].seq)
        fa = await delta_frames(a, symbol, start + 20)
        fb = await delta_frames(b, symbol, start + 20)
        common = sorted(set(fa) & set(fb))
        assert len(common) >= 20
        assert [fa[s] for s in common] == [fb[s] for s in common]
        held = a.followers[symbol]
        point = held.resume_point()
    # `a` is gone: resume on a worker other than the one it was on.
    async with on_worker(node, avoid={first}) as (pid, c):
        assert pid != first
        c.followers[symbol] = held  # the book it holds goes on from the resume point
        await c.subscribe(symbol, resume=point)
        await c.until(lambda: c.acks)
        assert c.acks[0].start == stream_pb2.START_RESUMED, c.acks[0]
        got = await delta_frames(c, symbol, point.seq + 10)
        assert min(got) == point.seq + 1  # the next change after the one held: no gap
        assert not c.snapshots.get(symbol)


async def test_two_workers_identical_stream_and_resume_across_workers(tmp_path):
    node = start_workers(tmp_path, 2, "--simulator-rate", "400", "--seed", "7")
    pids: set[int] = set()
    try:
        pids = await worker_pids(node.port, 2)
        await identical_and_resumable(node, 2, "AAPL")
    finally:
        stop_and_check_workers_gone(node, pids)


async def test_feed_through_any_of_three_workers_is_sequenced_once(tmp_path):
    node = start_workers(tmp_path, 3, "--no-simulator")
    pids: set[int] = set()
    try:
        pids = await worker_pids(node.port, 3)
        ordered = sorted(pids)
        # A subscriber on every worker, to a symbol defined through the first.
        async with on_worker(node, want=ordered[0], feed=True) as (_, pub0):
            reply = await pub0.send([instrument("W")], [update("W", bids=[(100, 1)], asks=[(101, 1)])])
            assert reply.WhichOneof("kind") == "ack", reply
            async with contextlib.AsyncExitStack() as stack:
                subs = [(await stack.enter_async_context(on_worker(node, want=p)))[1] for p in ordered]
                for s in subs:
                    await s.subscribe("W")
                    await s.until(lambda s=s: s.snapshots.get("W"))
                start = subs[0].followers["W"].seq
                assert all(s.followers["W"].seq == start for s in subs)
                sent = 0
                for i, p in enumerate(ordered):
                    async with on_worker(node, want=p, feed=True) as (_, pub):
                        for j in range(5):
                            reply = await pub.send(updates=[update("W", bids=[(90 + i, 1 + j)], asks=[(110 + j, 1)])])
                            assert reply.WhichOneof("kind") == "ack", reply
                            assert reply.ack.changes == 1
                            sent += 1
                        # A bad batch gets the sequencer's own error, through this worker.
                        bad = await pub.send(updates=[update("NOPE", bids=[(1, 1)])])
                        assert bad.WhichOneof("kind") == "error"
                        assert "NOPE" in bad.error.message
                frames = [await delta_frames(s, "W", start + sent) for s in subs]
                # Each batch sequenced once: the same seqs, no gap or repeat, the same bytes everywhere.
                assert [sorted(f) for f in frames] == [list(range(start + 1, start + sent + 1))] * 3
                assert frames[0] == frames[1] == frames[2]
    finally:
        stop_and_check_workers_gone(node, pids)


async def test_a_publisher_on_a_worker_streams_batches_and_gets_every_reply_in_order(tmp_path):
    # The worker forwards each batch without waiting for the one before's
    # reply; the replies, and the refusals it decides itself, keep the order.
    node = start_workers(tmp_path, 2, "--no-simulator")
    pids: set[int] = set()
    try:
        pids = await worker_pids(node.port, 2)
        async with on_worker(node, feed=True) as (_, pub):
            reply = await pub.send([instrument("P")], [update("P", bids=[(100, 1)], asks=[(101, 1)])])
            assert reply.WhichOneof("kind") == "ack", reply
            sent: list[tuple[int, str]] = []  # (batch id the reply names, reply kind)
            for batch_id in range(1000, 1300):
                if batch_id % 50 == 7:  # refused by the sequencer
                    data = codec.feed_message(FeedBatch(batch_id, (), (update("NOPE", bids=[(90, 1)]),)))
                    sent.append((batch_id, "error"))
                elif batch_id % 50 == 23:  # refused by the worker itself: not a FeedMessage
                    await pub.ws.send(b"\xff\xff\xff")
                    sent.append((0, "error"))
                    continue
                else:
                    data = codec.feed_message(FeedBatch(batch_id, (), (update("P", bids=[(90, 1 + batch_id % 7)]),)))
                    sent.append((batch_id, "ack"))
                await pub.ws.send(data.SerializeToString())
            got = []
            for _ in sent:
                r = codec.parse_feed_reply(await asyncio.wait_for(pub.ws.recv(), 20))
                kind = r.WhichOneof("kind")
                got.append((r.ack.batch_id if kind == "ack" else r.error.request_id, kind))
            assert got == sent
    finally:
        stop_and_check_workers_gone(node, pids)


async def keep_publishing(pub: Publisher, symbol: str) -> None:
    for i in range(100_000):
        reply = await pub.send(updates=[update(symbol, bids=[(100 - i % 5, 1 + i)], asks=[(101 + i % 3, 1)])])
        assert reply.WhichOneof("kind") == "ack", reply
        await asyncio.sleep(0.002)  # a steady feed, not a timing assertion


@pytest.mark.parametrize("mode", ["embedded", "cluster"])
async def test_worker_killed_under_load_is_replaced_and_its_clients_resume_elsewhere(
    tmp_path,
    redis_factory,  # noqa: F811
    mode,
):
    if mode == "embedded":
        node = start_workers(tmp_path, 2, "--simulator-rate", "2000", "--seed", "3")
        symbol = "AAPL"
    else:
        node = start_workers(tmp_path, 2, "--redis", redis_factory().url, "--lease-ttl", "1")
        symbol = "K"
    pids: set[int] = set()
    try:
        pids = await worker_pids(node.port, 2)
        victim, other = sorted(pids)
        async with contextlib.AsyncExitStack() as stack:
            if mode == "cluster":
                # The load: a publisher on the worker that survives.
                _, pub = await stack.enter_async_context(on_worker(node, want=other, feed=True))
                reply = await pub.send([instrument(symbol)], [update(symbol, bids=[(99, 1)], asks=[(101, 1)])])
                assert reply.WhichOneof("kind") == "ack", reply
                feeding = asyncio.ensure_future(keep_publishing(pub, symbol))
                stack.callback(feeding.cancel)
            async with on_worker(node, want=victim) as (_, sub):
                while True:
                    await sub.subscribe(symbol)
                    await sub.until(lambda: sub.snapshots.get(symbol) or sub.errors)
                    if sub.snapshots.get(symbol):
                        break
                    sub.errors.clear()  # not in this worker's books yet
                    await asyncio.sleep(0.05)
                await delta_frames(sub, symbol, sub.followers[symbol].seq + 50)
                os.kill(victim, signal.SIGKILL)
                # Read what was sent before the kill, until the connection ends.
                with contextlib.suppress(websockets.ConnectionClosed, TimeoutError):
                    while True:
                        await delta_frames(sub, symbol, 2**62)
                held = sub.followers[symbol]
                point = held.resume_point()
            async with on_worker(node, avoid={victim}) as (_, again):
                again.followers[symbol] = held
                await again.subscribe(symbol, resume=point)
                await again.until(lambda: again.acks)
                assert again.acks[0].start == stream_pb2.START_RESUMED, again.acks[0]
                got = await delta_frames(again, symbol, point.seq + 50, timeout=30)
                assert min(got) == point.seq + 1
        # The supervisor replaced the killed worker: a new pid serves beside the survivor.
        now = await worker_pids(node.port, 2)
        assert other in now and victim not in now
        pids |= now
        (replacement,) = now - {other}
        await until_ready(node, replacement)
        assert "replacing it" in node.log_path.read_text()
    finally:
        stop_and_check_workers_gone(node, pids)


async def test_workers_in_cluster_mode_share_the_redis_log(tmp_path, redis_proc):  # noqa: F811
    node = start_workers(tmp_path, 2, "--redis", redis_proc.url, "--lease-ttl", "1")
    pids: set[int] = set()
    try:
        pids = await worker_pids(node.port, 2)
        first, second = sorted(pids)

        # Published through the first worker; a subscriber on each sees it.
        async with on_worker(node, want=first, feed=True) as (_, pub):
            reply = await pub.send([instrument("C")], [update("C", bids=[(100, 1)], asks=[(101, 1)])])
            assert reply.WhichOneof("kind") == "ack", reply
            feeding = asyncio.ensure_future(keep_publishing(pub, "C"))
            try:
                await identical_and_resumable(node, 2, "C")
            finally:
                feeding.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await feeding
        # And through the second.
        async with on_worker(node, want=second, feed=True) as (_, pub2), on_worker(node, want=first) as (_, sub):
            await sub.subscribe("C")
            await sub.until(lambda: sub.snapshots.get("C"))
            start = sub.followers["C"].seq
            reply = await pub2.send(updates=[update("C", bids=[(77, 7)])])
            assert reply.WhichOneof("kind") == "ack", reply
            got = await delta_frames(sub, "C", start + 1)
            assert sorted(got) == [start + 1]
    finally:
        stop_and_check_workers_gone(node, pids)


# ------------------------------------------------------------------ the local channel's bounds


@contextlib.asynccontextmanager
async def sequencer_on(tmp_path, **kw) -> AsyncIterator[tuple[LocalSequencer, str]]:
    seq = LocalSequencer(1234, FeedLimits(), **kw)
    path = str(tmp_path / "seq.sock")
    await seq.serve(path)
    try:
        yield seq, path
    finally:
        await seq.close()


class Followed:
    """A LocalFollower run in this loop, recording what it applies."""

    def __init__(self, path: str, position: int = 0) -> None:
        self.entries: list[int] = []
        self.restores: list[bool] = []
        self.follower = LocalFollower(path, 1234, self._apply, lambda books, held: self.restores.append(held))
        self.follower.position = position
        self.task = asyncio.ensure_future(self.follower.run())

    def _apply(self, instruments, deltas) -> None:
        self.entries.extend(d.seq for d, _ in deltas)

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


def _batch(i: int) -> FeedBatch:
    return FeedBatch(i, (), (update("X", bids=[(100, 1 + i)], asks=[(101, 1)]),))


async def _wait(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)  # polling a condition, bounded by the deadline


async def test_a_worker_that_stops_reading_is_dropped_and_never_slows_the_sequencer(tmp_path):
    async with sequencer_on(tmp_path, retention=100, buffer_limit=64 * 1024) as (seq, path):
        seq.ingest(FeedBatch(0, (instrument("X"),), ()))
        good = Followed(path)
        await _wait(lambda: seq.workers == 1 and good.follower.caught_up)
        # A worker that says hello, then reads nothing.
        _, stuck = await asyncio.open_unix_connection(path)
        stuck.write(frame(HELLO, struct.pack(">QQ", 1234, 0)))
        await _wait(lambda: seq.workers == 2)
        n = 0
        while seq.dropped == 0:
            n += 1
            assert n < 200_000, "the stuck worker was never dropped"
            seq.ingest(_batch(n))  # synchronous: nothing here can wait for a worker
            if n % 500 == 0:
                await asyncio.sleep(0)  # let the good follower read
        assert seq.workers == 1
        await _wait(lambda: len(good.entries) == n)
        assert good.entries == list(range(1, n + 1))  # the reading worker lost nothing
        stuck.close()
        await good.close()


async def test_a_reconnecting_worker_catches_up_from_retained_entries_or_else_a_snapshot(tmp_path):
    async with sequencer_on(tmp_path, retention=10) as (seq, path):
        seq.ingest(FeedBatch(0, (instrument("X"),), ()))
        for i in range(1, 6):
            seq.ingest(_batch(i))
        # Held position 3 of 6: entries 4..6 (seqs 3..5), no snapshot.
        near = Followed(path, position=3)
        await _wait(lambda: len(near.entries) == 3)
        assert near.entries == [3, 4, 5] and near.restores == []
        await near.close()
        for i in range(6, 30):
            seq.ingest(_batch(i))
        # Held position 3 of 30, only the last 10 kept: a snapshot, marked as replacing held books.
        far = Followed(path, position=3)
        await _wait(lambda: far.restores)
        assert far.restores == [True] and far.follower.position == seq.position
        seq.ingest(_batch(30))
        await _wait(lambda: far.entries)
        assert far.entries == [30]
        await far.close()


async def test_sigterm_drains_every_worker_and_each_serves_its_own_metrics(tmp_path):
    metrics = free_port()
    while not _port_free(metrics + 1):
        metrics = free_port()
    node = start_workers(tmp_path, 2, "--simulator-rate", "200", "--drain-seconds", "1", "--metrics-port", str(metrics))
    pids: set[int] = set()
    try:
        pids = await worker_pids(node.port, 2)
        first, second = sorted(pids)
        async with on_worker(node, want=first) as (_, a), on_worker(node, want=second) as (_, b):
            for s in (a, b):
                await s.subscribe("AAPL")
                await s.until(lambda s=s: s.snapshots.get("AAPL"))
            # Worker i's own /metrics on metrics + i: each counts its own subscriber.
            for port in (metrics, metrics + 1):
                status, _, body = await http_get(port, "/metrics")
                assert status == 200
                assert 'orderbook_connections{endpoint="/ws"} 1.0' in body.decode()
            node.proc.send_signal(signal.SIGTERM)
            for s in (a, b):
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    while True:
                        await s.recv(20)
                assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
        assert await asyncio.to_thread(node.proc.wait, 30) == 0
    finally:
        stop_and_check_workers_gone(node, pids)


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


async def test_workers_serve_a_replay_sequenced_by_the_supervisor(shared_data, tmp_path):
    path = shared_data / "lobster-2012-06-21/aapl-l10-first999"
    node = start_workers(tmp_path, 2, "--replay", str(path), "--speed", "max")
    pids: set[int] = set()
    try:
        pids = await worker_pids(node.port, 2)
        expected = final_books(path, "lobster")
        for pid in sorted(pids):
            # Each worker's own book: asked on a connection that worker accepted.
            deadline = time.monotonic() + 60
            while True:
                got, sock = await asyncio.to_thread(_pinned, node.port)
                try:
                    if got == pid:
                        served = json.loads(await asyncio.to_thread(_request, sock, "/book/AAPL"))
                        if same_book(served, expected, "AAPL"):
                            break
                finally:
                    sock.close()
                assert time.monotonic() < deadline, f"worker {pid} never served the replay's final book"
    finally:
        stop_and_check_workers_gone(node, pids)


async def test_workers_stop_when_their_supervisor_is_killed(tmp_path):
    node = start_workers(tmp_path, 2, "--simulator-rate", "200")
    pids: set[int] = set()
    try:
        pids = await worker_pids(node.port, 2)
        node.kill()
        deadline = time.monotonic() + 30
        for pid in pids:
            while _alive(pid):
                assert time.monotonic() < deadline, f"worker {pid} outlived its killed supervisor"
                await asyncio.sleep(0.05)  # polling the process table, bounded by the deadline
    finally:
        for pid in pids:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
