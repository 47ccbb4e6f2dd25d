"""The shared write (one write per group of subscribers per flush) against
each subscriber's own queue: every subscriber's byte stream must be the same
on both paths, whatever the schedule of changes, subscriptions, flushes and
slow readers; and over real sockets, subscribers on the shared path verify
every checksum and seq."""

from __future__ import annotations

import contextlib
import heapq
import itertools
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from orderbook.core.events import FeedBatch
from orderbook.server.hub import Hub, SubscribeRejected
from orderbook.wire.codec import Encoding, SubscribeRequest

from .harness import Publisher, Subscriber, instrument, serve_in_process, test_settings, update

SYMBOLS = ("AAA", "BBB")


class Handle:
    __slots__ = ("callback", "cancelled")

    def __init__(self, callback) -> None:
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeLoop:
    """The loop calls the hub makes (time, call_soon, call_at), run by hand:
    both hubs see exactly the same clock and order of callbacks."""

    def __init__(self) -> None:
        self.now = 1000.0
        self._queue: list[tuple[float, int, Handle]] = []
        self._order = itertools.count()

    def time(self) -> float:
        return self.now

    def call_soon(self, callback, *args) -> Handle:
        return self.call_at(self.now, callback, *args)

    def call_at(self, when: float, callback, *args) -> Handle:
        h = Handle(lambda: callback(*args))
        heapq.heappush(self._queue, (when, next(self._order), h))
        return h

    def advance(self, dt: float) -> None:
        """Move the clock on and run every callback due by then, in order."""
        end = self.now + dt
        while self._queue and self._queue[0][0] <= end:
            when, _, h = heapq.heappop(self._queue)
            self.now = max(self.now, when)
            if not h.cancelled:
                h.callback()
        self.now = max(self.now, end)


class RecordingTransport:
    """A socket that records every byte written. A fast one takes each write
    at once; a slow one keeps it buffered until the reader drains it."""

    def __init__(self, slow: bool) -> None:
        self.slow = slow
        self.buffer = 0
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        if self.slow:
            self.buffer += len(data)

    def get_write_buffer_size(self) -> int:
        return self.buffer

    def is_closing(self) -> bool:
        return False

    def drain(self, n: int) -> None:
        self.buffer = max(0, self.buffer - n)

    @property
    def stream(self) -> bytes:
        return b"".join(self.writes)


# (encoding, deflate, slow) of each client: every frame kind, fast and slow.
CLIENTS = [
    (Encoding.PROTOBUF, False, False),
    (Encoding.PROTOBUF, False, False),
    (Encoding.JSON, False, False),
    (Encoding.PROTOBUF, True, False),
    (Encoding.JSON, True, False),
    (Encoding.PROTOBUF, False, True),
    (Encoding.JSON, False, True),
    (Encoding.PROTOBUF, True, True),
]
# What a client subscribes to: full book, depth views, conflated (full and depth).
SUBSCRIPTIONS = st.tuples(st.sampled_from(SYMBOLS), st.sampled_from([0, 0, 2, 3]), st.sampled_from([0, 0, 0, 40]))


class Node:
    """A hub on a fake loop with recording clients."""

    def __init__(self, shared: bool) -> None:
        self.loop = FakeLoop()
        settings = replace(test_settings(), client_buffer_limit=1_200, degrade_interval_ms=60, symbol_heartbeat=0.05)
        self.hub = Hub(settings, 7, self.loop, wall_ns=lambda: 1_700_000_000_000_000_000, shared_write=shared)  # type: ignore[arg-type]
        self.hub.ingest(FeedBatch(instruments=tuple(instrument(s) for s in SYMBOLS)))
        self.transports = [RecordingTransport(slow) for _, _, slow in CLIENTS]
        self.conns = [
            self.hub.new_connection(t, enc, deflate=deflate)  # type: ignore[arg-type]
            for t, (enc, deflate, _) in zip(self.transports, CLIENTS, strict=True)
        ]
        self.request_id = 0

    def subscribe(self, i: int, symbol: str, depth: int, interval: int) -> None:
        self.request_id += 1
        with contextlib.suppress(SubscribeRejected):
            self.hub.subscribe(self.conns[i], SubscribeRequest(symbol, depth, None, self.request_id, interval))

    def unsubscribe(self, i: int, symbol: str) -> None:
        self.request_id += 1
        with contextlib.suppress(SubscribeRejected):
            self.hub.unsubscribe(self.conns[i], symbol, self.request_id)

    def step(self, op: tuple) -> None:
        kind = op[0]
        if kind == "publish":
            _, symbol, levels = op
            bids = [(1000 - p, s) for p, s in levels if p < 10]
            asks = [(1000 + p, s) for p, s in levels if p >= 10]
            # One change per level: several messages per flush.
            self.hub.ingest(
                FeedBatch(updates=(*tuple(update(symbol, [b], []) for b in bids), update(symbol, [], asks)))
            )
        elif kind == "flush":
            self.loop.advance(op[1])
        elif kind == "read":
            # The reader reads after the server has written: the budget is
            # checked against the same backlog on both paths.
            self.loop.advance(0)
            self.transports[op[1]].drain(op[2])
            self.hub.sweep_lagging()
        elif kind == "heartbeat":
            self.hub.heartbeat()
        elif kind == "subscribe":
            _, i, (symbol, depth, interval) = op
            self.subscribe(i, symbol, depth, interval)
        elif kind == "unsubscribe":
            self.unsubscribe(op[1], op[2])


clients = st.integers(0, len(CLIENTS) - 1)
OPS = st.one_of(
    st.tuples(
        st.just("publish"),
        st.sampled_from(SYMBOLS),
        st.lists(st.tuples(st.integers(0, 19), st.integers(0, 50)), min_size=1, max_size=6),
    ),
    st.tuples(st.just("publish"), st.just(SYMBOLS[0]), st.lists(st.tuples(st.integers(0, 19), st.integers(1, 9)))),
    st.tuples(st.just("flush"), st.sampled_from([0.0, 0.001, 0.01, 0.05])),
    st.tuples(st.just("read"), clients, st.integers(0, 1_500)),
    st.tuples(st.just("heartbeat")),
    st.tuples(st.just("subscribe"), clients, SUBSCRIPTIONS),
    st.tuples(st.just("unsubscribe"), clients, st.sampled_from(SYMBOLS)),
)


@hsettings(max_examples=400, deadline=None)
@given(
    st.lists(st.lists(SUBSCRIPTIONS, max_size=2), min_size=len(CLIENTS), max_size=len(CLIENTS)),
    st.lists(OPS, max_size=120),
)
def test_every_subscriber_gets_the_same_bytes_on_both_paths(initial, ops):
    shared, own = Node(shared=True), Node(shared=False)
    for node in (shared, own):
        for i, subs in enumerate(initial):
            for symbol, depth, interval in subs:
                node.subscribe(i, symbol, depth, interval)
        for op in ops:
            node.step(op)
        node.loop.advance(1.0)
    for i, (a, b) in enumerate(zip(shared.transports, own.transports, strict=True)):
        assert a.stream == b.stream, f"client {i} {CLIENTS[i]}"
    assert shared.hub.counts.messages == own.hub.counts.messages
    assert shared.hub.counts.message_bytes == own.hub.counts.message_bytes
    assert shared.hub.slow_connections == own.hub.slow_connections


def test_one_bytes_object_is_written_to_every_subscriber_of_a_group():
    """The shared path joins a flush's messages once per frame kind and
    writes that one object to each subscriber; its own queue joins per client."""
    for shared in (True, False):
        node = Node(shared=shared)
        for i in range(len(CLIENTS)):
            node.subscribe(i, "AAA", 0, 0)
        node.loop.advance(0)  # acks and snapshots
        before = [len(t.writes) for t in node.transports]
        for n in range(5):
            node.step(("publish", "AAA", [(n, 10 + n)]))
        node.loop.advance(0)
        new = [t.writes[b:] for t, b in zip(node.transports, before, strict=True)]
        assert all(len(w) == 1 for w in new)  # one write per client per flush on both paths
        protobuf_plain = [
            w[0] for w, (enc, deflate, _) in zip(new, CLIENTS, strict=True) if not deflate and enc is Encoding.PROTOBUF
        ]
        assert len(protobuf_plain) == 3
        same_object = all(w is protobuf_plain[0] for w in protobuf_plain)
        assert same_object is shared
        assert len({bytes(w) for w in protobuf_plain}) == 1


def test_a_second_subscription_moves_the_first_off_the_shared_write_in_order():
    """Messages interleave across a client's subscriptions exactly as published."""
    streams = []
    for shared in (True, False):
        node = Node(shared=shared)
        node.subscribe(0, "AAA", 0, 0)
        node.loop.advance(0)
        node.step(("publish", "AAA", [(1, 5)]))
        node.subscribe(0, "BBB", 0, 0)  # mid-flush: its ack follows AAA's delta
        node.step(("publish", "BBB", [(2, 6)]))
        node.step(("publish", "AAA", [(3, 7)]))
        node.loop.advance(0)
        node.unsubscribe(0, "BBB")
        node.step(("publish", "AAA", [(4, 8)]))
        node.loop.advance(0)
        streams.append(node.transports[0].stream)
    assert streams[0] == streams[1]


# ------------------------------------------------------------------ over real sockets


@pytest.mark.timeout(60)
async def test_shared_write_subscribers_verify_every_checksum_and_seq():
    """Full-book and depth subscribers (protobuf and JSON) on the shared path
    apply every delta, each checked against its checksum and prev_seq."""
    kinds = [(Encoding.PROTOBUF, 0)] * 6 + [(Encoding.JSON, 0)] * 3 + [(Encoding.PROTOBUF, 3)] * 3
    async with serve_in_process() as srv, Publisher.connect(srv.feed_url) as pub:
        await pub.send([instrument("A")], [update("A", bids=[(990, 5)], asks=[(1011, 7)])])
        async with contextlib.AsyncExitStack() as stack:
            subs = [await stack.enter_async_context(Subscriber.connect(srv.url, enc)) for enc, _ in kinds]
            for sub, (_, depth) in zip(subs, kinds, strict=True):
                await sub.subscribe("A", depth)
                await sub.until(lambda sub=sub: sub.snapshots.get("A"))
            ch = srv.hub.channels["A"]
            # Each on its group's shared write: one subscription per client.
            assert len(ch.fan.shared) == 9 and len(ch.groups[3].fan.shared) == 3
            start = ch.seqbook.seq
            for n in range(40):
                # Ten changes a batch: several messages per shared write.
                await pub.send(
                    updates=[
                        update("A", bids=[(1000 - (n + i) % 9, 1 + (n * i) % 7)], asks=[(1010 + i % 4, (n + i) % 3)])
                        for i in range(10)
                    ]
                )
            final = ch.seqbook.seq
            for sub, (_, depth) in zip(subs, kinds, strict=True):
                await sub.until_seq("A", final if not depth else ch.groups[3].view.seq)
                f = sub.followers["A"]
                if depth:
                    continue
                assert [s for _, s in sub.seen["A"]] == list(range(start + 1, final + 1))
                assert f.book == ch.seqbook.book


class SlowWriteTransport(RecordingTransport):
    """Each write takes 1 ms of the (fake) loop's time: flushes have a cost,
    so a busy hub spaces them."""

    def __init__(self, loop: FakeLoop) -> None:
        super().__init__(slow=False)
        self.loop = loop

    def write(self, data: bytes) -> None:
        super().write(data)
        self.loop.now += 0.001


@pytest.mark.parametrize("shared", [True, False])
def test_a_flush_is_due_at_once_when_enough_changes_wait(shared):
    """After a flush that took 10 ms the next waits 10 ms, unless
    FLUSH_MESSAGES changes are already waiting: then it runs at the end of
    the loop turn."""
    from orderbook.server.hub import FLUSH_MESSAGES

    node = Node(shared=shared)
    transports = [SlowWriteTransport(node.loop) for _ in range(10)]
    conns = [node.hub.new_connection(t, Encoding.PROTOBUF) for t in transports]  # type: ignore[arg-type]
    for conn in conns:
        node.hub.subscribe(conn, SubscribeRequest("AAA"))
    node.loop.advance(0)  # acks and snapshots: a flush of 10 writes, 10 ms
    written = sum(len(t.writes) for t in transports)
    node.step(("publish", "AAA", [(1, 1)]))
    node.loop.advance(0)
    assert sum(len(t.writes) for t in transports) == written  # waits out the gap
    for n in range(FLUSH_MESSAGES - 2):  # FLUSH_MESSAGES - 1 changes waiting in all
        node.hub.ingest(FeedBatch(updates=(update("AAA", [(900, 2 + n)]),)))
    node.loop.advance(0)
    assert sum(len(t.writes) for t in transports) == written
    node.hub.ingest(FeedBatch(updates=(update("AAA", [(901, 1)]),)))
    node.loop.advance(0)  # the gap is not over, but the flush is due
    assert sum(len(t.writes) for t in transports) == written + len(transports)
