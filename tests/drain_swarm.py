"""Thousands of lightweight subscribers for the drain test
(tests/test_drain.py) and benchmarks/bench_drain.py.

Each is an asyncio protocol around websockets' sans-I/O client: no task, no
queue per connection, so a few thousand fit in one process on a small
machine. Each subscribes to one symbol on its first node and checks every
Delta against the last seq it holds. When that node closes it with a reason
containing "reconnect" (a drain), it waits a jittered moment, as the Python
client does, connects to the next node and resumes from its (epoch, seq);
everything it receives there must continue the same sequence.
"""

from __future__ import annotations

import asyncio
import random
import resource
from collections.abc import Sequence
from dataclasses import dataclass, field

from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

from orderbook.core.resume import ResumePoint
from orderbook.wire import codec
from orderbook.wire.codec import stream_pb2

START_RESUMED = stream_pb2.START_RESUMED
SNAPSHOT_REASON_AHEAD = stream_pb2.SNAPSHOT_REASON_AHEAD


def raise_fd_limit(wanted: int) -> None:
    """Every subscriber is a file descriptor here too."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


@dataclass
class Close:
    at: float  # seconds after the swarm's t0
    code: int | None
    reason: str
    node: int


@dataclass(eq=False)
class SwarmSubscriber(asyncio.Protocol):
    swarm: Swarm
    index: int
    node: int = 0  # index in swarm.urls of the node it is on
    epoch: int | None = None
    seq: int | None = None  # the last seq it holds
    first_seq: int | None = None  # the seq of its snapshot
    seqs: list[int] = field(default_factory=list)  # every Delta's seq, in order
    snapshots: int = 0
    resumes: int = 0
    snapshot_reasons: list[int] = field(default_factory=list)  # why each Snapshot (Subscribed.reason)
    closes: list[Close] = field(default_factory=list)
    lived: list[tuple[int, float]] = field(default_factory=list)  # (node, seconds after t0) when live there
    problems: list[str] = field(default_factory=list)
    live_on: int | None = None  # the node it streams from, once subscribed there
    transport: asyncio.Transport | None = None
    ws: ClientProtocol | None = None

    # ---------------------------------------------------------------- connecting

    def connect(self) -> None:
        self.live_on = None
        task = asyncio.ensure_future(self._connect())
        self.swarm.connecting.add(task)
        task.add_done_callback(self.swarm.connecting.discard)

    async def _connect(self, attempts: int = 20) -> None:
        uri = parse_uri(self.swarm.urls[self.node])
        loop = asyncio.get_running_loop()
        for attempt in range(attempts):
            try:
                await loop.create_connection(lambda: self, uri.host, uri.port)
                return
            except OSError as exc:
                if attempt + 1 == attempts:
                    self.problems.append(f"cannot connect to node {self.node}: {exc}")
                    return
                await asyncio.sleep(0.05 * (attempt + 1))  # the listen queue was full: back off

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.ws = ClientProtocol(parse_uri(self.swarm.urls[self.node]), max_size=None)
        self.ws.send_request(self.ws.connect())
        self._flush()

    # ---------------------------------------------------------------- receiving

    def data_received(self, data: bytes) -> None:
        ws = self.ws
        assert ws is not None
        ws.receive_data(data)
        for event in ws.events_received():
            if isinstance(event, Response):
                if event.status_code != 101:
                    self.problems.append(f"node {self.node} answered HTTP {event.status_code}")
                    continue
                resume = ResumePoint(self.epoch, self.seq) if self.epoch is not None and self.seq is not None else None
                ws.send_binary(
                    codec.subscribe_message(self.swarm.symbol, 0, resume, self.index + 1).SerializeToString()
                )
            elif isinstance(event, Frame):
                if event.opcode is Opcode.BINARY:
                    self._message(codec.parse_server_message(event.data))
                elif event.opcode is Opcode.CLOSE:
                    self._closed()
        self._flush()

    def eof_received(self) -> bool | None:
        if self.ws is not None:
            self.ws.receive_eof()
        return None

    def _message(self, msg: stream_pb2.ServerMessage) -> None:
        kind = msg.WhichOneof("kind")
        if kind == "subscribed":
            if msg.subscribed.start == START_RESUMED:
                self.resumes += 1
                if msg.subscribed.epoch != self.epoch or msg.subscribed.seq != self.seq:
                    self.problems.append(f"resumed at {msg.subscribed.seq}, held {self.seq}")
                self._live()
            else:
                self.snapshot_reasons.append(msg.subscribed.reason)
        elif kind == "snapshot":
            s = msg.snapshot
            self.snapshots += 1
            self.epoch, self.seq = s.epoch, s.seq
            if self.first_seq is None:
                self.first_seq = s.seq
            self._live()
        elif kind == "delta":
            d = msg.delta
            if d.epoch != self.epoch or d.prev_seq != self.seq:
                self.problems.append(f"delta {d.seq} (prev {d.prev_seq}) after {self.seq}")
            self.seq = d.seq
            self.seqs.append(d.seq)
            self.swarm.newest = max(self.swarm.newest, d.seq)
        elif kind == "heartbeat":
            if msg.heartbeat.seq != self.seq:
                self.problems.append(f"heartbeat at {msg.heartbeat.seq}, held {self.seq}")
        elif kind == "error":
            self.problems.append(f"error: {msg.error.message}")

    def _live(self) -> None:
        if self.live_on is None:
            self.live_on = self.node
            self.swarm.live[self.node] += 1
            self.lived.append((self.node, self.swarm.now()))

    def _closed(self) -> None:
        ws = self.ws
        assert ws is not None
        rcvd = ws.close_rcvd
        code, reason = (rcvd.code, rcvd.reason) if rcvd is not None else (None, "")
        self.closes.append(Close(self.swarm.now(), code, reason, self.node))
        if self.live_on is not None:
            self.swarm.live[self.live_on] -= 1
            self.live_on = None

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.swarm.stopping:
            return
        last = self.closes[-1] if self.closes else None
        if last is None or last.node != self.node:
            self.problems.append(f"connection to node {self.node} lost without a close frame ({exc})")
            return
        if "reconnect" in last.reason and self.node + 1 < len(self.swarm.urls):
            self.node += 1
            delay = self.swarm.rng.uniform(0.0, self.swarm.jitter)
            asyncio.get_running_loop().call_later(delay, self.connect)
        else:
            self.problems.append(f"closed by node {self.node}: {last.code} {last.reason!r}")

    def _flush(self) -> None:
        ws, transport = self.ws, self.transport
        if ws is None or transport is None:
            return
        out = ws.data_to_send()
        if out:
            transport.write(b"".join(out))

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


class Swarm:
    """`n` subscribers of `symbol`, each starting on `urls[0]` and moving on
    along `urls` when drained. Reconnects wait uniform(0, `jitter`) seconds
    (the Python client's first delay after a connection that delivered)."""

    def __init__(self, urls: Sequence[str], symbol: str, n: int, jitter: float = 0.25, seed: int = 1) -> None:
        self.urls = list(urls)
        self.symbol = symbol
        self.jitter = jitter
        self.rng = random.Random(seed)
        self.subs = [SwarmSubscriber(self, i) for i in range(n)]
        self.live = [0] * len(self.urls)  # subscribers streaming from each node
        self.newest = 0  # the highest seq any subscriber received
        self.stopping = False
        self.connecting: set[asyncio.Future[None]] = set()
        self.loop = asyncio.get_running_loop()
        self.t0 = self.loop.time()
        raise_fd_limit(n + 256)

    def now(self) -> float:
        return self.loop.time() - self.t0

    async def connect_all(self, timeout: float, in_flight: int = 200) -> None:
        """Connect every subscriber to the first node, `in_flight` at a time,
        until each has its snapshot."""
        deadline = self.loop.time() + timeout
        for start in range(0, len(self.subs), in_flight):
            batch = self.subs[start : start + in_flight]
            for sub in batch:
                sub.connect()
            wanted = start + len(batch)
            await self.until(lambda n=wanted: self.live[0] >= n, deadline - self.loop.time(), "snapshots")

    async def until(self, pred, timeout: float, what: str) -> None:
        deadline = self.loop.time() + timeout
        while not pred():
            problems = self.problems()
            assert not problems, problems[:5]
            assert self.loop.time() < deadline, f"{what} not reached: {self.live} live per node"
            await asyncio.sleep(0.02)  # polling a condition under a deadline

    def problems(self) -> list[str]:
        return [f"#{s.index}: {p}" for s in self.subs for p in s.problems]

    def close_times(self, node: int = 0) -> list[float]:
        return sorted(c.at for s in self.subs for c in s.closes if c.node == node)

    def stop(self) -> None:
        self.stopping = True
        for sub in self.subs:
            sub.abort()
