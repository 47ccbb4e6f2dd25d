"""One symbol's broadcast state: its sequenced book, the history kept for
resume, and the subscribers grouped by what they receive: the full book or
one depth-limited view per depth, each either live (every change) or
conflated (one merged delta per interval, per interval). A Subscription is a
connection's membership of one channel; the connection is known here only by
what the fan-out calls on it (`Subscriber`), so this module does not import
the connection's.

Each live set has a `Fanout`: the stream messages published to the group
since the last flush, kept once for all its members instead of once per
member. At the flush each member that has nothing else queued gets them as
one shared write; the others (`direct` ones, whose client has several
subscriptions, so their messages interleave across groups, and any that
has its own replies or snapshots queued) get them one by one on their own
queue, so every client's byte stream is what it would be without sharing."""

from __future__ import annotations

import asyncio
from typing import Protocol

from orderbook.core.conflation import Conflator
from orderbook.core.depth import TopNView
from orderbook.core.events import Delta, Snapshot
from orderbook.core.history import History, HistoryLimits
from orderbook.core.sequencer import SequencedBook
from orderbook.wire import codec

from .outgoing import Outgoing


class Subscriber(Protocol):
    """What the fan-out needs of a subscriber's connection
    (orderbook/server/connection.py's Connection)."""

    def push(self, sub: Subscription, out: Outgoing, now: float) -> None: ...

    def share(self, sub: Subscription) -> bool: ...

    def unshare(self, sub: Subscription) -> None: ...

    def catch_up(self) -> None: ...


class Subscription:
    __slots__ = ("cgroup", "channel", "conn", "degraded", "depth", "fan", "interval_ms", "lagging", "skip")

    def __init__(self, conn: Subscriber, channel: Channel, depth: int, interval_ms: int = 0) -> None:
        self.conn = conn
        self.channel = channel
        self.depth = depth
        self.interval_ms = interval_ms  # as asked; 0 = every change
        self.lagging = False  # over the buffer limit: gets nothing until resynced
        self.degraded = False  # moved to conflated updates because its client fell behind
        self.cgroup: ConflationGroup | None = None
        # Set while it takes its group's shared write: the group, and how many
        # of the group's waiting messages it already has (or must not get).
        self.fan: Fanout | None = None
        self.skip = 0


class Fanout:
    """A group's live members (`subs`, the group's own set) split into those
    served by the shared write (`shared`) and those pushed one message at a
    time as each is published (`direct`), and the messages (`msgs`) waiting
    for the shared ones since the last flush."""

    __slots__ = ("direct", "msgs", "queued", "shared", "subs")

    def __init__(self, subs: set[Subscription]) -> None:
        self.subs = subs
        self.shared: set[Subscription] = set()
        self.direct: set[Subscription] = set()
        self.msgs: list[Outgoing] = []
        self.queued = False  # in the hub's list of groups to flush

    def add(self, sub: Subscription) -> None:
        self.subs.add(sub)
        if sub.conn.share(sub):
            sub.fan = self
            sub.skip = len(self.msgs)  # it joined after these: not for it
            self.shared.add(sub)
        else:
            self.direct.add(sub)

    def demote(self, sub: Subscription) -> None:
        """Off the shared write: what it is owed is queued for it now, in order."""
        sub.conn.catch_up()
        sub.conn.unshare(sub)
        self.shared.discard(sub)
        sub.fan = None
        sub.skip = 0
        if sub in self.subs:
            self.direct.add(sub)

    def discard(self, sub: Subscription) -> None:
        if sub.fan is self:
            self.demote(sub)
        self.direct.discard(sub)
        self.subs.discard(sub)


class ConflationGroup:
    """The subscribers of one (depth, interval): one merge, encoded once per interval.

    Members in `subs` all hold `sent_seq`. A subscriber that joins while
    changes are pending holds a later seq (its snapshot's): it waits in
    `joining` and gets the same merged changes labelled with its own
    `prev_seq` (see `Conflator`).

    Two clocks: `last_sent` is when anything (delta or heartbeat) last went
    out, and decides when a heartbeat is due; `last_delta` is when the last
    delta went out, and alone spaces deltas an interval apart. A heartbeat
    must not count as a delta, or the first change after a quiet spell would
    wait up to a whole interval."""

    __slots__ = (
        "conflator",
        "depth",
        "fan",
        "interval",
        "interval_ms",
        "joining",
        "last_delta",
        "last_sent",
        "sent_seq",
        "subs",
        "timer",
    )

    def __init__(self, symbol: str, depth: int, interval_ms: int, seq: int, now: float) -> None:
        self.interval_ms = interval_ms
        self.interval = interval_ms / 1000
        self.depth = depth
        self.conflator = Conflator(symbol)
        self.subs: set[Subscription] = set()
        self.fan = Fanout(self.subs)
        self.joining: dict[Subscription, int] = {}
        self.sent_seq = seq
        self.last_sent = now
        self.last_delta = float("-inf")  # no delta yet: the first change goes out at once
        self.timer: asyncio.TimerHandle | None = None  # the pending flush, if changes are waiting

    def join(self, sub: Subscription, held: int) -> None:
        sub.cgroup = self
        if self.conflator or held != self.sent_seq:
            self.joining[sub] = held
        else:
            self.fan.add(sub)

    def leave(self, sub: Subscription) -> None:
        self.fan.discard(sub)
        self.joining.pop(sub, None)
        sub.cgroup = None

    def __len__(self) -> int:
        return len(self.subs) + len(self.joining)


class DepthGroup:
    """The subscribers of one depth; they share the view and its encoded deltas."""

    __slots__ = ("conflated", "fan", "last_sent", "subs", "view")

    def __init__(self, view: TopNView, now: float) -> None:
        self.view = view
        self.subs: set[Subscription] = set()
        self.fan = Fanout(self.subs)
        self.last_sent = now
        self.conflated: dict[int, ConflationGroup] = {}


class Channel:
    __slots__ = ("conflated", "fan", "full", "groups", "history", "last_sent", "seqbook", "snapshots")

    def __init__(self, seqbook: SequencedBook, limits: HistoryLimits, now: float, start_seq: int) -> None:
        self.seqbook = seqbook
        # start_seq: the seq before the first change this channel will publish.
        self.history: History[bytes] = History(limits, start_seq=start_seq)
        self.full: set[Subscription] = set()
        self.fan = Fanout(self.full)
        self.groups: dict[int, DepthGroup] = {}
        self.last_sent = now
        self.conflated: dict[int, ConflationGroup] = {}  # interval_ms -> full-book group
        # depth -> the snapshot last encoded at the current seq, shared by every
        # subscriber that joins (or resyncs) before the next change.
        self.snapshots: dict[int, tuple[int, Outgoing]] = {}

    @property
    def symbol(self) -> str:
        return self.seqbook.instrument.symbol

    def group(self, depth: int, now: float) -> DepthGroup:
        g = self.groups.get(depth)
        if g is None:
            sb = self.seqbook
            g = self.groups[depth] = DepthGroup(TopNView(depth, sb.book, sb.seq), now)
        return g

    def snapshot_for(self, depth: int, now_ns: int) -> Snapshot:
        """A snapshot a subscriber of `depth` continues from without a gap."""
        snap = self.seqbook.snapshot(depth, now_ns)
        if depth:
            return self.groups[depth].view.snapshot(snap)
        return snap

    def shared_snapshot(self, depth: int, now_ns: int) -> tuple[int, Outgoing]:
        """`snapshot_for(depth)` as its seq and the encoded message, built and
        encoded once per (seq, depth): a storm of subscribers joining at one
        seq costs one snapshot, not one per subscriber. Its `time_ns` is when
        the first of them asked. Dropped at the next change (`changed`)."""
        hit = self.snapshots.get(depth)
        if hit is not None:
            return hit
        snap = self.snapshot_for(depth, now_ns)
        entry = self.snapshots[depth] = (snap.seq, Outgoing(codec.snapshot_message(snap)))
        return entry

    def changed(self) -> None:
        """The book moved on: snapshots taken before are stale."""
        self.snapshots.clear()

    def conflation_group(self, depth: int, interval_ms: int, now: float) -> ConflationGroup:
        groups = self.group(depth, now).conflated if depth else self.conflated
        cg = groups.get(interval_ms)
        if cg is None:
            seq = self.groups[depth].view.seq if depth else self.seqbook.seq
            cg = groups[interval_ms] = ConflationGroup(self.symbol, depth, interval_ms, seq, now)
        return cg

    def add(self, sub: Subscription, interval_ms: int, held: int, now: float) -> None:
        """Register `sub` (holding seq `held`) live or conflated at `interval_ms`."""
        if interval_ms:
            self.conflation_group(sub.depth, interval_ms, now).join(sub, held)
        elif sub.depth:
            self.group(sub.depth, now).fan.add(sub)
        else:
            self.fan.add(sub)

    def remove(self, sub: Subscription) -> list[ConflationGroup]:
        """Unregister `sub`; return conflation groups left empty (their timers must go)."""
        emptied = self._unregister(sub)
        g = self.groups.get(sub.depth) if sub.depth else None
        if g is not None and not g.subs and not g.conflated:
            del self.groups[sub.depth]
        return emptied

    def move(self, sub: Subscription, interval_ms: int, held: int, now: float) -> list[ConflationGroup]:
        """Re-register `sub` (holding `held`) live or conflated; its depth view stays."""
        emptied = self._unregister(sub)
        self.add(sub, interval_ms, held, now)
        return emptied

    def _unregister(self, sub: Subscription) -> list[ConflationGroup]:
        emptied = []
        cg = sub.cgroup
        if cg is not None:
            cg.leave(sub)
            if not len(cg):
                groups = self.groups[cg.depth].conflated if cg.depth in self.groups else self.conflated
                if groups.get(cg.interval_ms) is cg:
                    del groups[cg.interval_ms]
                emptied.append(cg)
        if sub.depth:
            g = self.groups.get(sub.depth)
            if g is not None:
                g.fan.discard(sub)
        else:
            self.fan.discard(sub)
        return emptied

    def subscriber_count(self) -> int:
        return (
            len(self.full)
            + sum(len(cg) for cg in self.conflated.values())
            + sum(len(g.subs) + sum(len(cg) for cg in g.conflated.values()) for g in self.groups.values())
        )

    def view_deltas(self, delta: Delta) -> list[tuple[DepthGroup, Delta]]:
        """Each depth group's delta for a full-book delta (already applied)."""
        book = self.seqbook.book
        out = []
        for g in self.groups.values():
            vd = g.view.update(book, delta)
            if vd is not None:
                out.append((g, vd))
        return out
