"""One subscriber connection's outbound side: a bounded queue of frames
written to the transport once per event-loop turn, never awaited.

A client that falls behind degrades before it is dropped. Once its queued
bytes (ours plus the transport's) pass half its limit, its live
subscriptions are moved to conflated updates (one merged delta per
interval: far fewer bytes). Past the limit it loses its pending deltas: its
subscriptions are marked lagging and get nothing more. Either way, once it
has drained it receives a fresh snapshot and is live again; one that stays
over the limit too long is closed. The same budget covers what the client
asks for (acks, pongs, errors, snapshots, replays): those are never dropped;
instead the client's input is not read while it is over (`accepts_input`).
Nothing here ever waits for a client, so
a slow one cannot slow anyone else.

A client with one subscription takes its group's shared write
(`write_shared`): the group's messages of a flush, joined once for all, in one
write. It falls back to its own queue (`catch_up`: the same messages one by
one, as `push` queues them) whenever that write would not be exactly what
its own queue would send: it has something else queued, it is degraded or
lagging, it joined mid-flush, or the write would take it past half its
limit, where the budget rules above decide message by message.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from typing import Protocol

from orderbook.core.ratelimit import TokenBucket
from orderbook.wire.codec import Encoding

from .channel import Subscription
from .outgoing import DEFLATE, Joined, Outgoing, frame_kind


class Socket(Protocol):
    """What the server's loops call on a connection's WebSocket
    (orderbook/server/subscriber_socket.py's SubscriberSocket)."""

    def end_connection(self, code: int = 1001, reason: str = "") -> None: ...

    async def close(self, code: int = 1000, reason: str = "") -> None: ...


class Connection:
    __slots__ = (
        "_backlog",
        "_clock",
        "_kind",
        "_limit",
        "_on_lag",
        "_pending",
        "_pending_bytes",
        "_schedule",
        "_scheduled",
        "_share",
        "_soft",
        "churn",
        "closed",
        "degraded",
        "encoding",
        "errors",
        "input_stalled",
        "lagging_since",
        "peer",
        "shared",
        "subs",
        "transport",
        "ws",
    )

    def __init__(
        self,
        transport: asyncio.WriteTransport,
        encoding: Encoding,
        limit: int,
        schedule: Callable[[Connection], None],
        on_lag: Callable[[Connection], None],
        peer: str = "",
        deflate: bool = False,
        share: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.transport = transport
        self.encoding = encoding
        # Which of a message's frames it gets: its encoding, compressed if it
        # negotiated permessage-deflate.
        self._kind = frame_kind(encoding, deflate)
        self.subs: dict[str, Subscription] = {}
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._backlog = 0  # transport buffer size seen at the last flush
        self._limit = limit
        self._soft = limit // 2
        self.degraded = False  # its live subscriptions are (to be) conflated
        self._schedule = schedule
        self._scheduled = False
        self.lagging_since: float | None = None
        self._on_lag = on_lag
        self.errors = 0
        self.peer = peer
        self.closed = False
        self.ws: Socket | None = None  # the edge's WebSocket object, for closing
        self.input_stalled = False  # its own replies filled its budget: its input waits
        self.churn: TokenBucket | None = None  # subscribe/unsubscribe rate (--churn-rate)
        self._share = share  # may take shared writes (else always its own queue)
        self.shared: Subscription | None = None  # its subscription on a shared write
        self._clock = clock  # the hub's loop time, for lag marks made while catching up

    # Shared writes --------------------------------------------------------------
    def share(self, sub: Subscription) -> bool:
        """Whether `sub`, joining a group's live set, takes the shared write:
        only a client's sole subscription does (several subscriptions'
        messages interleave, which one write per group cannot keep). A second
        subscription moves the first to its own queue."""
        shared = self.shared
        if shared is not None and shared is not sub:
            assert shared.fan is not None
            shared.fan.demote(shared)
            self.shared = None
        if not self._share or len(self.subs) > 1 or self.closed:
            return False
        self.shared = sub
        return True

    def unshare(self, sub: Subscription) -> None:
        if self.shared is sub:
            self.shared = None

    def catch_up(self) -> None:
        """Queue, one by one, the group's waiting messages its shared
        subscription has not been given: anything queued after them then
        follows them, as without sharing."""
        sub = self.shared
        if sub is None:
            return
        fan = sub.fan
        assert fan is not None
        msgs = fan.msgs
        skip = sub.skip
        n = len(msgs)
        if skip < n:
            sub.skip = n
            now = self._clock()
            for out in msgs[skip:]:
                self.push(sub, out, now)

    # Queueing -------------------------------------------------------------------
    def send(self, out: Outgoing) -> None:
        """Queue a control or resync message; never dropped."""
        self._queue(out.frames[self._kind] or out.build(self._kind))

    def send_frame(self, data: bytes) -> None:
        """Queue an already framed control frame (a pong); never dropped."""
        self._queue(data)

    def accepts_input(self, now: float) -> bool:
        """Whether the client's next request may be handled: its replies are
        never dropped, so once its queued bytes pass the budget (the buffer
        limit) its input waits until they drain to a quarter of it. Over the
        budget it counts as lagging: the lag sweep closes it (1013) after
        slow_client_timeout, subscriptions or not."""
        buffered = self.buffered()
        if not self.input_stalled:
            if buffered <= self._limit:
                return True
            self.input_stalled = True
        elif buffered <= self._limit // 4:
            self.input_stalled = False
            return True
        if self.lagging_since is None:
            self.lagging_since = now
            self._on_lag(self)
        return False

    def push(self, sub: Subscription, out: Outgoing, now: float) -> None:
        """Queue a stream message for `sub`, or drop it if the client is over its limit."""
        # The fan-out's innermost step, once per subscriber per message: kept flat.
        if sub.lagging or self.closed:
            return
        pending_bytes = self._pending_bytes
        if pending_bytes + self._backlog > self._soft and not self._room_for(sub, pending_bytes, now):
            return
        # Built once per message and kind (compressed or not), then shared.
        data = out.frames[self._kind] or out.build(self._kind)
        self._pending.append(data)
        self._pending_bytes = pending_bytes + len(data)
        if not self._scheduled:
            self._scheduled = True
            self._schedule(self)

    def _room_for(self, sub: Subscription, queued: int, now: float) -> bool:
        """Past half the limit: degrade (once); past the limit: drop and mark lagging."""
        queued += self._backlog
        if queued > self._limit and self.buffered() > self._limit:
            sub.lagging = True
            if self.lagging_since is None:
                self.lagging_since = now
                self._on_lag(self)
            return False
        if not self.degraded and self.buffered() > self._soft:
            # The hub's sweep moves its live subscriptions to conflated updates.
            self.degraded = True
            self._on_lag(self)
        return True

    def _queue(self, data: bytes) -> None:
        if self.closed:
            return
        if self.shared is not None:
            self.catch_up()  # what its group published before this goes first
        self._pending.append(data)
        self._pending_bytes += len(data)
        if not self._scheduled:
            self._scheduled = True
            self._schedule(self)

    def flush(self) -> None:
        """Write everything queued in one call (one syscall when the socket takes it)."""
        self._scheduled = False
        pending = self._pending
        if not pending:
            return
        data = pending[0] if len(pending) == 1 else b"".join(pending)
        pending.clear()
        self._pending_bytes = 0
        transport = self.transport
        if self.closed or transport.is_closing():
            self.closed = True
            return
        transport.write(data)
        self._backlog = transport.get_write_buffer_size()

    # Lag ------------------------------------------------------------------------
    def buffered(self) -> int:
        """Bytes queued for this client and not yet taken by its socket."""
        if self.transport.is_closing():
            return 0
        self._backlog = self.transport.get_write_buffer_size()
        return self._pending_bytes + self._backlog

    @property
    def limit(self) -> int:
        return self._limit

    @property
    def deflate(self) -> bool:
        """Whether it negotiated permessage-deflate."""
        return self._kind >= DEFLATE


def write_shared(members: Iterable[Subscription], joined: Joined) -> int:
    """At a flush: write a group's joined messages to each member whose own
    queue would write exactly that; the others catch up on their own queues.
    Returns the writes made. The fan-out's innermost loop, once per
    subscriber per flush, so it is one flat loop over the connections'
    fields rather than a method call each."""
    frames = joined.frames
    n = 0
    for sub in members:
        conn: Connection = sub.conn  # type: ignore[assignment]  # the only Subscriber
        if sub.skip or conn._pending or conn.degraded or sub.lagging or conn.closed:
            conn.catch_up()
            sub.skip = 0
            continue
        kind = conn._kind
        data = frames[kind] or joined.get(kind)
        if len(data) + conn._backlog > conn._soft:
            conn.catch_up()  # near its budget: message by message, as push decides
            sub.skip = 0
            continue
        transport = conn.transport
        if transport.is_closing():
            conn.closed = True
            continue
        transport.write(data)
        conn._backlog = transport.get_write_buffer_size()
        n += 1
    return n
