"""Real servers for tests: in-process (same event loop, real sockets) and
as a separate process (for kill/restart). Every start has a stop."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from ssl import SSLContext

from sanic import Sanic
from sanic.server.async_server import AsyncioServer

from orderbook.core.events import BookUpdate, FeedBatch
from orderbook.core.instrument import Instrument
from orderbook.server.app import PROTOCOL, create_app
from orderbook.server.hub import Hub
from orderbook.server.settings import Settings
from orderbook.session.backoff import Backoff
from orderbook.wire import codec

ROOT = Path(__file__).resolve().parents[1]
FEED_TOKEN = "feed-secret"
_names = itertools.count()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_settings(**overrides) -> Settings:
    """Settings for a test server (not a test itself)."""
    base = Settings(
        port=0,
        simulator=False,
        feed_token=FEED_TOKEN,
        symbol_heartbeat=3600.0,
        ping_interval=25.0,
        # Every test client comes from 127.0.0.1: the per-IP and handshake
        # limits are off unless a test turns them on (tests/test_limits.py).
        max_connections_per_ip=0,
        handshake_rate=0,
        global_handshake_rate=0,
    )
    return replace(base, **overrides)


class Endpoints:
    """The addresses of a test server listening on 127.0.0.1:port
    (wss:// and https:// when it serves TLS)."""

    port: int
    tls: bool = False

    @property
    def url(self) -> str:
        return f"ws{'s' if self.tls else ''}://127.0.0.1:{self.port}/ws"

    @property
    def feed_url(self) -> str:
        return f"ws{'s' if self.tls else ''}://127.0.0.1:{self.port}/feed"

    @property
    def http(self) -> str:
        return f"http{'s' if self.tls else ''}://127.0.0.1:{self.port}"


@dataclass
class InProcessServer(Endpoints):
    app: Sanic
    port: int
    server: AsyncioServer  # Sanic's server: its `connections` are the ones it tracks
    tls: bool = False

    @property
    def hub(self) -> Hub:
        return self.app.ctx.state.hub


@contextlib.asynccontextmanager
async def serve_in_process(
    settings: Settings | None = None, ssl: SSLContext | None = None
) -> AsyncIterator[InProcessServer]:
    """A server on this loop; with `ssl` (a server context) it serves
    wss:// and https://, as `serve --tls-cert --tls-key` does."""
    port = free_port()
    settings = replace(settings or test_settings(), port=port)
    app = create_app(settings, name=f"orderbook_test_{next(_names)}")
    # Sanic rewrites its own methods on the first start in a process; a second
    # app in the same process must not redo it.
    app.config.TOUCHUP = False
    app.config.MOTD = False
    server = await app.create_server(
        host="127.0.0.1", port=port, access_log=False, return_asyncio_server=True, protocol=PROTOCOL, ssl=ssl
    )
    assert server is not None
    await server.startup()
    await server.before_start()
    await server.after_start()
    try:
        yield InProcessServer(app, port, server, tls=ssl is not None)
    finally:
        await server.before_stop()
        for conn in list(server.connections):
            conn.close_if_idle()
            if conn.transport is not None:
                conn.transport.abort()
        await server.close()
        await server.after_stop()
        Sanic._app_registry.pop(app.name, None)


# ------------------------------------------------------------------ separate process


@dataclass
class ServerProcess(Endpoints):
    proc: subprocess.Popen
    port: int
    log_path: Path
    tls: bool = False

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


def start_server_process(
    tmp_path: Path, *args: str, port: int | None = None, timeout: float = 30.0, ssl: SSLContext | None = None
) -> ServerProcess:
    """`orderbook serve --port PORT *args`, ready. With TLS among `args`
    (--tls-cert, --tls-key), `ssl` is the client context that trusts it.
    `stop()` does not drain (--drain-seconds 0, unless `args` say otherwise)."""
    port = port or free_port()
    log_path = tmp_path / f"server-{port}-{time.monotonic_ns()}.log"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "orderbook.cli", "serve", "--port", str(port), "--drain-seconds", "0", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env=env,
        )
    sp = ServerProcess(proc, port, log_path, tls=ssl is not None)
    try:
        wait_ready(sp.http, timeout, proc, ssl)
    except BaseException:
        sp.kill()
        raise
    return sp


def wait_ready(http: str, timeout: float, proc: subprocess.Popen | None = None, ssl: SSLContext | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(http + "/readyz", timeout=1, context=ssl) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.05)  # polling a condition, bounded by the deadline
    raise TimeoutError(f"{http} not ready after {timeout}s")


# ------------------------------------------------------------------ cluster nodes


def readyz(http: str) -> dict:
    try:
        with urllib.request.urlopen(http + "/readyz", timeout=2) as r:
            return json.load(r)
    except urllib.error.HTTPError as e:
        return json.load(e)
    except OSError:
        return {}


def has_symbol(http: str, symbol: str) -> bool:
    try:
        with urllib.request.urlopen(http + "/symbols", timeout=2) as r:
            return any(s["symbol"] == symbol for s in json.load(r)["symbols"])
    except OSError:
        return False


async def until(pred, timeout: float = 20.0) -> None:
    """Poll a blocking predicate (HTTP calls) off the loop until it holds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await asyncio.to_thread(pred):
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.05)  # polling a condition under a deadline


async def eventually(pred, timeout: float = 10.0, what: str = "condition") -> None:
    """Poll a cheap in-process predicate on the loop (unlike `until`, which
    runs blocking ones in a thread) until it holds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not pred():
        assert loop.time() < deadline, f"{what} not reached"
        await asyncio.sleep(0.01)  # polling a condition under a deadline


async def sequencer_of(nodes):
    """Wait until exactly one of `nodes` sequences; return it."""
    await until(lambda: sum(readyz(n.http).get("role") == "sequencer" for n in nodes) == 1)
    return next(n for n in nodes if readyz(n.http).get("role") == "sequencer")


# ------------------------------------------------------------------ raw HTTP


async def read_http_head(reader: asyncio.StreamReader, timeout: float = 5.0) -> tuple[int, dict[str, str]]:
    """Read one HTTP response head: (status, headers with lower-cased names)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    return int(status_line.split()[1]), headers


async def http_request(
    port: int, path: str, method: str = "GET", headers: dict[str, str] | None = None, timeout: float = 5.0
) -> tuple[int, dict[str, str], bytes]:
    """One request over a fresh socket, the path sent as is (no
    normalisation): (status, lower-cased headers, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        writer.write(f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{extra}Connection: close\r\n\r\n".encode())
        status, got = await read_http_head(reader, timeout)
        length = int(got.get("content-length", "0"))
        body = await asyncio.wait_for(reader.readexactly(length), timeout) if length else b""
        return status, got, body
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def http_get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """`http_request` with GET."""
    return await http_request(port, path, "GET", headers)


# ------------------------------------------------------------------ publishing


class Publisher:
    """A /feed client: sends batches, waits for each reply."""

    def __init__(self, ws) -> None:
        self.ws = ws
        self._ids = itertools.count(1)

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(cls, feed_url: str, token: str = FEED_TOKEN, **kw) -> AsyncIterator[Publisher]:
        # `kw`: more options of websockets.connect (ssl=... for wss://).
        import websockets

        async with websockets.connect(
            feed_url, additional_headers={"Authorization": f"Bearer {token}"}, max_size=None, **kw
        ) as ws:
            yield cls(ws)

    async def send(self, instruments=(), updates=()):
        batch = FeedBatch(next(self._ids), tuple(instruments), tuple(updates))
        await self.ws.send(codec.feed_message(batch).SerializeToString())
        reply = codec.parse_feed_reply(await asyncio.wait_for(self.ws.recv(), 10))
        return reply


def instrument(symbol: str = "TEST", price_scale: int = 2, size_scale: int = 4, **kw) -> Instrument:
    return Instrument(symbol, price_scale, size_scale, **kw)


def update(symbol: str, bids=(), asks=(), replace: bool = False) -> BookUpdate:
    return BookUpdate(symbol, tuple(bids), tuple(asks), replace)


# ------------------------------------------------------------------ a strict test subscriber


class Subscriber:
    """A minimal subscriber for tests: one socket, one BookFollower per symbol,
    every message checked. Records each Delta's (epoch, seq) to prove there is
    no gap and no duplicate."""

    def __init__(self, ws, encoding: codec.Encoding = codec.Encoding.PROTOBUF) -> None:
        from orderbook.core.follower import BookFollower

        self.ws = ws
        self.encoding = encoding
        self.followers: dict[str, BookFollower] = {}
        self._follower_cls = BookFollower
        self.seen: dict[str, list[tuple[int, int]]] = {}
        self.acks: list = []
        self.errors: list = []
        self.snapshots: dict[str, int] = {}
        self.heartbeats: list = []
        self.unsubscribed: set[str] = set()
        self.pongs: list = []
        self._ids = itertools.count(1)

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(cls, url: str, encoding: codec.Encoding = codec.Encoding.PROTOBUF, **kw):
        import websockets

        subprotocols = [encoding.value] if encoding is codec.Encoding.JSON else None
        async with websockets.connect(url, subprotocols=subprotocols, max_size=None, **kw) as ws:
            yield cls(ws, encoding)

    def follower(self, symbol: str):
        f = self.followers.get(symbol)
        if f is None:
            f = self.followers[symbol] = self._follower_cls(symbol)
        return f

    async def send(self, msg) -> None:
        await self.ws.send(codec.encode(msg, self.encoding))

    async def subscribe(self, symbol: str, depth: int = 0, resume=None):
        rid = next(self._ids)
        await self.send(codec.subscribe_message(symbol, depth, resume, rid))
        return rid

    async def recv(self, timeout: float = 10.0):
        data = await asyncio.wait_for(self.ws.recv(), timeout)
        msg = codec.parse_server_message(data)
        kind = msg.WhichOneof("kind")
        if kind == "snapshot":
            s = codec.snapshot_from_pb(msg.snapshot)
            self.follower(s.symbol).apply_snapshot(s.epoch, s.seq, s.bids, s.asks, s.checksum, s.instrument, s.depth)
            self.snapshots[s.symbol] = self.snapshots.get(s.symbol, 0) + 1
        elif kind == "delta":
            d = codec.delta_from_pb(msg.delta)
            self.follower(d.symbol).apply_delta(d.epoch, d.seq, d.prev_seq, d.bids, d.asks, d.checksum)
            self.seen.setdefault(d.symbol, []).append((d.epoch, d.seq))
        elif kind == "subscribed":
            self.acks.append(msg.subscribed)
        elif kind == "error":
            self.errors.append(msg.error)
        elif kind == "unsubscribed":
            self.unsubscribed.add(msg.unsubscribed.symbol)
        elif kind == "pong":
            self.pongs.append(msg.pong)
        elif kind == "heartbeat":
            hb = msg.heartbeat
            self.heartbeats.append(hb)
            self.follower(hb.symbol).check_heartbeat(hb.epoch, hb.seq)
        return msg

    async def until(self, predicate, timeout: float = 10.0):
        """Read messages until `predicate()` holds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError("condition not reached")
            await self.recv(remaining)

    async def until_seq(self, symbol: str, seq: int, timeout: float = 10.0) -> None:
        def reached():
            f = self.followers.get(symbol)
            return f is not None and f.synced and f.seq is not None and f.seq >= seq

        await self.until(reached, timeout)

    def abort(self) -> None:
        """Drop the TCP connection with no close frame."""
        self.ws.transport.abort()


test_settings.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


class FixedDelay(Backoff):
    """A reconnect backoff of always the same delay: a known window in which a
    client (or a recorder) is away."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay

    def next_delay(self) -> float:
        self.attempt += 1
        return self.delay
