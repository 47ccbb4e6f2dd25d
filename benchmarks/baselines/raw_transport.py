"""Reference point for benchmarks/bench_fanout.py: the cheapest fan-out a
Python process can do. No framework: the upgrade is answered by hand, every
message is framed once, and the same bytes are written straight to every
client's transport, K messages joined per write (K = 1: one syscall per
message per client).

    python benchmarks/baselines/raw_transport.py --port P [--payload-bytes 60] [--coalesce 10]

Same control API and payload as the other baselines: GET /stats,
GET /start?mode=flood, GET /stop (plain HTTP on the same port).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import resource
import struct
import time

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC11B85"


class Server:
    def __init__(self, payload_bytes: int, coalesce: int) -> None:
        self.clients: set[Client] = set()
        self.paused = 0  # clients whose transport is over its high-water mark
        self.resumed = asyncio.Event()
        self.mode = "idle"
        self.sent = 0
        self.task: asyncio.Task | None = None
        self.coalesce = coalesce
        self.pad = b"x" * max(0, payload_bytes - 16)

    def frame(self, seq: int, due_ns: int) -> bytes:
        payload = struct.pack("<Qq", seq, due_ns) + self.pad
        return bytes((0x82, len(payload))) + payload  # payloads stay under 126 bytes

    async def flood(self) -> None:
        while self.mode == "flood":
            if self.paused:
                # Wait for the slow ones rather than buffer without bound.
                self.resumed.clear()
                await self.resumed.wait()
                continue
            now = time.time_ns()
            data = b"".join(self.frame(self.sent + i, now) for i in range(self.coalesce))
            for c in self.clients:
                c.transport.write(data)
            self.sent += self.coalesce
            await asyncio.sleep(0)  # let the loop do its I/O between writes

    async def control(self, path: str) -> dict:
        if path.startswith("/start"):
            await self.stop()
            self.mode = "flood"
            self.task = asyncio.ensure_future(self.flood())
        elif path.startswith("/stop"):
            await self.stop()
        return {"clients": len(self.clients), "sent": self.sent, "mode": self.mode}

    async def stop(self) -> None:
        self.mode = "idle"
        self.resumed.set()
        task, self.task = self.task, None
        if task is not None:
            await task


class Client(asyncio.Protocol):
    def __init__(self, server: Server) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.head = b""
        self.ws = False
        self.paused = False
        self.answering: asyncio.Future[None] | None = None  # held: the loop keeps only a weak reference

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.ws:
            return  # client frames are not needed here
        self.head += data
        if b"\r\n\r\n" not in self.head:
            return
        lines = self.head.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
        path = lines[0].split(" ")[1]
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        if headers.get("upgrade", "").lower() == "websocket":
            accept = base64.b64encode(hashlib.sha1(headers["sec-websocket-key"].encode() + GUID).digest())
            self.transport.write(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
            )
            self.ws = True
            self.server.clients.add(self)
        else:
            self.answering = asyncio.ensure_future(self.answer(path))

    async def answer(self, path: str) -> None:
        body = json.dumps(await self.server.control(path)).encode()
        self.transport.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        self.transport.close()

    def pause_writing(self) -> None:
        self.paused = True
        self.server.paused += 1

    def resume_writing(self) -> None:
        if self.paused:
            self.paused = False
            self.server.paused -= 1
            self.server.resumed.set()

    def connection_lost(self, exc) -> None:
        self.resume_writing()
        self.server.clients.discard(self)


async def serve(port: int, payload_bytes: int, coalesce: int) -> None:
    server = Server(payload_bytes, coalesce)
    loop = asyncio.get_running_loop()
    srv = await loop.create_server(lambda: Client(server), "127.0.0.1", port, backlog=1024)
    async with srv:
        await srv.serve_forever()


def main() -> None:
    p = argparse.ArgumentParser(description="pre-framed fan-out reference")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--payload-bytes", type=int, default=60)
    p.add_argument("--coalesce", type=int, default=1, help="messages joined per write (default 1)")
    args = p.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        import uvloop  # the loop Sanic runs on, for a like-for-like reference

        uvloop.run(serve(args.port, args.payload_bytes, args.coalesce))
    except ImportError:
        asyncio.run(serve(args.port, args.payload_bytes, args.coalesce))


if __name__ == "__main__":
    main()
