"""The fan-out hub: applies feed batches to the market, encodes each change
once, keeps the resume history, and queues the same frame bytes for every
subscriber. Everything here is synchronous: a subscription's ack and its
snapshot (or replay) are queued and the subscriber registered with no await
in between, so no change can fall between them or be sent twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable

from orderbook.core.errors import InvalidInput, UnknownSymbol
from orderbook.core.events import BatchResult, Delta, FeedBatch, Snapshot
from orderbook.core.instrument import Instrument
from orderbook.core.market import FEED, Market
from orderbook.core.resume import decide
from orderbook.wire import codec
from orderbook.wire.codec import Encoding, ErrorCode, SubscribeRequest

from .channel import Channel, ConflationGroup, Fanout, Subscription
from .connection import Connection, write_shared
from .counts import DELTA, HEARTBEAT, OTHER, SNAPSHOT, Counts
from .outgoing import Joined, Outgoing
from .settings import Settings

log = logging.getLogger("orderbook.hub")

MAX_FLUSH_GAP = 0.02  # seconds: the most a busy hub delays a write to coalesce
# Changes waiting that make a flush due at once, whatever the gap: a write of
# this many messages already spreads its cost over them; waiting longer only
# adds latency (docs/protocol.md §10, "When the server writes").
FLUSH_MESSAGES = 64
LATENCY_SAMPLE_INTERVAL = 0.01  # seconds: at most 100 publish-to-write samples a second


class SubscribeRejected(InvalidInput):
    """A subscriber's request refused, with the protocol error code its
    Error reply carries."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class Hub:
    def __init__(
        self,
        settings: Settings,
        epoch: int,
        loop: asyncio.AbstractEventLoop,
        wall_ns: Callable[[], int] = time.time_ns,
        counts: Counts | None = None,
        shared_write: bool | None = None,
    ) -> None:
        self.settings = settings
        # One write per group per flush for subscribers that can take it;
        # off, every subscriber has its own queue (the reference path).
        self.shared_write = settings.shared_write if shared_write is None else shared_write
        # The node's counters (/metrics); passed on to the hub that replaces this one.
        self.counts = counts if counts is not None else Counts()
        self.market = Market(epoch, settings.feed_limits)
        self.channels: dict[str, Channel] = {}
        self.connections: set[Connection] = set()
        self._loop = loop
        self._wall_ns = wall_ns
        self._dirty: list[Connection] = []
        self._fans: list[Fanout] = []  # groups with messages waiting for their shared write
        self._flush_handle: asyncio.Handle | asyncio.TimerHandle | None = None
        self._last_flush_end = 0.0
        self._flush_gap = 0.0
        self._flush_soon = False  # the pending flush runs at the end of this loop turn
        self._waiting = 0  # changes published since the last flush
        self._lagging: set[Connection] = set()
        self._over_limit: set[Connection] = set()  # lagging ones already counted as such
        # When the oldest change not yet written was published (publish-to-write latency).
        self._unwritten_since: float | None = None
        self._next_latency_sample = 0.0

    @property
    def slow_connections(self) -> int:
        """Connections now degraded or over their buffer limit (swept until they drain)."""
        return len(self._lagging)

    @property
    def stats_deltas(self) -> int:
        return self.counts.deltas

    @property
    def stats_resyncs(self) -> int:
        return self.counts.resyncs["slow_consumer"]

    @property
    def stats_slow_closed(self) -> int:
        return self.counts.slow_closed

    @property
    def stats_degraded(self) -> int:
        return self.counts.degraded

    @property
    def epoch(self) -> int:
        return self.market.epoch

    # Connections ---------------------------------------------------------------
    def new_connection(
        self, transport: asyncio.Transport, encoding: Encoding, peer: str = "", deflate: bool = False
    ) -> Connection:
        conn = Connection(
            transport,
            encoding,
            self.settings.client_buffer_limit,
            self._schedule,
            self._lagging.add,
            peer,
            deflate,
            self.shared_write,
            self._loop.time,
        )
        self.connections.add(conn)
        return conn

    def drop_connection(self, conn: Connection) -> None:
        conn.closed = True
        for sub in conn.subs.values():
            self._cancel(sub.channel.remove(sub))
        conn.subs.clear()
        self.connections.discard(conn)
        self._lagging.discard(conn)
        self._over_limit.discard(conn)

    def _schedule(self, conn: Connection) -> None:
        # Coalesce: every frame due to a client goes out in one write at the
        # next flush. An idle hub flushes when this loop turn ends; a busy one
        # waits as long after a flush as that flush took (at most
        # MAX_FLUSH_GAP), so under load each write carries many messages: a
        # write costs far more than the bytes in it, and latency grows by
        # about one flush rather than without bound.
        self._dirty.append(conn)
        if self._flush_handle is None:
            self._want_flush()

    def _fan_out(self, fan: Fanout, out: Outgoing, now: float) -> None:
        """Queue a stream message for a group: pushed to its direct members
        now, kept once for the shared write of the others."""
        for sub in fan.direct:
            sub.conn.push(sub, out, now)
        if fan.shared:
            fan.msgs.append(out)
            if not fan.queued:
                fan.queued = True
                self._fans.append(fan)
                if self._flush_handle is None:
                    self._want_flush()

    def _want_flush(self) -> None:
        loop = self._loop
        at = self._last_flush_end + self._flush_gap
        self._flush_soon = at <= loop.time()
        if self._flush_soon:
            self._flush_handle = loop.call_soon(self._flush)
        else:
            self._flush_handle = loop.call_at(at, self._flush)

    def _flush(self) -> None:
        start = self._loop.time()
        shared = 0
        if self._fans:
            # Groups first: a member that cannot take the shared write catches
            # up on its own queue, which is written below in the same flush.
            # The flush handle stays set meanwhile, so that schedules nothing.
            fans, self._fans = self._fans, []
            for fan in fans:
                shared += self._write_shared(fan)
        self._flush_handle = None
        self._waiting = 0
        dirty, self._dirty = self._dirty, []
        for conn in dirty:
            conn.flush()
        end = self._loop.time()
        self._last_flush_end = end
        self._flush_gap = min(end - start, MAX_FLUSH_GAP)
        counts = self.counts
        counts.writes += len(dirty) + shared  # once per flush, not per connection
        since = self._unwritten_since
        if since is not None:
            self._unwritten_since = None
            # The oldest change this flush wrote (the worst case of the flush),
            # at most once per LATENCY_SAMPLE_INTERVAL: a histogram update
            # costs microseconds, too much to pay on every flush.
            if end >= self._next_latency_sample:
                self._next_latency_sample = end + LATENCY_SAMPLE_INTERVAL
                counts.publish_to_write.observe(end - since)

    def _write_shared(self, fan: Fanout) -> int:
        """One group's waiting messages to its shared members: joined once per
        frame kind, one write each. Returns the writes made."""
        fan.queued = False
        n = write_shared(fan.shared, Joined(fan.msgs))
        fan.msgs = []
        return n

    # Ingest --------------------------------------------------------------------
    def ingest(self, batch: FeedBatch, source: str = FEED, takeover: bool = False) -> BatchResult:
        """Apply a batch from `source` (validated whole first, ownership
        included) and broadcast its deltas."""
        now = self._loop.time()
        channels = self.channels

        def publish(delta: Delta) -> None:
            # Runs while the book is at this delta's seq: depth views diff
            # against the book, so they must not see later updates of the batch.
            ch = channels.get(delta.symbol)
            if ch is None:
                ch = self._add_channel(delta.symbol, now)
            self._publish(ch, delta, now)

        result = self.market.apply(batch, self._wall_ns(), publish, source, takeover)
        for inst in result.new_instruments:
            if inst.symbol not in channels:
                self._add_channel(inst.symbol, now)
        return result

    def _add_channel(self, symbol: str, now: float) -> Channel:
        # A symbol defined in this epoch starts at seq 0.
        ch = self.channels[symbol] = Channel(self.market.get(symbol), self.settings.history, now, start_seq=0)
        return ch

    def restore(self, books: list[Snapshot]) -> None:
        """Start from a cluster snapshot: each symbol's history begins at its seq."""
        now = self._loop.time()
        self.market.restore(books)
        for snap in books:
            ch = self.channels.get(snap.symbol)
            if ch is not None:
                ch.changed()
            if ch is None or ch.subscriber_count() == 0:
                self.channels[snap.symbol] = Channel(
                    self.market.get(snap.symbol), self.settings.history, now, start_seq=snap.seq
                )

    def apply_log(self, instruments: Iterable[Instrument], deltas: Iterable[tuple[Delta, bytes]]) -> int:
        """Follow one entry of the cluster's log: define its symbols, apply
        each delta exactly as sequenced, and forward its bytes unchanged."""
        now = self._loop.time()
        market, channels = self.market, self.channels
        for inst in instruments:
            if market.define(inst) or inst.symbol not in channels:
                self._add_channel(inst.symbol, now)
        n = 0
        for delta, payload in deltas:
            ch = channels[delta.symbol]
            ch.seqbook.follow(delta)
            self._publish(ch, delta, now, payload)
            n += 1
        return n

    def _publish(self, ch: Channel, delta: Delta, now: float, payload: bytes | None = None) -> None:
        out = Outgoing(codec.delta_message(delta)) if payload is None else Outgoing(payload=payload)
        payload = out.payload
        ch.history.append(delta.seq, delta.prev_seq, payload, len(payload))
        if ch.snapshots:
            ch.changed()
        counts = self.counts
        counts.deltas += 1
        counts.level_changes += len(delta.bids) + len(delta.asks)
        ch.last_sent = now
        if ch.full:
            out.frame(Encoding.PROTOBUF)  # framed once here, not per subscriber
            self._fan_out(ch.fan, out, now)
            # Counted once per group, not per subscriber (inline: the hottest spot).
            n = len(ch.full)
            counts.messages[DELTA] += n
            counts.message_bytes[DELTA] += n * len(payload)
        for cg in ch.conflated.values():
            self._conflate(cg, delta, now)
        if ch.groups:
            for group, vd in ch.view_deltas(delta):
                if group.subs:
                    group.last_sent = now
                    vout = Outgoing(codec.delta_message(vd))
                    self._fan_out(group.fan, vout, now)
                    counts.sent(DELTA, len(group.subs), len(vout.payload))
                for cg in group.conflated.values():
                    self._conflate(cg, vd, now)
        handle = self._flush_handle
        if handle is not None:
            if self._unwritten_since is None:
                self._unwritten_since = now
            self._waiting += 1
            if self._waiting >= FLUSH_MESSAGES and not self._flush_soon:
                # Enough waiting to fill a write: no point waiting out the gap.
                handle.cancel()
                self._flush_handle = self._loop.call_soon(self._flush)
                self._flush_soon = True

    # Conflation ------------------------------------------------------------------
    def _conflate(self, cg: ConflationGroup, delta: Delta, now: float) -> None:
        cg.conflator.add(delta)
        if cg.timer is None:
            # At most one delta per interval; after a quiet spell the next
            # goes out at the end of this loop turn, merged with its batch.
            # Spaced from the last delta only: heartbeats do not count.
            cg.timer = self._loop.call_at(max(now, cg.last_delta + cg.interval), self._emit_conflated, cg)

    def _emit_conflated(self, cg: ConflationGroup) -> None:
        cg.timer = None
        delta = cg.conflator.take()
        if delta is None:
            return
        now = self._loop.time()
        cg.last_sent = cg.last_delta = now
        counts = self.counts
        if cg.subs:
            out = Outgoing(codec.delta_message(delta))
            self._fan_out(cg.fan, out, now)
            counts.sent(DELTA, len(cg.subs), len(out.payload))
        if cg.joining:
            for sub, held in cg.joining.items():
                if held < delta.seq:
                    own = Outgoing(codec.delta_message(delta._replace(prev_seq=held)))
                    sub.conn.push(sub, own, now)
                    counts.sent(DELTA, 1, len(own.payload))
                cg.fan.add(sub)
            cg.joining.clear()
        cg.sent_seq = delta.seq

    def _cancel(self, groups: list[ConflationGroup]) -> None:
        for cg in groups:
            if cg.timer is not None:
                cg.timer.cancel()
                cg.timer = None

    # Subscriptions -------------------------------------------------------------
    def subscribe(self, conn: Connection, req: SubscribeRequest) -> None:
        """Ack, then snapshot or replay, then register: all before returning."""
        s = self.settings
        ch = self.channels.get(req.symbol)
        if not req.symbol:
            raise SubscribeRejected(ErrorCode.ERROR_CODE_INVALID_ARGUMENT, "symbol is empty")
        if ch is None:
            raise SubscribeRejected(ErrorCode.ERROR_CODE_UNKNOWN_SYMBOL, str(UnknownSymbol(req.symbol)))
        if req.symbol in conn.subs:
            raise SubscribeRejected(
                ErrorCode.ERROR_CODE_ALREADY_SUBSCRIBED,
                f"already subscribed to {req.symbol!r}; unsubscribe first to resubscribe",
            )
        if len(conn.subs) >= s.max_subscriptions:
            raise SubscribeRejected(
                ErrorCode.ERROR_CODE_TOO_MANY_SUBSCRIPTIONS,
                f"at most {s.max_subscriptions} subscriptions per connection",
            )
        if req.depth > s.max_depth:
            raise SubscribeRejected(
                ErrorCode.ERROR_CODE_INVALID_ARGUMENT,
                f"depth {req.depth} exceeds the maximum {s.max_depth} (0 = full book)",
            )
        if req.interval_ms > s.max_interval_ms:
            raise SubscribeRejected(
                ErrorCode.ERROR_CODE_INVALID_ARGUMENT,
                f"interval_ms {req.interval_ms} exceeds the maximum {s.max_interval_ms} (0 = every change)",
            )
        now = self._loop.time()
        sb = ch.seqbook
        sub = Subscription(conn, ch, req.depth, req.interval_ms)
        if req.depth:
            group = ch.group(req.depth, now)
            decision = decide(sb.epoch, group.view.seq, ch.history, req.resume, req.depth)
        else:
            group = None
            decision = decide(sb.epoch, sb.seq, ch.history, req.resume, 0)
        if decision.resumed:
            assert req.resume is not None
            self.counts.resumes += 1
            self.reply(
                conn,
                OTHER,
                Outgoing(
                    codec.subscribed_message(
                        req.symbol,
                        req.request_id,
                        True,
                        None,
                        sb.epoch,
                        req.resume.seq,
                        0,
                        sb.instrument,
                        req.interval_ms,
                    )
                ),
            )
            for payload in decision.replay:
                self.reply(conn, DELTA, Outgoing(payload=payload))
            held = sb.seq
        else:
            if req.resume is not None and decision.reason is not None:
                self.counts.resyncs[decision.reason.name.lower()] += 1
            held, snapshot = ch.shared_snapshot(req.depth, self._wall_ns())
            self.reply(
                conn,
                OTHER,
                Outgoing(
                    codec.subscribed_message(
                        req.symbol,
                        req.request_id,
                        False,
                        decision.reason,
                        sb.epoch,
                        held,
                        req.depth,
                        sb.instrument,
                        req.interval_ms,
                    )
                ),
            )
            self.reply(conn, SNAPSHOT, snapshot)
        conn.subs[req.symbol] = sub
        ch.add(sub, req.interval_ms, held, now)

    def unsubscribe(self, conn: Connection, symbol: str, request_id: int) -> None:
        sub = conn.subs.pop(symbol, None)
        if sub is None:
            raise SubscribeRejected(ErrorCode.ERROR_CODE_NOT_SUBSCRIBED, f"not subscribed to {symbol!r}")
        self._cancel(sub.channel.remove(sub))
        self.reply(conn, OTHER, Outgoing(codec.unsubscribed_message(symbol, request_id)))

    def reply(self, conn: Connection, kind: int, out: Outgoing) -> None:
        """Queue a message of `kind` (counts.KINDS) that is never dropped, counted."""
        conn.send(out)
        self.counts.sent(kind, 1, len(out.payload))

    # Periodic duties -------------------------------------------------------------
    def heartbeat(self, stale: bool = False) -> None:
        """Tell subscribers of quiet symbols where the sequence stands (and
        whether the books may be behind their source)."""
        now = self._loop.time()
        quiet = now - self.settings.symbol_heartbeat
        wall = self._wall_ns()
        counts = self.counts
        for ch in self.channels.values():
            sb = ch.seqbook
            if ch.full and ch.last_sent <= quiet:
                ch.last_sent = now
                out = Outgoing(codec.heartbeat_message(sb.instrument.symbol, sb.epoch, sb.seq, wall, stale))
                self._fan_out(ch.fan, out, now)
                counts.sent(HEARTBEAT, len(ch.full), len(out.payload))
            for g in ch.groups.values():
                if g.subs and g.last_sent <= quiet:
                    g.last_sent = now
                    out = Outgoing(codec.heartbeat_message(sb.instrument.symbol, sb.epoch, g.view.seq, wall, stale))
                    self._fan_out(g.fan, out, now)
                    counts.sent(HEARTBEAT, len(g.subs), len(out.payload))
                for cg in g.conflated.values():
                    self._conflated_heartbeat(cg, sb.instrument.symbol, sb.epoch, quiet, now, wall, stale)
            for cg in ch.conflated.values():
                self._conflated_heartbeat(cg, sb.instrument.symbol, sb.epoch, quiet, now, wall, stale)

    def _conflated_heartbeat(
        self, cg: ConflationGroup, symbol: str, epoch: int, quiet: float, now: float, wall: int, stale: bool
    ) -> None:
        # With changes pending, a delta is on its way and says more. A
        # heartbeat restarts the heartbeat clock only, never the delta spacing.
        if cg.subs and not cg.conflator and cg.last_sent <= quiet:
            cg.last_sent = now
            out = Outgoing(codec.heartbeat_message(symbol, epoch, cg.sent_seq, wall, stale))
            self._fan_out(cg.fan, out, now)
            self.counts.sent(HEARTBEAT, len(cg.subs), len(out.payload))

    def sweep_lagging(self) -> list[Connection]:
        """Degrade clients that fall behind, resync those that drained, and
        return those stuck over their limit too long."""
        now = self._loop.time()
        stuck = []
        over_limit = self._over_limit
        for conn in list(self._lagging):
            if conn.closed:
                self._lagging.discard(conn)
                over_limit.discard(conn)
                continue
            if conn.lagging_since is not None and conn not in over_limit:
                # Went over its limit since the last sweep: deltas dropped or input paused.
                over_limit.add(conn)
                self.counts.lagging += 1
            if conn.buffered() <= conn.limit // 4:
                self._recover(conn)
                self._lagging.discard(conn)
                over_limit.discard(conn)
            elif conn.lagging_since is not None and now - conn.lagging_since > self.settings.slow_client_timeout:
                stuck.append(conn)
            elif conn.degraded:
                self._degrade(conn, now)
        return stuck

    def _degrade(self, conn: Connection, now: float) -> None:
        """Move the client's live subscriptions to conflated updates."""
        interval = self.settings.degrade_interval_ms
        for sub in conn.subs.values():
            if sub.degraded or sub.interval_ms or sub.lagging:
                continue
            ch = sub.channel
            # Every change so far was queued for it: it holds the current seq.
            held = ch.groups[sub.depth].view.seq if sub.depth else ch.seqbook.seq
            sub.degraded = True
            self._cancel(ch.move(sub, interval, held, now))
            self.counts.degraded += 1

    def _recover(self, conn: Connection) -> None:
        """A drained client: fresh snapshots where it lost or merged changes, then live again."""
        wall = self._wall_ns()
        now = self._loop.time()
        for sub in conn.subs.values():
            if not (sub.lagging or sub.degraded):
                continue
            ch = sub.channel
            seq, snapshot = ch.shared_snapshot(sub.depth, wall)
            self.reply(conn, SNAPSHOT, snapshot)
            self.counts.resyncs["slow_consumer"] += 1
            if sub.degraded or sub.cgroup is not None:
                # It holds the snapshot's seq from here: live again, or back
                # to the conflation it asked for.
                sub.degraded = False
                self._cancel(ch.move(sub, sub.interval_ms, seq, now))
            sub.lagging = False
        conn.lagging_since = None
        conn.degraded = False

    def subscriber_count(self) -> int:
        return sum(ch.subscriber_count() for ch in self.channels.values())
