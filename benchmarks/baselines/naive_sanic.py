"""Baseline for benchmarks/bench_fanout.py: the obvious Sanic broadcast.

A /ws handler registers each client; a publisher loop sends every message
to every client with `for ws in clients: await ws.send(payload)`. Sanic's
default WebSocket settings, one process.

    python benchmarks/baselines/naive_sanic.py --port P [--payload-bytes 60]

Control over plain HTTP on the same port, as for the Node baseline:
GET /stats, GET /start?mode=flood, GET /start?mode=rate&rate=R, GET /stop.
Payload: seq (uint64 LE), due time in Unix ns (int64 LE), padding.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import struct
import time

from sanic import Sanic, response


def build_app(payload_bytes: int) -> Sanic:
    app = Sanic("naive_fanout")
    clients: set = set()
    state = {"mode": "idle", "sent": 0, "task": None}
    pad = b"x" * max(0, payload_bytes - 16)

    def message(seq: int, due_ns: int) -> bytes:
        return struct.pack("<Qq", seq, due_ns) + pad

    async def broadcast(payload: bytes) -> None:
        for ws in list(clients):
            try:
                await ws.send(payload)
            except Exception:
                clients.discard(ws)
        state["sent"] += 1

    async def flood() -> None:
        # Stops between messages, so every message reaches every client.
        while state["mode"] == "flood":
            await broadcast(message(state["sent"], time.time_ns()))
            # Let the loop read from the sockets between messages.
            await asyncio.sleep(0)

    async def paced(rate: float) -> None:
        loop = asyncio.get_running_loop()
        t0, t0_ns = loop.time(), time.time_ns()
        i = 0
        while state["mode"] == "rate":
            # Yields even when behind, so the loop still reads the sockets.
            await asyncio.sleep(max(0.0, t0 + i / rate - loop.time()))
            # Stamped with when it was due: falling behind shows up as latency.
            await broadcast(message(state["sent"], t0_ns + int(i / rate * 1e9)))
            i += 1

    async def stop() -> None:
        state["mode"] = "idle"
        task = state["task"]
        state["task"] = None
        if task is not None:
            await task

    @app.websocket("/ws")
    async def feed(request, ws):
        clients.add(ws)
        try:
            async for _ in ws:
                pass
        finally:
            clients.discard(ws)

    @app.get("/stats")
    async def stats(request):
        return response.json({"clients": len(clients), "sent": state["sent"], "mode": state["mode"]})

    @app.get("/start")
    async def start(request):
        await stop()
        mode = request.args.get("mode", "flood")
        rate = float(request.args.get("rate", "0"))
        state["mode"] = mode
        state["task"] = asyncio.ensure_future(flood() if mode == "flood" else paced(rate))
        return response.json({"mode": mode})

    @app.get("/stop")
    async def stop_route(request):
        await stop()
        return response.json({"mode": "idle"})

    return app


def main() -> None:
    p = argparse.ArgumentParser(description="naive Sanic broadcast baseline")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--payload-bytes", type=int, default=60)
    args = p.parse_args()
    # Every client is a file descriptor.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    app = build_app(args.payload_bytes)
    app.run(host="127.0.0.1", port=args.port, single_process=True, access_log=False, motd=False)


if __name__ == "__main__":
    main()
