"""Baseline for benchmarks/bench_fanout.py: the websockets library's own
fan-out, `websockets.asyncio.server.broadcast()`, which writes a message to
every open connection without waiting for any of them.

    python benchmarks/baselines/websockets_broadcast.py --port P --control-port C [--payload-bytes 60]

`broadcast()` has no backpressure of its own; the flood waits while any
connection's transport is over its high-water mark, as the other baselines
do, so every message reaches every client. websockets is installed with
Sanic (it is Sanic's WebSocket implementation). Control API and payload:
see _broadcaster.py.
"""

from __future__ import annotations

import asyncio

from _broadcaster import Broadcaster, main, serve_control
from websockets.asyncio.server import ServerConnection, broadcast
from websockets.asyncio.server import serve as ws_serve


async def serve(port: int, control_port: int, payload_bytes: int) -> None:
    clients: set[ServerConnection] = set()
    b = Broadcaster(payload_bytes, lambda payload: broadcast(clients, payload), lambda: len(clients))

    class Connection(ServerConnection):
        # The library's own flow control, counted across clients for the flood.
        def pause_writing(self) -> None:
            super().pause_writing()
            b.pause()

        def resume_writing(self) -> None:
            super().resume_writing()
            b.resume()

        def connection_lost(self, exc: Exception | None) -> None:
            if self.paused:
                b.resume()
            super().connection_lost(exc)

    async def handler(ws: ServerConnection) -> None:
        clients.add(ws)
        try:
            await ws.wait_closed()
        finally:
            clients.discard(ws)

    control = await serve_control(b, control_port)
    async with (
        ws_serve(
            handler,
            "127.0.0.1",
            port,
            create_connection=Connection,
            compression=None,  # as the other baselines: no permessage-deflate
            ping_interval=None,
            backlog=1024,
        ) as server,
        control,
    ):
        await asyncio.gather(server.serve_forever(), control.serve_forever())


if __name__ == "__main__":
    main("websockets broadcast() baseline", serve)
