"""Hypothesis drives a real server and a real subscriber socket: random update
streams (deletes, levels far from the top, whole-book replaces), random
disconnects (abrupt TCP drops and clean closes) and reconnects, and random
history sizes. After every step that the subscriber is connected for, its
book equals the server's book at the same seq, and no delta was seen twice
or skipped."""

from __future__ import annotations

import asyncio
import contextlib
import itertools

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from orderbook.core.follower import BookFollower
from orderbook.core.history import HistoryLimits
from orderbook.v1 import stream_pb2

from .harness import Publisher, Subscriber, instrument, serve_in_process, test_settings, update

pytestmark = pytest.mark.timeout(300)

SYMBOL = "H"
prices = st.one_of(st.integers(90, 110), st.integers(-5, 10_000))  # mostly near the top
sizes = st.one_of(st.just(0), st.integers(1, 50))
levels = st.lists(st.tuples(prices, sizes), max_size=4)


class ResumeMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.stack = contextlib.AsyncExitStack()
        self.sub: Subscriber | None = None
        self.sub_stack: contextlib.AsyncExitStack | None = None
        self.follower = BookFollower(SYMBOL)
        self.delivered: list[int] = []  # every delta seq applied, across connections
        self.server_seq = 0

    def run(self, coro):
        return self.loop.run_until_complete(asyncio.wait_for(coro, 20))

    @initialize(
        entries=st.integers(0, 12),
        nbytes=st.sampled_from([0, 150, 600, 1 << 20]),
    )
    def start(self, entries: int, nbytes: int) -> None:
        self.limits = HistoryLimits(max_entries=entries, max_bytes=nbytes)

        async def go():
            self.srv = await self.stack.enter_async_context(serve_in_process(test_settings(history=self.limits)))
            self.pub = await self.stack.enter_async_context(Publisher.connect(self.srv.feed_url))
            reply = await self.pub.send([instrument(SYMBOL)], [update(SYMBOL, bids=[(100, 1)], asks=[(101, 1)])])
            self.server_seq = reply.ack.positions[0].seq

        self.run(go())
        self.connect()

    # -- rules ---------------------------------------------------------------
    @rule(bids=levels, asks=levels, replace=st.booleans())
    def publish(self, bids, asks, replace) -> None:
        reply = self.run(self.pub.send(updates=[update(SYMBOL, bids, asks, replace)]))
        assert reply.WhichOneof("kind") == "ack", reply
        self.server_seq = reply.ack.positions[0].seq
        if self.sub is not None:
            self.run(self.sub.until_seq(SYMBOL, self.server_seq))

    @precondition(lambda self: self.sub is not None)
    @rule(abrupt=st.booleans())
    def disconnect(self, abrupt: bool) -> None:
        assert self.sub is not None and self.sub_stack is not None
        if abrupt:
            self.sub.abort()
        self.run(self.sub_stack.aclose())
        self.sub = self.sub_stack = None

    @precondition(lambda self: self.sub is None)
    @rule()
    def connect(self) -> None:
        point = self.follower.resume_point()
        history = self.srv.hub.channels[SYMBOL].history
        expect_resume = point is not None and history.base_seq <= point.seq

        async def go():
            self.sub_stack = contextlib.AsyncExitStack()
            self.sub = await self.sub_stack.enter_async_context(Subscriber.connect(self.srv.url))
            self.sub.followers[SYMBOL] = self.follower
            self.sub.seen[SYMBOL] = self.delivered
            await self.sub.subscribe(SYMBOL, resume=point)
            await self.sub.until(lambda: self.sub.acks)
            await self.sub.until_seq(SYMBOL, self.server_seq)

        self.run(go())
        ack = self.sub.acks[0]
        if expect_resume:
            assert ack.start == stream_pb2.START_RESUMED and not self.sub.snapshots
        else:
            assert ack.start == stream_pb2.START_SNAPSHOT
            want = stream_pb2.SNAPSHOT_REASON_NEW if point is None else stream_pb2.SNAPSHOT_REASON_HISTORY_EXHAUSTED
            assert ack.reason == want
            # A snapshot restarts the record: deltas after it continue from its seq.
            self.delivered.clear()

    # -- invariants -------------------------------------------------------------
    @invariant()
    def book_matches_server(self) -> None:
        if self.sub is None:
            return
        sb = self.srv.hub.channels[SYMBOL].seqbook
        assert self.follower.seq == sb.seq == self.server_seq
        assert self.follower.epoch == sb.epoch
        assert self.follower.book == sb.book

    @invariant()
    def no_gap_no_duplicate(self) -> None:
        seqs = [s for _, s in self.delivered]
        assert len(seqs) == len(set(seqs))
        assert all(b == a + 1 for a, b in itertools.pairwise(seqs))

    def teardown(self) -> None:
        async def close():
            if self.sub_stack is not None:
                await self.sub_stack.aclose()
            await self.stack.aclose()

        try:
            self.loop.run_until_complete(asyncio.wait_for(close(), 20))
        finally:
            self.loop.close()


ResumeMachine.TestCase.settings = settings(
    max_examples=25,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestResume = ResumeMachine.TestCase
