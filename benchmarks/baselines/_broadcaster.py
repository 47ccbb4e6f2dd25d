"""What the picows and websockets `broadcast()` baselines share: the
publishing loop (flood or paced), write backpressure across clients, and the
control API on its own plain-HTTP port, as the other baselines answer it:
GET /stats, GET /start?mode=flood, GET /start?mode=rate&rate=R, GET /stop.

Payload: seq (uint64 LE), due time in Unix ns (int64 LE), padding, as in
naive_sanic.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import struct
import time
from collections.abc import Callable, Coroutine
from typing import Any
from urllib.parse import parse_qs, urlsplit


class Broadcaster:
    """Sends each message to every client with `send_all`; in a flood, waits
    while any client's transport is over its high-water mark (`paused`), so
    every message reaches every client without buffering without bound."""

    def __init__(self, payload_bytes: int, send_all: Callable[[bytes], None], count: Callable[[], int]) -> None:
        self.send_all = send_all
        self.count = count  # clients connected
        self.pad = b"x" * max(0, payload_bytes - 16)
        self.mode = "idle"
        self.sent = 0
        self.paused = 0  # clients over their high-water mark
        self.resumed = asyncio.Event()
        self.task: asyncio.Future[None] | None = None

    def message(self, seq: int, due_ns: int) -> bytes:
        return struct.pack("<Qq", seq, due_ns) + self.pad

    def pause(self) -> None:
        self.paused += 1

    def resume(self) -> None:
        self.paused -= 1
        self.resumed.set()

    async def flood(self) -> None:
        while self.mode == "flood":
            if self.paused:
                self.resumed.clear()
                await self.resumed.wait()
                continue
            self.send_all(self.message(self.sent, time.time_ns()))
            self.sent += 1
            await asyncio.sleep(0)  # let the loop do its I/O between messages

    async def paced(self, rate: float) -> None:
        loop = asyncio.get_running_loop()
        t0, t0_ns = loop.time(), time.time_ns()
        i = 0
        while self.mode == "rate":
            await asyncio.sleep(max(0.0, t0 + i / rate - loop.time()))
            # Stamped with when it was due: falling behind shows up as latency.
            self.send_all(self.message(self.sent, t0_ns + int(i / rate * 1e9)))
            self.sent += 1
            i += 1

    async def stop(self) -> None:
        self.mode = "idle"
        self.resumed.set()
        task, self.task = self.task, None
        if task is not None:
            await task

    async def control(self, target: str) -> dict[str, Any]:
        url = urlsplit(target)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        if url.path == "/start":
            await self.stop()
            self.mode = query.get("mode", "flood")
            rate = float(query.get("rate", "0"))
            self.task = asyncio.ensure_future(self.flood() if self.mode == "flood" else self.paced(rate))
        elif url.path == "/stop":
            await self.stop()
        return {"clients": self.count(), "sent": self.sent, "mode": self.mode}


async def serve_control(broadcaster: Broadcaster, port: int) -> asyncio.Server:
    """The control API: one request per connection, answered with JSON."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            target = head.split(b" ", 2)[1].decode("latin-1")
            body = json.dumps(await broadcaster.control(target)).encode()
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        finally:
            writer.close()

    return await asyncio.start_server(answer, "127.0.0.1", port)


def run(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run on uvloop when installed (the loop Sanic runs on), with every
    file descriptor the hard limit allows (each client is one)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        import uvloop
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())


def main(description: str, serve: Callable[[int, int, int], Coroutine[Any, Any, None]]) -> None:
    """The command line every baseline takes: its port, the control port and
    the payload size, then `serve` run by `run`."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--control-port", type=int, required=True)
    p.add_argument("--payload-bytes", type=int, default=60)
    args = p.parse_args()
    run(lambda: serve(args.port, args.control_port, args.payload_bytes))
