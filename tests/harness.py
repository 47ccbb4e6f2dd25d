"""Real servers for tests: in-process (same event loop, real sockets) and
as a separate process (for kill/restart). Every start has a stop."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

from sanic import Sanic

from orderbook.core.events import BookUpdate, FeedBatch
from orderbook.core.instrument import Instrument
from orderbook.server.app import create_app
from orderbook.server.hub import Hub
from orderbook.server.settings import Settings
from orderbook.wire import codec

ROOT = Path(__file__).resolve().parents[1]
FEED_TOKEN = "feed-secret"
_names = itertools.count()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_settings(**overrides) -> Settings:
    base = Settings(
        port=0,
        simulator=False,
        feed_token=FEED_TOKEN,
        symbol_heartbeat=3600.0,
        ping_interval=25.0,
    )
    return replace(base, **overrides)


@dataclass
class InProcessServer:
    app: Sanic
    port: int

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def feed_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/feed"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def hub(self) -> Hub:
        return self.app.ctx.state.hub


@contextlib.asynccontextmanager
async def serve_in_process(settings: Settings | None = None) -> AsyncIterator[InProcessServer]:
    port = free_port()
    settings = replace(settings or test_settings(), port=port)
    app = create_app(settings, name=f"orderbook_test_{next(_names)}")
    server = await app.create_server(host="127.0.0.1", port=port, access_log=False, return_asyncio_server=True)
    assert server is not None
    await server.startup()
    await server.before_start()
    await server.after_start()
    try:
        yield InProcessServer(app, port)
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
class ServerProcess:
    proc: subprocess.Popen
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def feed_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/feed"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

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


def start_server_process(tmp_path: Path, *args: str, port: int | None = None, timeout: float = 30.0) -> ServerProcess:
    port = port or free_port()
    log_path = tmp_path / f"server-{port}-{time.monotonic_ns()}.log"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "orderbook.cli", "serve", "--port", str(port), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env=env,
        )
    sp = ServerProcess(proc, port, log_path)
    try:
        wait_ready(sp.http, timeout, proc)
    except BaseException:
        sp.kill()
        raise
    return sp


def wait_ready(http: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(http + "/readyz", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.05)  # polling a condition, bounded by the deadline
    raise TimeoutError(f"{http} not ready after {timeout}s")


# ------------------------------------------------------------------ publishing


class Publisher:
    """A /feed client: sends batches, waits for each reply."""

    def __init__(self, ws) -> None:
        self.ws = ws
        self._ids = itertools.count(1)

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(cls, feed_url: str, token: str = FEED_TOKEN) -> AsyncIterator[Publisher]:
        import websockets

        async with websockets.connect(
            feed_url, additional_headers={"Authorization": f"Bearer {token}"}, max_size=None
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
