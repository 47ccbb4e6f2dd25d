"""/metrics on a port of its own (serve --metrics-port): a small HTTP/1.1
listener on the node's event loop that answers GET (and HEAD) /metrics and
nothing else, one request per connection.

It runs on the node's loop, not in a thread of its own, because what it
serves is read from the node's state, which only the loop may touch. Bounded
like the rest of the node: the request head (MAX_HEAD), the time to send it
and to take the answer (IO_TIMEOUT), and the connections open at once
(MAX_CONNECTIONS; beyond, a new one is closed at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from prometheus_client.exposition import CONTENT_TYPE_LATEST

log = logging.getLogger("orderbook.metrics")

MAX_HEAD = 16 * 1024
IO_TIMEOUT = 10.0
MAX_CONNECTIONS = 32
PATH = "/metrics"


def _response(status: int, reason: str, body: bytes, content_type: str, extra: str = "") -> bytes:
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
        f"Connection: close\r\n{extra}\r\n"
    )
    return head.encode("latin-1")


def _text(status: int, reason: str, message: str, extra: str = "") -> tuple[bytes, bytes]:
    body = message.encode()
    return _response(status, reason, body, "text/plain; charset=utf-8", extra), body


class MetricsListener:
    def __init__(self, exposition: Callable[[], Awaitable[bytes]]) -> None:
        self._exposition = exposition
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(self._serve, host, port, limit=MAX_HEAD)
        log.info("metrics on http://%s:%d%s", host, self.port, PATH)

    @property
    def port(self) -> int:
        assert self._server is not None and self._server.sockets
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for writer in list(self._open):
            writer.transport.abort()
        await server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._open) >= MAX_CONNECTIONS:
            writer.transport.abort()
            return
        self._open.add(writer)
        try:
            head, body = await self._answer(reader)
            writer.write(head + body)
            await asyncio.wait_for(writer.drain(), IO_TIMEOUT)
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            pass  # the peer went away or stalled: nothing to answer
        finally:
            self._open.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), IO_TIMEOUT)

    async def _answer(self, reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IO_TIMEOUT)
        except asyncio.LimitOverrunError:
            return _text(431, "Request Header Fields Too Large", f"request head over {MAX_HEAD} bytes\n")
        parts = request.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            return _text(400, "Bad Request", "not an HTTP/1.x request line\n")
        method, target = parts[0], parts[1]
        if target.split("?", 1)[0] != PATH:
            return _text(404, "Not Found", f"this port serves {PATH} only\n")
        if method not in ("GET", "HEAD"):
            return _text(405, "Method Not Allowed", f"{method} not allowed: GET {PATH}\n", "Allow: GET, HEAD\r\n")
        body = await self._exposition()
        head = _response(200, "OK", body, CONTENT_TYPE_LATEST)
        return head, b"" if method == "HEAD" else body
