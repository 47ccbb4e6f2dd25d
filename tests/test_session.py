"""The subscriber session, driven directly: no socket, no clock. A model node
(`Node`) answers its requests with the server's own sequencing, history and
resume rules from the core, so every checksum is real; the tests then break
the stream on purpose and look at what the session reports and sends."""

from __future__ import annotations

import ast
import random
import sys
from pathlib import Path

import pytest

from orderbook.core.book import Book
from orderbook.core.errors import ChecksumMismatch, DuplicateDelta, EpochMismatch, SequenceGap
from orderbook.core.events import BookUpdate
from orderbook.core.history import History, HistoryLimits
from orderbook.core.instrument import Instrument
from orderbook.core.resume import ResumePoint, SnapshotReason, decide
from orderbook.core.sequencer import SequencedBook
from orderbook.session import (
    ACCEPTS,
    PERMANENT_REFUSALS,
    TRANSITIONS,
    Backoff,
    BookUpdated,
    ErrorOutcome,
    ErrorReceived,
    HeartbeatChecked,
    MalformedReceived,
    Output,
    Phase,
    PongReceived,
    ReconnectPolicy,
    RefusalPolicy,
    Rejected,
    ResumeMismatch,
    Resync,
    ResyncReason,
    RetrySubscribe,
    ServerError,
    Started,
    StateChanged,
    SubscriberSession,
    SubscriptionRejected,
    SymbolState,
    Trigger,
    UndefinedTransition,
    messages,
    retry_after_seconds,
    transition,
)
from orderbook.wire import codec
from orderbook.wire.codec import ClientMessage, ErrorCode, ServerMessage

pytestmark = pytest.mark.timeout(60)

EPOCH = 1_000


# ----------------------------------------------------------------------------- a model node


class Node:
    """What a node sends one connection, built from the core's sequencing,
    history and resume rules. Replies and book data queue in `wire`, in
    order, until a test delivers them."""

    def __init__(self, symbols=("A",), history: int = 100, epoch: int = EPOCH) -> None:
        self.history_entries = history
        self.known = set(symbols)
        self.epoch = epoch
        self.books: dict[str, SequencedBook] = {}
        self.histories: dict[str, History] = {}
        self.truth: dict[tuple[str, int, int], Book] = {}  # every state each book has had
        self.subs: set[str] = set()  # the connection's subscriptions
        self.wire: list[ServerMessage] = []  # in flight to the subscriber, oldest first
        self.requests: list[ClientMessage] = []  # every request received
        for s in sorted(self.known):
            self._define(s)

    def _define(self, symbol: str) -> None:
        self.books[symbol] = SequencedBook(Instrument(symbol, 2, 4), self.epoch)
        self.histories[symbol] = History(HistoryLimits(self.history_entries, 1 << 30), 0)
        self.truth[symbol, self.epoch, 0] = Book()

    def define(self, symbol: str) -> None:
        self.known.add(symbol)
        self._define(symbol)

    def change(self, symbol: str, bids=(), asks=()) -> bool:
        """One update; queued for the subscriber if it is subscribed. False
        if it changed nothing (no seq)."""
        delta = self.books[symbol].apply(BookUpdate(symbol, tuple(bids), tuple(asks)))
        if delta is None:
            return False
        self.histories[symbol].append(delta.seq, delta.prev_seq, delta, 1)
        self.truth[symbol, delta.epoch, delta.seq] = self.books[symbol].book.copy()
        if symbol in self.subs:
            self.wire.append(codec.delta_message(delta))
        return True

    def heartbeat(self, symbol: str, stale: bool = False) -> None:
        if symbol in self.subs:
            sb = self.books[symbol]
            self.wire.append(codec.heartbeat_message(symbol, sb.epoch, sb.seq, 0, stale))

    def push_snapshot(self, symbol: str) -> None:
        """A snapshot without Subscribed, as for a reader that fell behind."""
        if symbol in self.subs:
            self.wire.append(codec.snapshot_message(self.books[symbol].snapshot()))

    def drop_connection(self) -> None:
        self.subs.clear()
        self.wire.clear()

    def restart(self) -> None:
        """A new process: a new epoch, every symbol defined again, empty."""
        self.drop_connection()
        self.epoch += 1
        for s in sorted(self.known):
            self._define(s)

    def handle(self, msg: ClientMessage) -> None:
        self.requests.append(msg)
        kind = msg.WhichOneof("kind")
        if kind == "subscribe":
            self._subscribe(msg.subscribe)
        elif kind == "unsubscribe":
            u = msg.unsubscribe
            if u.symbol in self.subs:
                self.subs.discard(u.symbol)
                self.wire.append(codec.unsubscribed_message(u.symbol, u.request_id))
            else:
                self.error(ErrorCode.ERROR_CODE_NOT_SUBSCRIBED, u.symbol, u.request_id)
        elif kind == "ping":
            self.wire.append(codec.pong_message(msg.ping.request_id, 7))

    def _subscribe(self, s) -> None:
        if s.symbol in self.subs:
            self.error(ErrorCode.ERROR_CODE_ALREADY_SUBSCRIBED, s.symbol, s.request_id)
            return
        if s.symbol not in self.known:
            self.error(ErrorCode.ERROR_CODE_UNKNOWN_SYMBOL, s.symbol, s.request_id)
            return
        sb = self.books[s.symbol]
        resume = ResumePoint(s.resume.epoch, s.resume.seq) if s.HasField("resume") else None
        d = decide(sb.epoch, sb.seq, self.histories[s.symbol], resume, s.depth)
        seq = resume.seq if d.resumed and resume is not None else sb.seq
        self.wire.append(
            codec.subscribed_message(s.symbol, s.request_id, d.resumed, d.reason, sb.epoch, seq, s.depth, sb.instrument)
        )
        if d.resumed:
            self.wire.extend(codec.delta_message(delta) for delta in d.replay)
        else:
            self.wire.append(codec.snapshot_message(sb.snapshot(s.depth)))
        self.subs.add(s.symbol)

    def error(self, code: int, symbol: str, request_id: int) -> None:
        self.wire.append(codec.error_message(code, f"{codec.ErrorCode.Name(code)}", symbol, request_id))


class Link:
    """A session connected to a node: what the session sends reaches the
    node at once; what the node sends waits in `node.wire` until delivered."""

    def __init__(self, session: SubscriberSession, node: Node) -> None:
        self.session, self.node = session, node
        self.outputs: list[Output] = []  # everything the session returned

    def take(self, outputs: list[Output]) -> list[Output]:
        self.outputs.extend(outputs)
        for m in messages(outputs):
            self.node.handle(m)
        return outputs

    def connect(self) -> list[Output]:
        self.node.drop_connection()
        return self.take(self.session.open())

    def disconnect(self) -> list[Output]:
        self.node.drop_connection()
        return self.take(self.session.close())

    def deliver(self, n: int | None = None) -> list[Output]:
        """Deliver `n` messages (default: until nothing is in flight)."""
        got: list[Output] = []
        while self.node.wire and (n is None or n > 0):
            got.extend(self.take(self.session.receive(self.node.wire.pop(0))))
            if n is not None:
                n -= 1
        return got


def of(kind, outputs):
    return [o for o in outputs if isinstance(o, kind)]


def sent(outputs) -> list[str]:
    return [m.WhichOneof("kind") for m in messages(outputs)]


def book_of(node: Node, symbol: str = "A") -> Book:
    return node.books[symbol].book


def live_link(symbols=("A",), **session_kw) -> Link:
    node = Node(symbols)
    for s in symbols:
        node.change(s, bids=[(100, 5), (99, 3)], asks=[(101, 4), (102, 6)])
    link = Link(SubscriberSession(symbols, **session_kw), node)
    link.connect()
    link.deliver()
    for s in symbols:
        assert link.session.is_live(s)
    return link


# ----------------------------------------------------------------------------- the transition table


def test_an_undefined_transition_is_an_error_naming_the_phase_and_trigger():
    with pytest.raises(UndefinedTransition, match="no transition from LIVE on RESUMED"):
        transition(Phase.LIVE, Trigger.RESUMED)
    undefined = [(p, t) for p in Phase for t in Trigger if (p, t) not in TRANSITIONS]
    assert undefined  # the table is a whitelist
    for p, t in undefined:
        with pytest.raises(UndefinedTransition):
            transition(p, t)


def test_a_dropped_connection_is_defined_in_every_phase():
    for phase in Phase:
        assert transition(phase, Trigger.DISCONNECTED) is (Phase.FAILED if phase is Phase.FAILED else Phase.IDLE)


def test_every_phase_is_reachable_and_every_phase_can_get_back_to_live():
    edges: dict[Phase, set[Phase]] = {}
    for (p, _), q in TRANSITIONS.items():
        edges.setdefault(p, set()).add(q)

    def reach(start: Phase) -> set[Phase]:
        seen, todo = {start}, [start]
        while todo:
            for q in edges.get(todo.pop(), ()):
                if q not in seen:
                    seen.add(q)
                    todo.append(q)
        return seen

    assert reach(Phase.IDLE) == set(Phase)
    for phase in Phase:
        assert Phase.LIVE in reach(phase), phase


def test_book_data_is_taken_only_in_the_phases_that_expect_it():
    assert ACCEPTS["delta"] == ACCEPTS["heartbeat"] == {Phase.LIVE}
    assert ACCEPTS["snapshot"] == {Phase.SNAPSHOT_WAIT, Phase.LIVE}
    assert ACCEPTS["subscribed"] == {Phase.SUBSCRIBING}
    assert ACCEPTS["unsubscribed"] == {Phase.UNSUBSCRIBING}


def test_the_tables_cannot_be_changed_at_run_time():
    with pytest.raises(TypeError):
        TRANSITIONS[Phase.IDLE, Trigger.RESUMED] = Phase.LIVE  # type: ignore[index]
    with pytest.raises(TypeError):
        ACCEPTS["delta"] = frozenset(Phase)  # type: ignore[index]


# ----------------------------------------------------------------------------- subscribing


def test_a_new_connection_subscribes_every_symbol_and_a_snapshot_makes_it_live():
    node = Node(("A", "B"))
    node.change("A", bids=[(100, 5)], asks=[(101, 4)])
    session = SubscriberSession(("A", "B"), interval_ms=100)
    link = Link(session, node)
    assert session.state("A") is SymbolState.SUBSCRIBING and not session.connected
    out = link.connect()
    subs = [m.subscribe for m in messages(out)]
    assert [(s.symbol, s.depth, s.interval_ms, s.HasField("resume")) for s in subs] == [
        ("A", 0, 100, False),
        ("B", 0, 100, False),
    ]
    assert len({s.request_id for s in subs}) == 2 and all(s.request_id for s in subs)
    assert session.phase("A") is Phase.SUBSCRIBING
    out = link.deliver()
    updates = of(BookUpdated, out)
    assert [(u.symbol, u.kind, u.solicited) for u in updates] == [("A", "snapshot", True), ("B", "snapshot", True)]
    assert [(e.symbol, e.state, e.previous) for e in of(StateChanged, out)] == [
        ("A", SymbolState.LIVE, SymbolState.SUBSCRIBING),
        ("B", SymbolState.LIVE, SymbolState.SUBSCRIBING),
    ]
    assert [(s.resumed, s.reason) for s in of(Started, out)] == [(False, "SNAPSHOT_REASON_NEW")] * 2
    assert session.books["A"].book == book_of(node) and session.books["A"].instrument == Instrument("A", 2, 4)
    assert session.stats.snapshots == 2 and session.delivered


def test_deltas_keep_the_book_equal_to_the_nodes():
    link = live_link()
    node, session = link.node, link.session
    rng = random.Random(3)
    for i in range(50):
        node.change("A", bids=[(rng.randrange(90, 100), rng.choice([0, i + 1]))], asks=[(rng.randrange(101, 111), i)])
    out = link.deliver()
    assert session.books["A"].book == book_of(node)
    assert session.books["A"].seq == node.books["A"].seq
    assert len(of(BookUpdated, out)) == session.stats.deltas and of(Resync, out) == []


def test_a_depth_limited_subscription_asks_for_its_depth_and_never_to_resume():
    link = live_link(depth=3)
    node, session = link.node, link.session
    assert node.requests[0].subscribe.depth == 3
    assert session.books["A"].depth == 3
    out = link.disconnect() + link.connect()
    (sub,) = [m.subscribe for m in messages(out)]
    assert sub.depth == 3 and not sub.HasField("resume")


# ----------------------------------------------------------------------------- in-band resync


def test_a_gap_resyncs_only_that_symbol_in_band():
    link = live_link(("A", "B"))
    node, session = link.node, link.session
    node.change("A", bids=[(100, 6)])
    node.wire.pop()  # lost
    node.change("A", bids=[(100, 7)])
    node.change("B", asks=[(101, 9)])
    node.change("A", bids=[(99, 1)])  # in flight behind the gap: ignored
    out = link.deliver(1)
    (resync,) = of(Resync, out)
    assert (resync.symbol, resync.reason) == ("A", ResyncReason.GAP)
    assert isinstance(resync.error, SequenceGap)
    assert sent(out) == ["unsubscribe"]
    assert not session.books["A"].synced and session.state("A") is SymbolState.RESYNCING
    assert session.phase("A") is Phase.UNSUBSCRIBING
    out = link.deliver(2)  # B's delta, then A's stale one
    assert [(u.symbol, u.kind) for u in of(BookUpdated, out)] == [("B", "delta")]
    out = link.deliver(1)  # Unsubscribed: subscribe afresh, without resume point
    assert sent(out) == ["subscribe"]
    assert not node.requests[-1].subscribe.HasField("resume")
    out = link.deliver()
    assert [(u.symbol, u.kind) for u in of(BookUpdated, out)] == [("A", "snapshot")]
    assert session.books["A"].book == book_of(node) and session.state("A") is SymbolState.LIVE
    st = session.stats
    assert (st.resyncs, st.gaps, st.checksum_failures) == (1, 1, 0)
    assert st.resyncs_by_reason == {ResyncReason.GAP: 1}


@pytest.mark.parametrize(
    ("fault", "reason", "error", "counter"),
    [
        ("checksum", ResyncReason.CHECKSUM, ChecksumMismatch, "checksum_failures"),
        ("duplicate", ResyncReason.DUPLICATE, DuplicateDelta, "duplicates"),
        ("epoch", ResyncReason.EPOCH, EpochMismatch, "epoch_changes"),
    ],
)
def test_a_broken_delta_resyncs_for_its_reason(fault, reason, error, counter):
    link = live_link()
    node, session = link.node, link.session
    node.change("A", bids=[(100, 6)])
    if fault == "duplicate":
        again = ServerMessage()
        again.CopyFrom(node.wire[-1])
        link.deliver()
        node.wire.append(again)
    elif fault == "checksum":
        node.wire[-1].delta.checksum ^= 1
    else:
        node.wire[-1].delta.epoch += 1
    out = link.deliver(1)
    (resync,) = of(Resync, out)
    assert resync.reason is reason and isinstance(resync.error, error)
    assert getattr(session.stats, counter) == 1 and session.stats.resyncs == 1
    assert sent(out) == ["unsubscribe"] and of(BookUpdated, out) == []
    link.deliver()
    assert session.is_live("A") and session.books["A"].book == book_of(node)


def test_a_snapshot_with_a_wrong_checksum_is_not_reported_and_is_asked_for_again():
    node = Node()
    node.change("A", bids=[(100, 5)])
    session = SubscriberSession(["A"])
    link = Link(session, node)
    link.connect()
    node.wire[1].snapshot.checksum ^= 1
    out = link.deliver(2)
    assert of(BookUpdated, out) == [] and of(Resync, out)[0].reason is ResyncReason.CHECKSUM
    assert session.state("A") is SymbolState.SUBSCRIBING  # never had a verified book
    link.deliver()
    assert session.is_live("A") and session.stats.snapshots == 1


def test_a_snapshot_pushed_to_a_live_subscription_is_taken_and_flagged_unsolicited():
    link = live_link()
    node = link.node
    node.change("A", bids=[(100, 6)])
    node.wire.clear()  # the node dropped it for a slow reader...
    node.push_snapshot("A")  # ...and resynchronises it
    out = link.deliver()
    ((update),) = of(BookUpdated, out)
    assert (update.kind, update.solicited) == ("snapshot", False)
    assert link.session.books["A"].book == book_of(node) and of(Resync, out) == []


def test_heartbeats_are_checked_against_the_seq_held():
    link = live_link()
    node, session = link.node, link.session
    node.heartbeat("A")
    out = link.deliver()
    assert of(HeartbeatChecked, out) == [HeartbeatChecked("A", False)] and session.stats.heartbeats == 1
    node.change("A", bids=[(100, 6)])
    node.wire.clear()
    node.heartbeat("A")  # says seq 2; the session holds 1
    out = link.deliver(1)
    (resync,) = of(Resync, out)
    assert resync.reason is ResyncReason.HEARTBEAT and isinstance(resync.error, SequenceGap)
    assert session.stats.gaps == 1
    link.deliver()
    assert session.is_live("A") and session.books["A"].book == book_of(node)


def test_a_heartbeat_of_another_epoch_resyncs():
    link = live_link()
    link.node.wire.append(codec.heartbeat_message("A", EPOCH + 1, link.node.books["A"].seq, 0))
    (resync,) = of(Resync, link.deliver(1))
    assert resync.reason is ResyncReason.EPOCH and link.session.stats.epoch_changes == 1


def test_a_stale_heartbeat_shows_the_book_stale_until_changes_flow_again():
    link = live_link()
    node, session = link.node, link.session
    node.heartbeat("A", stale=True)
    out = link.deliver()
    assert of(HeartbeatChecked, out) == [HeartbeatChecked("A", True)]
    assert of(StateChanged, out) == [StateChanged("A", SymbolState.STALE, SymbolState.LIVE)]
    assert session.is_live("A")  # still subscribed and verified: the node is cut off
    node.change("A", asks=[(101, 1)])
    out = link.deliver()
    assert of(StateChanged, out) == [StateChanged("A", SymbolState.LIVE, SymbolState.STALE)]


def test_a_depth_limited_heartbeat_may_be_ahead_but_not_behind():
    link = live_link(depth=2)
    node, session = link.node, link.session
    seq = node.books["A"].seq
    node.wire.append(codec.heartbeat_message("A", EPOCH, seq + 5, 0))  # changes below its top 2
    assert of(Resync, link.deliver()) == []
    node.wire.append(codec.heartbeat_message("A", EPOCH, seq - 1, 0))
    assert of(Resync, link.deliver(1))[0].reason is ResyncReason.HEARTBEAT
    assert session.stats.resyncs == 1


# ----------------------------------------------------------------------------- reconnecting and resuming


def test_a_reconnection_resumes_from_the_last_verified_point_with_exactly_the_missed_deltas():
    link = live_link()
    node, session = link.node, link.session
    node.change("A", bids=[(100, 6)])
    link.deliver()
    held = session.books["A"].resume_point()
    out = link.disconnect()
    assert session.state("A") is SymbolState.STALE and not session.is_live("A")
    assert session.books["A"].synced  # kept, to resume from
    assert [e.state for e in of(StateChanged, out)] == [SymbolState.STALE]
    for i in range(5):  # missed while away
        node.change("A", asks=[(101, 10 + i)])
    out = link.connect()
    (sub,) = [m.subscribe for m in messages(out)]
    assert ResumePoint(sub.resume.epoch, sub.resume.seq) == held
    out = link.deliver()
    (started,) = of(Started, out)
    assert started.resumed and started.offered == held and not started.new_epoch
    updates = of(BookUpdated, out)
    assert [u.kind for u in updates] == ["resumed"] + ["delta"] * 5
    assert session.books["A"].seq == node.books["A"].seq and session.books["A"].book == book_of(node)
    assert session.stats.resumes == 1 and session.stats.snapshots == 1


def test_a_refused_resume_takes_a_snapshot_and_says_why():
    link = live_link()
    node, session = link.node, link.session
    link.disconnect()
    node.restart()
    node.change("A", bids=[(50, 1)])
    link.connect()
    out = link.deliver(1)
    (started,) = of(Started, out)
    assert (started.resumed, started.reason, started.new_epoch) == (False, "SNAPSHOT_REASON_STALE_EPOCH", True)
    assert started.offered == ResumePoint(EPOCH, 1)
    # Refused: not current, and never offered again.
    assert not session.books["A"].synced and session.state("A") is SymbolState.RESYNCING
    link.disconnect()
    (sub,) = [m.subscribe for m in messages(link.connect())]
    assert not sub.HasField("resume")
    link.deliver()
    assert session.books["A"].epoch == EPOCH + 1 and session.books["A"].book == book_of(node)


def test_history_exhausted_gives_a_fresh_snapshot():
    node = Node(history=2)
    session = SubscriberSession(["A"])
    link = Link(session, node)
    link.connect()
    link.deliver()
    link.disconnect()
    for i in range(5):
        node.change("A", bids=[(100, i + 1)])
    link.connect()
    out = link.deliver()
    assert of(Started, out)[0].reason == "SNAPSHOT_REASON_HISTORY_EXHAUSTED"
    assert [u.kind for u in of(BookUpdated, out)] == ["snapshot"]
    assert session.books["A"].book == book_of(node)


@pytest.mark.parametrize("where", ["seq", "epoch", "scales"])
def test_a_resume_answered_elsewhere_is_resynced(where):
    link = live_link()
    session = link.session
    session.close()
    (sub,) = [m.subscribe for m in messages(session.open())]  # the test answers it
    assert (sub.resume.epoch, sub.resume.seq) == (EPOCH, 1)
    epoch, seq, inst = EPOCH, 1, Instrument("A", 2, 4)
    if where == "seq":
        seq = 0
    elif where == "epoch":
        epoch += 1
    else:
        inst = Instrument("A", 3, 4)
    out = session.receive(codec.subscribed_message("A", sub.request_id, True, None, epoch, seq, 0, inst))
    (resync,) = of(Resync, out)
    assert resync.reason is ResyncReason.RESUME and isinstance(resync.error, ResumeMismatch)
    assert sent(out) == ["unsubscribe"] and of(BookUpdated, out) == []
    assert session.stats.resyncs == 1 and session.stats.resumes == 0


def test_a_resume_nobody_asked_for_is_resynced():
    node = Node()
    session = SubscriberSession(["A"])
    (sub,) = [m.subscribe for m in messages(session.open())]
    assert not sub.HasField("resume")
    answer = codec.subscribed_message("A", sub.request_id, True, None, EPOCH, 0, 0, node.books["A"].instrument)
    assert of(Resync, session.receive(answer))[0].reason is ResyncReason.RESUME


def test_an_answer_to_an_older_request_is_ignored():
    node = Node()
    session = SubscriberSession(["A"])
    out = session.open()
    old = messages(out)[0].subscribe.request_id
    out = session.close() + session.open()
    assert messages(out)[0].subscribe.request_id != old
    sb = node.books["A"]
    stale = codec.subscribed_message("A", old, False, SnapshotReason.NEW, EPOCH, 0, 0, sb.instrument)
    assert session.receive(stale) == []
    assert session.phase("A") is Phase.SUBSCRIBING


def test_a_resume_is_not_offered_for_a_book_whose_snapshot_has_not_arrived():
    link = live_link()
    node = link.node
    link.disconnect()
    node.restart()
    link.connect()
    link.deliver(1)  # STALE_EPOCH: the snapshot follows...
    link.disconnect()  # ...but the connection drops first
    (sub,) = [m.subscribe for m in messages(link.connect())]
    assert not sub.HasField("resume")


# ----------------------------------------------------------------------------- refusals


def error(code: int, symbol: str, request_id: int) -> ServerMessage:
    return codec.error_message(code, "no", symbol, request_id)


def test_an_unknown_symbol_never_held_is_rejected_for_good():
    node = Node(("A",))
    session = SubscriberSession(["A", "NOPE"])
    link = Link(session, node)
    link.connect()
    out = link.deliver()
    (rejected,) = of(Rejected, out)
    assert rejected.symbol == "NOPE" and isinstance(rejected.error, SubscriptionRejected)
    assert rejected.error.code == ErrorCode.ERROR_CODE_UNKNOWN_SYMBOL
    assert of(ErrorReceived, out)[0].outcome is ErrorOutcome.REJECTED
    assert session.symbols == ("A",) and session.failed == {"NOPE": rejected.error}
    assert session.state("NOPE") is SymbolState.FAILED and session.phase("NOPE") is Phase.FAILED
    assert session.is_live("A")
    # Nothing more is sent for it, on this connection or the next.
    link.disconnect()
    assert [m.subscribe.symbol for m in messages(link.connect())] == ["A"]
    assert isinstance(session.stats.last_error, ServerError) and session.stats.errors == 1
    # Asking again tries again.
    node.define("NOPE")
    out = link.take(session.subscribe("NOPE"))
    assert sent(out) == ["subscribe"] and "NOPE" not in session.failed
    link.deliver()
    assert session.is_live("NOPE")


def test_a_symbol_held_before_is_waited_for_when_a_restarted_node_does_not_know_it_yet():
    link = live_link()
    node, session = link.node, link.session
    link.disconnect()
    node.restart()
    node.known.discard("A")
    link.connect()
    out = link.deliver()
    (retry,) = of(RetrySubscribe, out)
    assert retry.symbol == "A" and retry.attempt == 1
    assert RefusalPolicy().retry_floor <= retry.delay <= RefusalPolicy().retry_base
    assert of(Rejected, out) == [] and session.phase("A") is Phase.IDLE
    assert of(ErrorReceived, out)[0].outcome is ErrorOutcome.RETRY
    assert session.state("A") is SymbolState.STALE  # the old book, kept
    node.define("A")
    node.change("A", bids=[(7, 7)])
    out = link.take(session.retry("A"))
    assert sent(out) == ["subscribe"]
    assert link.take(session.retry("A")) == []  # once per RetrySubscribe
    link.deliver()
    assert session.is_live("A") and session.books["A"].book == book_of(node)


def test_a_transient_refusal_is_retried_with_growing_delays_and_never_in_a_tight_loop():
    session = SubscriberSession(["A"], rng=random.Random(1), refusals=RefusalPolicy(retry_floor=0.3))
    delays = []
    rid = messages(session.open())[0].subscribe.request_id
    for _ in range(8):
        out = session.receive(error(ErrorCode.ERROR_CODE_INTERNAL, "A", rid))
        (retry,) = of(RetrySubscribe, out)
        delays.append(retry.delay)
        rid = messages(session.retry("A"))[0].subscribe.request_id
    assert all(d >= 0.3 for d in delays)
    assert max(delays) > 1.0  # the ceiling grew past the base of 0.5
    assert all(d <= 10.0 for d in delays)


def test_an_unknown_error_code_is_retried_like_internal():
    session = SubscriberSession(["A"])
    rid = messages(session.open())[0].subscribe.request_id
    out = session.receive(error(999, "A", rid))
    assert len(of(RetrySubscribe, out)) == 1
    assert of(ErrorReceived, out)[0].error.code_name == "ERROR_CODE_999"


def test_a_retry_waits_for_its_delay_even_when_the_application_asks_again():
    session = SubscriberSession(["A"])
    rid = messages(session.open())[0].subscribe.request_id
    session.receive(error(ErrorCode.ERROR_CODE_INTERNAL, "A", rid))
    assert session.subscribe("A") == []
    assert sent(session.retry("A")) == ["subscribe"]


def test_a_retry_due_after_the_connection_changed_sends_nothing():
    session = SubscriberSession(["A"])
    rid = messages(session.open())[0].subscribe.request_id
    session.receive(error(ErrorCode.ERROR_CODE_INTERNAL, "A", rid))
    session.close()
    assert session.retry("A") == []
    assert sent(session.open()) == ["subscribe"]
    assert session.retry("A") == []


def test_a_policy_may_ping_before_each_retry_and_wait_for_any_symbol():
    policy = RefusalPolicy(give_up=frozenset({ErrorCode.ERROR_CODE_INVALID_ARGUMENT}), ping_before_retry=True)
    session = SubscriberSession(["LATER"], refusals=policy)
    rid = messages(session.open())[0].subscribe.request_id
    out = session.receive(error(ErrorCode.ERROR_CODE_UNKNOWN_SYMBOL, "LATER", rid))
    assert len(of(RetrySubscribe, out)) == 1
    assert sent(session.retry("LATER")) == ["ping", "subscribe"]


def test_a_policy_that_never_gives_up_retries_even_permanent_refusals():
    session = SubscriberSession(["A"], refusals=RefusalPolicy(give_up=frozenset()))
    rid = messages(session.open())[0].subscribe.request_id
    out = session.receive(error(ErrorCode.ERROR_CODE_TOO_MANY_SUBSCRIPTIONS, "A", rid))
    assert len(of(RetrySubscribe, out)) == 1 and session.failed == {}
    assert ErrorCode.ERROR_CODE_TOO_MANY_SUBSCRIPTIONS in PERMANENT_REFUSALS


def test_already_subscribed_starts_the_symbol_over():
    link = live_link()
    node, session = link.node, link.session
    link.disconnect()
    link.take(session.open())
    node.subs.add("A")  # the node still holds an older subscription
    node.wire.clear()
    node.handle(node.requests[-1])
    out = link.deliver(1)
    assert of(ErrorReceived, out)[0].outcome is ErrorOutcome.RESYNC
    assert of(Resync, out)[0].reason is ResyncReason.ALREADY_SUBSCRIBED
    assert sent(out) == ["unsubscribe"] and not session.books["A"].synced
    link.deliver()
    assert session.is_live("A") and session.books["A"].book == book_of(node)


def test_an_error_answering_the_unsubscribe_moves_on_to_the_fresh_subscribe():
    link = live_link()
    node, session = link.node, link.session
    node.change("A", bids=[(100, 9)])
    node.wire[-1].delta.checksum ^= 1
    node.subs.discard("A")  # the node forgot it meanwhile: NOT_SUBSCRIBED follows
    out = link.deliver()
    assert [e.outcome for e in of(ErrorReceived, out)] == [ErrorOutcome.LEFT]
    assert session.is_live("A") and session.books["A"].book == book_of(node)


def test_an_error_that_answers_no_request_is_only_reported():
    link = live_link()
    out = link.session.receive(error(ErrorCode.ERROR_CODE_INTERNAL, "", 0))
    assert [(e.outcome, e.symbol) for e in of(ErrorReceived, out)] == [(ErrorOutcome.UNRELATED, "")]
    assert messages(out) == [] and link.session.is_live("A")


# ----------------------------------------------------------------------------- the application's requests


def test_another_depth_leaves_and_comes_back_with_a_fresh_snapshot():
    link = live_link()
    node, session = link.node, link.session
    out = link.take(session.subscribe("A", 2))
    assert sent(out) == ["unsubscribe"]
    assert link.take(session.subscribe("A", 2)) == []  # already on its way
    link.deliver()
    assert node.requests[-1].subscribe.depth == 2 and not node.requests[-1].subscribe.HasField("resume")
    assert session.books["A"].depth == 2 and session.is_live("A")
    assert link.take(session.subscribe("A", 2)) == []  # same depth: nothing to do


def test_unsubscribing_forgets_the_book_and_ignores_what_was_in_flight():
    link = live_link(("A", "B"))
    node, session = link.node, link.session
    node.change("A", bids=[(100, 8)])
    out = link.take(session.unsubscribe("A"))
    assert sent(out) == ["unsubscribe"] and "A" not in session.books and session.symbols == ("B",)
    out = link.deliver()
    assert of(BookUpdated, out) == [] and of(StateChanged, out) == []
    assert session.phase("A") is None and session.state("A") is None
    link.disconnect()
    assert [m.subscribe.symbol for m in messages(link.connect())] == ["B"]


def test_unsubscribing_while_disconnected_sends_nothing():
    session = SubscriberSession(["A"])
    assert session.unsubscribe("A") == [] and session.symbols == () and session.phase("A") is None
    assert session.open() == []


def test_subscribe_refuses_an_empty_symbol_and_a_negative_depth():
    session = SubscriberSession()
    with pytest.raises(ValueError):
        session.subscribe("")
    with pytest.raises(ValueError):
        session.subscribe("A", -1)
    with pytest.raises(ValueError):
        SubscriberSession(interval_ms=-1)


def test_ping_and_pong():
    session = SubscriberSession()
    rid, msg = session.ping()
    assert msg.ping.request_id == rid != 0
    assert session.receive(codec.pong_message(rid, 42)) == [PongReceived(rid, 42)]


# ----------------------------------------------------------------------------- frames


def test_raw_frames_in_either_encoding():
    node = Node()
    node.change("A", bids=[(100, 5)])
    session = SubscriberSession(["A"])
    for m in messages(session.open()):
        node.handle(m)
    subscribed, snapshot = node.wire
    session.receive_frame(codec.to_json(subscribed))
    out = session.receive_frame(snapshot.SerializeToString())
    assert [u.kind for u in of(BookUpdated, out)] == ["snapshot"]


@pytest.mark.parametrize(
    "frame",
    [b"\xff\xff\xff", "not json", '{"delta":{"symbol":"A","bids":[{"price":"1","size":"-5"}]}}'],
    ids=["binary", "text", "negative-size"],
)
def test_an_undecodable_frame_is_reported_and_changes_nothing(frame):
    link = live_link()
    session = link.session
    before = session.books["A"].book.copy()
    out = session.receive_frame(frame)
    assert len(of(MalformedReceived, out)) == 1 and session.stats.malformed == 1
    assert session.books["A"].book == before and session.is_live("A")


def test_kinds_newer_than_this_program_are_ignored():
    assert SubscriberSession(["A"]).receive(ServerMessage()) == []


# ----------------------------------------------------------------------------- reconnecting


def test_reconnect_delays_follow_the_status_and_retry_after():
    policy = ReconnectPolicy(Backoff(0.5, 4.0, rng=random.Random(2)))
    for status in (401, 403, 426, 400):
        assert policy.after_status(status) is None
    assert policy.after_status(429, 7.0) >= 7.0
    assert policy.after_status(503, None) <= 4.0
    assert policy.after_status(500) is not None
    assert policy.backoff.attempt == 3
    policy.after_connection(delivered=False)
    assert policy.backoff.attempt == 4
    assert policy.after_connection(delivered=True) <= 0.5 and policy.backoff.attempt == 1


def test_retry_after_reads_seconds_and_http_dates_against_the_time_given():
    assert retry_after_seconds("5", now=0.0) == 5.0
    assert retry_after_seconds(" -3 ", now=0.0) == 0.0
    assert retry_after_seconds("99999", now=0.0) == 3600.0
    assert retry_after_seconds("Thu, 01 Jan 1970 00:00:30 GMT", now=10.0) == 20.0
    for bad in (None, "", "soon", "nan"):
        assert retry_after_seconds(bad, now=0.0) is None


# ----------------------------------------------------------------------------- purity


SESSION = Path(__file__).resolve().parents[1] / "orderbook" / "session"


@pytest.mark.parametrize("path", sorted(SESSION.glob("*.py")), ids=lambda p: p.name)
def test_the_session_imports_only_the_core_the_codecs_and_the_standard_library(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            if top == "orderbook":
                assert name.startswith(("orderbook.core", "orderbook.wire", "orderbook.v1")), name
            else:
                assert top in sys.stdlib_module_names, name
                assert top not in {"asyncio", "socket", "time", "threading", "selectors", "ssl"}, name
