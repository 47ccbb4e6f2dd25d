"""One symbol's broadcast state: its sequenced book, the history kept for
resume, and the subscribers grouped by what they receive (full book, or one
depth-limited view per depth)."""

from __future__ import annotations

from orderbook.core.depth import TopNView
from orderbook.core.events import Delta, Snapshot
from orderbook.core.history import History, HistoryLimits
from orderbook.core.sequencer import SequencedBook

from .connection import Subscription


class DepthGroup:
    """The subscribers of one depth; they share the view and its encoded deltas."""

    __slots__ = ("view", "subs", "last_sent")

    def __init__(self, view: TopNView, now: float) -> None:
        self.view = view
        self.subs: set[Subscription] = set()
        self.last_sent = now


class Channel:
    __slots__ = ("seqbook", "history", "full", "groups", "last_sent")

    def __init__(self, seqbook: SequencedBook, limits: HistoryLimits, now: float, start_seq: int) -> None:
        self.seqbook = seqbook
        # start_seq: the seq before the first change this channel will publish.
        self.history: History[bytes] = History(limits, start_seq=start_seq)
        self.full: set[Subscription] = set()
        self.groups: dict[int, DepthGroup] = {}
        self.last_sent = now

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

    def remove(self, sub: Subscription) -> None:
        if sub.depth:
            g = self.groups.get(sub.depth)
            if g is not None:
                g.subs.discard(sub)
                if not g.subs:
                    del self.groups[sub.depth]
        else:
            self.full.discard(sub)

    def subscriber_count(self) -> int:
        return len(self.full) + sum(len(g.subs) for g in self.groups.values())

    def view_deltas(self, delta: Delta) -> list[tuple[DepthGroup, Delta]]:
        """Each depth group's delta for a full-book delta (already applied)."""
        book = self.seqbook.book
        out = []
        for g in self.groups.values():
            vd = g.view.update(book, delta)
            if vd is not None:
                out.append((g, vd))
        return out
