"""Cheap WebSocket subscribers for the fan-out benchmark, in their own process.

Each subscriber is a bare asyncio Protocol: the upgrade request is written by
hand, and after it only WebSocket frame headers are read to count messages
(no protobuf decoding, no per-message objects), so that this process is not
what limits the rate being measured. A few sampled subscribers also read
each message's timestamp to measure latency. Pings are answered.

Driven by bench_fanout.py over stdin/stdout, one JSON object per line:

    {"cmd": "connect", "n": 1000, "sample": 50}   -> {"ready": 1000, ...}
    {"cmd": "stats"}                              -> frames, bytes, recvs, cpu, ...
    {"cmd": "flood", "batch": 10, "window": 64}   (ours: publish through /feed)
    {"cmd": "stop"}                               -> {"sent": updates, "complete": ...}
    {"cmd": "wait_frames", "frames": F}           -> {"complete": received == F, ...}
    {"cmd": "lowat", "bytes": 2048}               SO_RCVLOWAT on the subscriber sockets
    {"cmd": "lat_start"} / {"cmd": "lat_stop"}    -> latency percentiles
    {"cmd": "quit"}

    python benchmarks/loadgen.py --url ws://127.0.0.1:P/ws --kind ours|baseline \
        [--feed-url ws://127.0.0.1:P/feed --feed-token T]

The same module holds the raw /feed publisher and the update stream that the
benchmark publishes into our server.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import resource
import socket
import struct
import sys
import time
from array import array
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from orderbook.core.events import BookUpdate, FeedBatch  # noqa: E402
from orderbook.core.instrument import Instrument  # noqa: E402
from orderbook.wire import codec  # noqa: E402

# ----------------------------------------------------------------------------- the published stream

SYMBOL = "FAN"
INSTRUMENT = Instrument(SYMBOL, price_scale=2, size_scale=8, base="FAN", quote="USD", venue="bench")
LEVELS = 20  # per side
_MID = 5_000_000
_SIZE = 100_000_000
# A fixed, realistic event time for flood batches, so that their deltas have
# the same size as the paced ones (which carry the due time there).
FLOOD_EVENT_NS = 1_700_000_000_000_000_000


def initial_book() -> BookUpdate:
    bids = tuple((_MID - 1 - i, _SIZE + 1000 * i) for i in range(LEVELS))
    asks = tuple((_MID + 1 + i, _SIZE + 1000 * i) for i in range(LEVELS))
    return BookUpdate(SYMBOL, bids=bids, asks=asks, replace=True, event_time_ns=FLOOD_EVENT_NS)


def update(g: int, event_ns: int = FLOOD_EVENT_NS) -> BookUpdate:
    """The g-th update: walks the 2 x LEVELS levels in turn and alternates
    each level's size, so every update changes the book (one delta each)."""
    level = g % (2 * LEVELS)
    i = level % LEVELS
    size = _SIZE + 1000 * i + 1 + (g // (2 * LEVELS)) % 2
    if level < LEVELS:
        return BookUpdate(SYMBOL, bids=((_MID - 1 - i, size),), event_time_ns=event_ns)
    return BookUpdate(SYMBOL, asks=((_MID + 1 + i, size),), event_time_ns=event_ns)


def setup_batch() -> bytes:
    return codec.feed_message(FeedBatch(1, (INSTRUMENT,), (initial_book(),))).SerializeToString()


def flood_batches(batch: int) -> list[bytes]:
    """Encoded FeedBatches of `batch` updates, one full cycle of the stream
    (every update in it changes the book whatever batch follows)."""
    period = 4 * LEVELS  # the stream repeats after this many updates
    n = 1
    while (n * batch) % period:
        n += 1
    return [
        codec.feed_message(FeedBatch(k + 2, (), tuple(update(k * batch + j) for j in range(batch)))).SerializeToString()
        for k in range(n)
    ]


def mean_delta_payload(samples: int = 400) -> float:
    """Mean size in bytes of the Delta messages our server sends for this
    stream (the baselines send payloads of this size)."""
    from orderbook.core.market import Market

    m = Market(time.time_ns())
    m.apply(FeedBatch(1, (INSTRUMENT,), (initial_book(),)), time.time_ns())
    sizes: list[int] = []
    batch = FeedBatch(2, (), tuple(update(g, time.time_ns()) for g in range(samples)))
    m.apply(batch, time.time_ns(), lambda d: sizes.append(len(codec.delta_message(d).SerializeToString())))
    return sum(sizes) / len(sizes)


# ----------------------------------------------------------------------------- WebSocket bits


def upgrade_request(url: str, headers: dict[str, str] | None = None) -> bytes:
    parts = urlsplit(url)
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {parts.path or '/'}{'?' + parts.query if parts.query else ''} HTTP/1.1",
        f"Host: {parts.hostname}:{parts.port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        *(f"{k}: {v}" for k, v in (headers or {}).items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def client_frame(payload: bytes, opcode: int = 0x2) -> bytes:
    """A masked client frame (RFC 6455 5.3)."""
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    if n:
        key = (mask * (n // 4 + 1))[:n]
        masked = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")
    else:
        masked = b""
    return head + mask + masked


def _header_len(data: bytes, i: int, n: int) -> tuple[int, int]:
    """(header length, payload length) of the frame at i, or (0, 0) if the
    header is incomplete. Server frames are unmasked."""
    if i + 2 > n:
        return 0, 0
    ln = data[i + 1] & 0x7F
    if ln < 126:
        return 2, ln
    if ln == 126:
        if i + 4 > n:
            return 0, 0
        return 4, int.from_bytes(data[i + 2 : i + 4], "big")
    if i + 10 > n:
        return 0, 0
    return 10, int.from_bytes(data[i + 2 : i + 10], "big")


class Upgrading(asyncio.Protocol):
    """Writes the upgrade request and waits for `101`; subclasses handle frames."""

    def __init__(self, request: bytes) -> None:
        self.upgrade_bytes = request
        self.transport: asyncio.Transport | None = None
        self.upgraded: asyncio.Future = asyncio.get_running_loop().create_future()
        self.closed = False
        self.live = False  # upgraded: data is frames
        self._head = b""

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.write(self.upgrade_bytes)

    def data_received(self, data: bytes) -> None:
        # uvloop binds data_received once, so the switch to frames is a flag.
        if self.live:
            self.frames_received(data)
        else:
            self.handshake(data)

    def handshake(self, data: bytes) -> None:
        self._head += data
        end = self._head.find(b"\r\n\r\n")
        if end < 0:
            return
        head, rest = self._head[:end], self._head[end + 4 :]
        self._head = b""
        if not head.startswith(b"HTTP/1.1 101"):
            self.upgraded.set_exception(ConnectionError(head.split(b"\r\n", 1)[0].decode(errors="replace")))
            self.transport.close()
            return
        self.live = True
        self.upgraded.set_result(None)
        self.on_upgraded()
        if rest:
            self.frames_received(rest)

    def on_upgraded(self) -> None:
        pass

    def frames_received(self, data: bytes) -> None:
        raise NotImplementedError

    def control(self, opcode: int, payload: bytes) -> None:
        if opcode == 0x9:  # ping: the servers close peers that never answer
            self.transport.write(client_frame(payload, 0xA))
        elif opcode == 0x8:
            self.closed = True

    def connection_lost(self, exc) -> None:
        self.closed = True
        if not self.upgraded.done():
            self.upgraded.set_exception(exc or ConnectionError("closed during the upgrade"))


class Subscriber(Upgrading):
    """Counts data frames; a sampled one also records each message's latency."""

    def __init__(self, gen: LoadGen, request: bytes, hello: bytes, sampled: bool) -> None:
        super().__init__(request)
        self.gen = gen
        self.hello = hello
        self.frames = 0
        self.rest = b""
        self.ready: asyncio.Future = asyncio.get_running_loop().create_future()
        self.sampled = sampled

    def on_upgraded(self) -> None:
        if self.hello:
            self.transport.write(self.hello)
        elif not self.ready.done():
            self.ready.set_result(None)

    def data_received(self, data: bytes) -> None:
        # The hot path: walk the frame headers, nothing else.
        if not self.live:
            self.handshake(data)
            return
        if self.sampled:
            self.frames_received(data)
            return
        gen = self.gen
        gen.recvs += 1
        gen.bytes += len(data)
        if self.rest:
            data = self.rest + data
            self.rest = b""
        n = len(data)
        i = 0
        count = 0
        while i + 2 <= n:
            ln = data[i + 1]
            if ln < 126:
                end = i + 2 + ln
                if end > n:
                    break
                if data[i] & 0x08:
                    self.control(data[i] & 0x0F, data[i + 2 : end])
                else:
                    count += 1
                i = end
                continue
            h, ln = _header_len(data, i, n)
            if not h or i + h + ln > n:
                break
            if data[i] & 0x08:
                self.control(data[i] & 0x0F, data[i + h : i + h + ln])
            else:
                count += 1
            i += h + ln
        if i < n:
            self.rest = data[i:]
        self._counted(count)

    def _counted(self, count: int) -> None:
        if not count:
            return
        self.frames += count
        gen = self.gen
        gen.frames += count
        if self.frames >= gen.ready_frames and not self.ready.done():
            self.ready.set_result(None)
        if gen.waiter is not None and gen.frames >= gen.wake_at:
            gen.wake()

    def frames_received(self, data: bytes) -> None:
        # Sampled subscribers: the payloads too, for their timestamps.
        now = time.time_ns()
        gen = self.gen
        gen.recvs += 1
        gen.bytes += len(data)
        if self.rest:
            data = self.rest + data
            self.rest = b""
        n = len(data)
        i = 0
        count = 0
        while True:
            h, ln = _header_len(data, i, n)
            if not h or i + h + ln > n:
                break
            payload = data[i + h : i + h + ln]
            if data[i] & 0x08:
                self.control(data[i] & 0x0F, payload)
            else:
                count += 1
                if gen.recording:
                    gen.sample(payload, now)
            i += h + ln
        if i < n:
            self.rest = data[i:]
        self._counted(count)


class FeedClient(Upgrading):
    """A raw /feed publisher: writes encoded FeedMessages, counts the replies."""

    def __init__(self, request: bytes, on_reply=None) -> None:
        super().__init__(request)
        self.replies = 0
        self.errors: list[str] = []
        self.rest = b""
        self.on_reply = on_reply

    @classmethod
    async def connect(cls, feed_url: str, token: str, on_reply=None) -> FeedClient:
        parts = urlsplit(feed_url)
        req = upgrade_request(feed_url, {"Authorization": f"Bearer {token}"})
        loop = asyncio.get_running_loop()
        _, proto = await loop.create_connection(lambda: cls(req, on_reply), parts.hostname, parts.port)
        await proto.upgraded
        return proto

    def send(self, message: bytes) -> None:
        self.transport.write(client_frame(message))

    def frames_received(self, data: bytes) -> None:
        if self.rest:
            data = self.rest + data
        n, i = len(data), 0
        while True:
            h, ln = _header_len(data, i, n)
            if not h or i + h + ln > n:
                break
            payload = data[i + h : i + h + ln]
            if data[i] & 0x08:
                self.control(data[i] & 0x0F, payload)
            else:
                self.replies += 1
                reply = codec.parse_feed_reply(payload)
                if reply.WhichOneof("kind") == "error":
                    self.errors.append(reply.error.message)
                if self.on_reply is not None:
                    self.on_reply()
            i += h + ln
        self.rest = data[i:]

    async def request(self, message: bytes, timeout: float = 10.0) -> None:
        """Send one message and wait for its reply."""
        before = self.replies
        self.send(message)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.replies == before:
            if self.closed or loop.time() > deadline:
                raise ConnectionError("no reply from /feed")
            await asyncio.sleep(0.001)  # polling a counter under a deadline
        if self.errors:
            raise RuntimeError(f"/feed refused a batch: {self.errors[-1]}")

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(client_frame(struct.pack("!H", 1000), 0x8))
            self.transport.close()


# ----------------------------------------------------------------------------- the generator


def percentiles(values: array) -> dict[str, float]:
    """p50 / p99 / p99.9 / max in milliseconds (nearest rank)."""
    if not values:
        return {"count": 0}
    s = sorted(values)
    n = len(s)

    def rank(q: float) -> float:
        return s[min(n - 1, max(0, int(q * n + 0.999999) - 1))] / 1e6

    return {"count": n, "p50": rank(0.50), "p99": rank(0.99), "p999": rank(0.999), "max": s[-1] / 1e6}


class LoadGen:
    def __init__(self, args: argparse.Namespace) -> None:
        self.url = args.url
        self.kind = args.kind
        self.feed_url = args.feed_url
        self.feed_token = args.feed_token
        self.subs: list[Subscriber] = []
        self.frames = 0
        self.bytes = 0
        self.recvs = 0
        self.recording = False
        self.lat_due = array("q")
        self.lat_server = array("q")
        # Ours answers a subscribe with Subscribed and a Snapshot.
        self.ready_frames = 2 if self.kind == "ours" else 0
        self.waiter: asyncio.Future | None = None
        self.wake_at = 0
        self.flood_task: asyncio.Task | None = None
        self.flood_state: dict = {}
        self.lowat = 1
        self.feed: FeedClient | None = None
        if self.kind == "ours":
            self.hello = client_frame(codec.subscribe_message(SYMBOL, 0).SerializeToString())
        else:
            self.hello = b""

    # Latency samples --------------------------------------------------------------
    def sample(self, payload: bytes, now: int) -> None:
        if self.kind == "ours":
            msg = codec.ServerMessage.FromString(payload)
            if msg.WhichOneof("kind") == "delta":
                d = msg.delta
                self.lat_due.append(now - d.event_time_ns)
                self.lat_server.append(now - d.publish_time_ns)
        elif len(payload) >= 16:
            self.lat_due.append(now - struct.unpack_from("<q", payload, 8)[0])

    def wake(self) -> None:
        w, self.waiter = self.waiter, None
        if w is not None and not w.done():
            w.set_result(None)

    # Commands -----------------------------------------------------------------------
    async def connect(self, n: int, sample: int, concurrency: int = 64) -> dict:
        parts = urlsplit(self.url)
        loop = asyncio.get_running_loop()
        start = len(self.subs)
        every = max(1, n // sample) if sample else 0
        gate = asyncio.Semaphore(concurrency)
        failures = 0

        async def one(k: int) -> None:
            nonlocal failures
            sampled = bool(every) and k % every == every // 2
            async with gate:
                for attempt in range(20):
                    try:
                        req = upgrade_request(self.url)
                        _, sub = await loop.create_connection(
                            lambda req=req: Subscriber(self, req, self.hello, sampled), parts.hostname, parts.port
                        )
                        await asyncio.wait_for(sub.upgraded, 30)
                        await asyncio.wait_for(sub.ready, 30)
                        self.subs.append(sub)
                        return
                    except (TimeoutError, OSError, ConnectionError):
                        failures += 1
                        await asyncio.sleep(0.05 * (attempt + 1))  # a full accept queue drains
                raise ConnectionError(f"subscriber {k} could not connect")

        t0 = time.perf_counter()
        await asyncio.gather(*(one(k) for k in range(n)))
        return {
            "ready": len(self.subs) - start,
            "total": len(self.subs),
            "sampled": sum(1 for s in self.subs if s.sampled),
            "seconds": time.perf_counter() - t0,
            "retries": failures,
        }

    def stats(self) -> dict:
        t = os.times()
        return {
            "frames": self.frames,
            "bytes": self.bytes,
            "recvs": self.recvs,
            "cpu": t.user + t.system,
            "t": time.monotonic(),
            "closed": sum(1 for s in self.subs if s.closed),
            "subs": len(self.subs),
        }

    async def flood(self, batch: int, window: int) -> None:
        """Publish as fast as the subscribers receive: at most `window`
        updates beyond what the average subscriber has received and beyond
        what the server has acknowledged, so no queue grows anywhere, yet
        the server always has the next batches waiting."""
        # Deliveries are seen in chunks of at least `lowat` bytes (~50 per
        # update): the window must hold several such chunks.
        window = max(window, 4 * batch, 3 * self.lowat // 50)
        payloads = flood_batches(batch)
        if self.feed is None:
            self.feed = await FeedClient.connect(self.feed_url, self.feed_token, on_reply=self.wake)
        feed = self.feed
        n = len(self.subs)
        base = self.frames
        replies0 = feed.replies
        st = self.flood_state = {"sent": 0, "batches": 0, "base": base, "running": True}
        k = 0
        loop = asyncio.get_running_loop()
        try:
            while st["running"]:
                delivered = (self.frames - base) // n
                in_flight = (st["batches"] - (feed.replies - replies0)) * batch
                if st["sent"] - delivered < window and in_flight < window:
                    feed.send(payloads[k])
                    k = (k + 1) % len(payloads)
                    st["sent"] += batch
                    st["batches"] += 1
                    continue
                self.wake_at = base + n * (st["sent"] - window) + 1
                self.waiter = loop.create_future()
                await self.waiter
        finally:
            self.waiter = None

    async def stop_flood(self) -> dict:
        st = self.flood_state
        st["running"] = False
        self.wake()
        if self.flood_task is not None:
            await self.flood_task
            self.flood_task = None
        # Every update must reach every subscriber: wait for the last ones.
        out = await self.wait_frames(st["base"] + len(self.subs) * st["sent"])
        return {
            "sent": st["sent"],
            "batches": st["batches"],
            **out,
            "feed_errors": self.feed.errors if self.feed else [],
        }

    def set_lowat(self, nbytes: int, bulk_only: bool = False) -> int:
        """SO_RCVLOWAT on the subscriber sockets: the kernel reports a socket
        readable only once that many bytes wait, so a server that writes one
        message per syscall still costs this process one read per many
        messages. It holds small messages back, so never on the sampled
        subscribers that time them (`bulk_only`)."""
        self.lowat = max(1, nbytes)
        n = 0
        for sub in self.subs:
            if bulk_only and sub.sampled:
                continue
            sock = sub.transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, self.lowat)
            n += 1
        return n

    async def wait_frames(self, expected: int, timeout: float = 10.0) -> dict:
        """Wait until `expected` frames have arrived in all; then exactly
        that many is a complete delivery."""
        if self.lowat > 1:
            self.set_lowat(1)  # the last few messages may sit below the mark
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        # Polled: an event set per frame would add work to every measured message.
        while self.frames < expected and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        return {"expected": expected, "received": self.frames, "complete": self.frames == expected}

    async def handle(self, cmd: dict) -> dict | None:
        c = cmd["cmd"]
        if c == "connect":
            return await self.connect(cmd["n"], cmd.get("sample", 0))
        if c == "stats":
            return self.stats()
        if c == "flood":
            self.flood_task = asyncio.ensure_future(self.flood(cmd["batch"], cmd["window"]))
            return {"flooding": True}
        if c == "stop":
            return await self.stop_flood()
        if c == "lowat":
            return {"sockets": self.set_lowat(cmd["bytes"], cmd.get("bulk_only", False))}
        if c == "wait_frames":
            return await self.wait_frames(cmd["frames"], cmd.get("timeout", 10.0))
        if c == "lat_start":
            self.lat_due = array("q")
            self.lat_server = array("q")
            self.recording = True
            return {"recording": True}
        if c == "lat_stop":
            self.recording = False
            return {"due": percentiles(self.lat_due), "server": percentiles(self.lat_server)}
        if c == "quit":
            return None
        return {"error": f"unknown command {c!r}"}


async def serve_commands(gen: LoadGen) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    print(json.dumps({"hello": True, "loop": type(loop).__module__}), flush=True)
    while line := await reader.readline():
        cmd = json.loads(line)
        try:
            out = await gen.handle(cmd)
        except Exception as exc:  # reported to the driver, which stops the run
            out = {"error": f"{type(exc).__name__}: {exc}"}
        if out is None:
            break
        print(json.dumps(out), flush=True)
    for s in gen.subs:
        if s.transport is not None:
            s.transport.abort()
    if gen.feed is not None:
        gen.feed.close()


def raise_fd_limit() -> None:
    """Each subscriber is a file descriptor; thousands need more than the
    usual soft limit of 1024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop  # installed with Sanic; a cheaper loop per event

        return uvloop.new_event_loop()
    except ImportError:
        return asyncio.new_event_loop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True, help="subscriber WebSocket URL")
    p.add_argument(
        "--kind",
        choices=("ours", "baseline"),
        required=True,
        help="ours: subscribe, Delta payloads; baseline: no request, payload = seq, due time (LE)",
    )
    p.add_argument("--feed-url", help="ours: /feed URL for flood publishing")
    p.add_argument("--feed-token", default="")
    args = p.parse_args()
    raise_fd_limit()
    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(serve_commands(LoadGen(args)))
    finally:
        loop.close()


if __name__ == "__main__":
    main()
