"""Hostile subscribers for the fairness tests and benchmarks/bench_attacks.py:
raw TCP WebSocket clients that send floods in one write, and watchers that
measure what the other clients see meanwhile (no test itself)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import socket
import struct
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from orderbook.core.events import FeedBatch
from orderbook.core.resume import ResumePoint
from orderbook.wire import codec

from .harness import ROOT, Publisher, Subscriber, instrument, update

OP_CONT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x2, 0x8, 0x9, 0xA


def client_frame(opcode: int, payload: bytes = b"", fin: bool = True) -> bytes:
    """A masked client frame with the all-zero key (the payload goes as is)."""
    n = len(payload)
    first = (0x80 if fin else 0) | opcode
    if n < 126:
        head = bytes((first, 0x80 | n))
    elif n < 65536:
        head = struct.pack("!BBH", first, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", first, 0x80 | 127, n)
    return head + b"\0\0\0\0" + payload


class RawClient:
    """A WebSocket client on a plain socket: handshake, then raw bytes."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, port: int, rcvbuf: int | None = None) -> RawClient:
        sock = socket.socket()
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 20)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 101"), head
        return cls(reader, writer)

    async def write(self, data: bytes) -> bool:
        """Send `data`; False if the server closed the connection meanwhile."""
        try:
            self.writer.write(data)
            await self.writer.drain()
            return True
        except (ConnectionError, OSError):
            return False

    async def read_frame(self, timeout: float = 10.0) -> tuple[int, bytes]:
        b0, b1 = await asyncio.wait_for(self.reader.readexactly(2), timeout)
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack("!H", await self.reader.readexactly(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", await self.reader.readexactly(8))[0]
        return b0 & 0x0F, await self.reader.readexactly(n)

    async def read_until_close(self, timeout: float = 10.0) -> tuple[int | None, list[tuple[int, bytes]]]:
        """Read frames until a close frame (its code) or EOF (None)."""
        frames: list[tuple[int, bytes]] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            try:
                op, payload = await self.read_frame(max(deadline - loop.time(), 0.01))
            except (asyncio.IncompleteReadError, ConnectionError):
                return None, frames
            if op == OP_CLOSE:
                return (int.from_bytes(payload[:2], "big") if payload else None), frames
            frames.append((op, payload))

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.transport.abort()


# ------------------------------------------------------------------ the floods


def churn_pairs(n: int, symbol: str) -> bytes:
    """n Subscribe/Unsubscribe pairs in one buffer (protobuf, binary frames)."""
    sub = client_frame(OP_BINARY, codec.encode(codec.subscribe_message(symbol, 0, None, 1), codec.Encoding.PROTOBUF))
    unsub = client_frame(OP_BINARY, codec.encode(codec.unsubscribe_message(symbol, 2), codec.Encoding.PROTOBUF))
    return (sub + unsub) * n


def app_pings(n: int) -> bytes:
    return client_frame(OP_BINARY, codec.encode(codec.ping_message(7), codec.Encoding.PROTOBUF)) * n


def ws_pings(n: int, size: int = 125) -> bytes:
    return client_frame(OP_PING, b"x" * size) * n


def empty_continuations(n: int) -> bytes:
    return client_frame(OP_BINARY, b"", fin=False) + client_frame(OP_CONT, b"", fin=False) * n


def resume_flood(n: int, symbol: str, epoch: int, seq: int) -> bytes:
    """n Subscribe(resume {epoch, seq})/Unsubscribe pairs in one buffer: each
    Subscribe makes the node replay its history after `seq`."""
    sub = client_frame(
        OP_BINARY, codec.encode(codec.subscribe_message(symbol, 0, ResumePoint(epoch, seq), 1), codec.Encoding.PROTOBUF)
    )
    unsub = client_frame(OP_BINARY, codec.encode(codec.unsubscribe_message(symbol, 2), codec.Encoding.PROTOBUF))
    return (sub + unsub) * n


def feed_bytes(batch_id: int, instruments=(), updates=()) -> bytes:
    """One /feed message, encoded ahead (a big one takes the client seconds)."""
    return codec.feed_message(FeedBatch(batch_id, tuple(instruments), tuple(updates))).SerializeToString()


async def publish_many(pub, messages: list[bytes], window: int = 500) -> list:
    """Send pre-encoded /feed messages `window` at a time, then their replies."""
    replies = []
    for i in range(0, len(messages), window):
        chunk = messages[i : i + window]
        for m in chunk:
            await pub.ws.send(m)
        for _ in chunk:
            replies.append(codec.parse_feed_reply(await asyncio.wait_for(pub.ws.recv(), 30)))
    return replies


async def handshake_storm(port: int, n: int, timeout: float = 30.0) -> dict[str, int]:
    """n WebSocket handshakes at once from this process: how many got each
    status ("101", "429", ..., or the exception's name). The 101s stay open
    until every handshake has an answer, then all are aborted."""
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    writers = []

    async def one() -> str:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writers.append(writer)
            writer.write(request)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
            return head.split(b" ", 2)[1].decode()
        except Exception as exc:
            return type(exc).__name__

    counts = Counter(await asyncio.gather(*(one() for _ in range(n))))
    for w in writers:
        with contextlib.suppress(Exception):
            w.transport.abort()
    return dict(counts)


async def handshake_storm_in_subprocess(port: int, n: int) -> dict[str, int]:
    """handshake_storm from another process, so the storm's own CPU does not
    delay this process's watchers."""
    code = (
        "import asyncio, json, sys; from tests.attacks import handshake_storm; "
        f"print(json.dumps(asyncio.run(handshake_storm({port}, {n}))))"
    )
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", code, cwd=ROOT, stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    return json.loads(out)


async def http_get_all(port: int, path: str, timeout: float = 30.0) -> tuple[int, int]:
    """GET `path` with Connection: close, read to EOF: (status, bytes read)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    n, first = 0, b""
    async with asyncio.timeout(timeout):
        while chunk := await reader.read(1 << 20):
            first = first or chunk
            n += len(chunk)
    writer.close()
    return int(first.split(b" ", 2)[1]), n


# ------------------------------------------------------------------ what the others see


class Watch:
    """Worst silence between messages of one subscriber, and /healthz latency."""

    def __init__(self) -> None:
        self.max_gap = 0.0
        self.messages = 0
        self.healthz_max = 0.0
        self.healthz_count = 0


async def watch_subscriber(sub, stop: asyncio.Event, watch: Watch) -> None:
    """Read (and verify, via the Subscriber's followers) until `stop`."""
    last = time.monotonic()
    while not stop.is_set():
        try:
            msg = await sub.recv(0.5)
        except TimeoutError:
            if not stop.is_set():  # no delta for 0.5 s while publishing
                watch.max_gap = max(watch.max_gap, time.monotonic() - last)
            continue
        now = time.monotonic()
        if msg.WhichOneof("kind") == "delta":
            watch.max_gap = max(watch.max_gap, now - last)
            last = now
            watch.messages += 1


# The probe's own address, as a load balancer's or an orchestrator's would be:
# new connections are started round-robin by address, so an attacker's storm
# from 127.0.0.1 queues its own connections, not the probe's.
PROBE_ADDRESS = "127.0.0.2"


async def watch_healthz(port: int, stop: asyncio.Event, watch: Watch, every: float = 0.05) -> None:
    while not stop.is_set():
        start = time.monotonic()
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(PROBE_ADDRESS, 0))
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        await writer.drain()
        await reader.read()
        writer.close()
        watch.healthz_max = max(watch.healthz_max, time.monotonic() - start)
        watch.healthz_count += 1
        await asyncio.sleep(every)


@dataclass
class Watched:
    """What `watched_symbol` yields: the publisher, the watch, the two
    watching subscribers, and what `prepare` returned."""

    pub: Publisher
    watch: Watch
    subscribers: tuple[Subscriber, Subscriber]
    prepared: object = None

    def gap_free(self) -> bool:
        """Every delta each subscriber saw came in seq order, none missing."""
        for s in self.subscribers:
            seqs = [seq for _, seq in s.seen.get(SYMBOL, [])]
            if seqs and seqs != list(range(seqs[0], seqs[0] + len(seqs))):
                return False
        return True

    def assert_unharmed(self, max_silence: float, max_healthz: float) -> None:
        """The watchers kept receiving every delta, /healthz kept answering."""
        w = self.watch
        assert w.max_gap < max_silence, f"a subscriber was silent {w.max_gap * 1000:.0f} ms"
        assert w.healthz_max < max_healthz, f"/healthz took {w.healthz_max * 1000:.0f} ms"
        assert w.healthz_count > 3 and w.messages > 20
        assert self.gap_free(), "a watching subscriber saw a gap"


SYMBOL = "TEST"


@contextlib.asynccontextmanager
async def watched_symbol(
    port: int, settle: float = 0.3, prepare: Callable[[Publisher], Awaitable[object]] | None = None
) -> AsyncIterator[Watched]:
    """On the node at `port`: a publisher changing SYMBOL every 20 ms, two
    verifying subscribers reading it and /healthz polled, all measured into a
    `Watch` until the block ends. `prepare(pub)` runs once the subscribers
    are live, before the measuring starts (the attack's own setup)."""
    async with Publisher.connect(f"ws://127.0.0.1:{port}/feed") as pub:
        await pub.send([instrument(SYMBOL)], [update(SYMBOL, bids=[(100, 1)], asks=[(101, 1)], replace=True)])
        stop = asyncio.Event()

        async def publish() -> None:
            i = 0
            while not stop.is_set():
                i += 1
                with contextlib.suppress(Exception):  # an attack may slow the node: the watch says so
                    await pub.send(updates=[update(SYMBOL, bids=[(100, 1 + i % 50)])])
                await asyncio.sleep(0.02)  # the steady rate the watchers measure against

        url = f"ws://127.0.0.1:{port}/ws"
        async with Subscriber.connect(url) as a, Subscriber.connect(url) as b:
            for s in (a, b):
                await s.subscribe(SYMBOL)
                await s.until(lambda s=s: SYMBOL in s.snapshots)
            prepared = await prepare(pub) if prepare is not None else None
            watch = Watch()
            tasks = [asyncio.create_task(publish()), asyncio.create_task(watch_healthz(port, stop, watch))]
            tasks += [asyncio.create_task(watch_subscriber(s, stop, watch)) for s in (a, b)]
            await asyncio.sleep(settle)  # steady state before the attack
            try:
                yield Watched(pub, watch, (a, b), prepared)
            finally:
                stop.set()
                await asyncio.gather(*tasks, return_exceptions=True)


def rss_mb(pid: int | str = "self") -> float:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
