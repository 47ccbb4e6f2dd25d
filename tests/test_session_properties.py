"""Properties of the subscriber session's resume and resync rules, under any
interleaving hypothesis finds of book changes, heartbeats, pushed snapshots,
deliveries, faults on book data (lost, repeated, corrupted or tampered
deltas and snapshots), dropped connections, reconnections and node restarts.

The node is the model of test_session.py (the core's sequencing, history and
resume rules), with books of at most 8 levels a side so that the checksum
covers every level. Replies (Subscribed, Unsubscribed, Error) are never
lost: the transport is TCP, and losing one takes the connection with it.

* The session never reports a verified book (`BookUpdated`) that differs
  from the node's book at that (epoch, seq).
* A delta it reports continues the last verified point exactly; a resume it
  reports is at that point: across reconnections no seq is skipped or
  repeated.
* It offers a resume point exactly when its book is verified, and that
  point is the last one it reported.
* Once faults stop and it reconnects, every symbol becomes live with the
  node's current book.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orderbook.core.resume import ResumePoint
from orderbook.session import (
    BookUpdated,
    Output,
    Resync,
    Send,
    Started,
    SubscriberSession,
    SymbolState,
)
from orderbook.wire.codec import ServerMessage

from .test_session import Link, Node

pytestmark = pytest.mark.timeout(300)

SYMBOLS = ("A", "B")
BID_PRICES = st.integers(90, 97)
ASK_PRICES = st.integers(100, 107)
SIZES = st.integers(0, 9)  # 0 removes the level

change = st.tuples(
    st.just("change"),
    st.sampled_from(SYMBOLS),
    st.lists(st.tuples(BID_PRICES, SIZES), min_size=1, max_size=3),
    st.lists(st.tuples(ASK_PRICES, SIZES), max_size=3),
)
deliver = st.tuples(st.just("deliver"), st.one_of(st.integers(1, 4), st.just(1_000)))  # some, or all in flight
fault = st.tuples(st.sampled_from(["drop", "repeat", "corrupt", "tamper"]), st.integers(0, 30), SIZES)
other = st.tuples(st.sampled_from(["heartbeat", "push_snapshot"]), st.sampled_from(SYMBOLS))
connection = st.tuples(st.sampled_from(["reconnect", "reconnect", "disconnect", "connect", "restart"]))
# Mostly changes and deliveries; the rest now and then.
WEIGHTS = {"change": 8, "deliver": 8, "fault": 2, "other": 2, "connection": 2}
STRATEGIES = {"change": change, "deliver": deliver, "fault": fault, "other": other, "connection": connection}
operation = st.sampled_from([k for k, n in WEIGHTS.items() for _ in range(n)]).flatmap(STRATEGIES.__getitem__)
operations = st.lists(operation, min_size=10, max_size=80)


class Checker:
    """Follows what the session reports and checks every report against the
    node's truth as it comes."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.last: dict[str, tuple[int, int]] = {}  # last verified (epoch, seq) reported
        self.trusted: dict[str, bool] = dict.fromkeys(SYMBOLS, False)  # no failure since it
        self.resumes = 0
        self.resumed_deltas = 0

    def check(self, outputs: list[Output]) -> None:
        for o in outputs:
            if isinstance(o, BookUpdated):
                f = o.follower  # checked message by message: still at the point reported
                point = (o.epoch, o.seq)
                assert (f.epoch, f.seq) == point and f.synced
                assert f.book == self.node.truth[o.symbol, o.epoch, o.seq], (o, point)
                if o.kind == "delta":
                    assert self.trusted[o.symbol], "a delta applied to a book not verified"
                    held = self.last[o.symbol]
                    assert point == (held[0], held[1] + 1), f"{o.symbol}: {held} -> {point}"
                elif o.kind == "resumed":
                    assert self.trusted[o.symbol] and point == self.last[o.symbol]
                    self.resumes += 1
                self.last[o.symbol] = point
                self.trusted[o.symbol] = True
            elif isinstance(o, Resync) or (isinstance(o, Started) and not o.resumed):
                self.trusted[o.symbol] = False
            elif isinstance(o, Send) and o.message.WhichOneof("kind") == "subscribe":
                sub = o.message.subscribe
                if sub.HasField("resume"):
                    assert self.trusted[sub.symbol], "offered a book that failed a check"
                    assert (sub.resume.epoch, sub.resume.seq) == self.last[sub.symbol]
                else:
                    assert not self.trusted[sub.symbol], "a verified book was not offered for resuming"


def book_data(node: Node) -> list[int]:
    """Indexes in `node.wire` of the book data (what faults may touch)."""
    return [i for i, m in enumerate(node.wire) if m.WhichOneof("kind") in ("delta", "snapshot", "heartbeat")]


def apply_fault(node: Node, kind: str, pick: int, size: int) -> None:
    data = book_data(node)
    if not data:
        return
    i = data[pick % len(data)]
    msg = node.wire[i]
    if kind == "drop":
        del node.wire[i]
    elif kind == "repeat":
        again = ServerMessage()
        again.CopyFrom(msg)
        node.wire.insert(i + 1, again)
    elif kind == "corrupt":
        body = getattr(msg, msg.WhichOneof("kind"))
        if msg.WhichOneof("kind") == "heartbeat":
            body.seq += 1
        else:
            body.checksum ^= 1 << (pick % 32)
    elif kind == "tamper" and msg.WhichOneof("kind") == "delta":
        # A level changed, the checksum left as the node computed it.
        levels = msg.delta.bids or msg.delta.asks
        if levels:
            levels[0].size = size


def run(ops, history: int) -> tuple[Link, Checker]:
    node = Node(SYMBOLS, history=history)
    for s in SYMBOLS:
        node.change(s, bids=[(95, 1)], asks=[(101, 1)])
    link = Link(SubscriberSession(SYMBOLS), node)
    checker = Checker(node)
    checker.check(link.connect())
    while node.wire:
        checker.check(link.deliver(1))
    for op in ops:
        kind = op[0]
        if kind == "change":
            node.change(op[1], op[2], op[3])
        elif kind == "deliver":
            for _ in range(min(op[1], len(node.wire))):
                checker.check(link.deliver(1))
        elif kind in ("drop", "repeat", "corrupt", "tamper"):
            apply_fault(node, kind, op[1], op[2])
        elif kind == "heartbeat":
            node.heartbeat(op[1])
        elif kind == "push_snapshot":
            node.push_snapshot(op[1])
        elif kind == "disconnect":
            checker.check(link.disconnect())
        elif kind == "reconnect":
            checker.check(link.disconnect())
            checker.check(link.connect())
        elif kind == "connect":
            if not link.session.connected:
                checker.check(link.connect())
        elif kind == "restart":
            node.restart()
            checker.check(link.take(link.session.close()))
    return link, checker


def settle(link: Link, checker: Checker) -> None:
    """No more faults: reconnect and deliver everything."""
    checker.check(link.disconnect())
    checker.check(link.connect())
    for _ in range(10_000):
        if not link.node.wire:
            break
        checker.check(link.deliver(1))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=operations, history=st.integers(0, 8))
def test_the_session_only_reports_the_nodes_books_and_never_skips_or_repeats_a_seq(ops, history):
    link, checker = run(ops, history)
    settle(link, checker)
    session, node = link.session, link.node
    for s in SYMBOLS:
        f = session.books[s]
        sb = node.books[s]
        assert session.is_live(s) and session.state(s) is SymbolState.LIVE
        assert (f.epoch, f.seq) == (sb.epoch, sb.seq)
        assert f.book == sb.book


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    before=st.lists(change, max_size=10),
    missed=st.lists(change, min_size=1, max_size=10),
    drops=st.integers(1, 3),
)
def test_a_resume_replays_exactly_the_missed_changes(before, missed, drops):
    link, checker = run([*before, ("deliver", 100)], history=100)
    session, node = link.session, link.node
    held = {s: session.books[s].resume_point() for s in SYMBOLS}
    for _ in range(drops):  # reconnecting several times before anything arrives
        checker.check(link.disconnect())
        checker.check(link.connect())
    checker.check(link.disconnect())
    for op in missed:
        node.change(op[1], op[2], op[3])
    checker.check(link.connect())
    out: list[Output] = []
    while node.wire:
        got = link.deliver(1)
        checker.check(got)
        out.extend(got)
    assert session.stats.resyncs == 0 and session.stats.snapshots == len(SYMBOLS)
    for s in SYMBOLS:
        point = held[s]
        assert point is not None
        kinds = [o.kind for o in out if isinstance(o, BookUpdated) and o.symbol == s]
        assert kinds == ["resumed"] + ["delta"] * (node.books[s].seq - point.seq)
        assert session.books[s].resume_point() == ResumePoint(node.epoch, node.books[s].seq)
        assert session.books[s].book == node.books[s].book
