"""Baseline for benchmarks/bench_fanout.py: picows, a Cython WebSocket
library, sending every message to every client with `transport.send`.

    python benchmarks/baselines/picows_broadcast.py --port P --control-port C [--payload-bytes 60]

picows is not a project dependency: `bench_fanout.py` installs it into a
cache directory of its own and runs this script with it on PYTHONPATH.
Control API and payload: see _broadcaster.py.
"""

from __future__ import annotations

import asyncio

from _broadcaster import Broadcaster, main, serve_control
from picows import WSFrame, WSListener, WSMsgType, WSTransport, WSUpgradeRequest, ws_create_server


class Client(WSListener):
    def __init__(self, clients: set[Client], broadcaster: list[Broadcaster]) -> None:
        self.clients = clients
        self.broadcaster = broadcaster  # one-element list: set once the server is built
        self.transport: WSTransport | None = None
        self.paused = False

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        self.clients.add(self)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code())
            transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.clients.discard(self)
        self.resume_writing()

    def pause_writing(self) -> None:
        if not self.paused:
            self.paused = True
            self.broadcaster[0].pause()

    def resume_writing(self) -> None:
        if self.paused:
            self.paused = False
            self.broadcaster[0].resume()


async def serve(port: int, control_port: int, payload_bytes: int) -> None:
    clients: set[Client] = set()
    holder: list[Broadcaster] = []

    def send_all(payload: bytes) -> None:
        for c in clients:
            c.transport.send(WSMsgType.BINARY, payload)

    holder.append(Broadcaster(payload_bytes, send_all, lambda: len(clients)))

    def listener(request: WSUpgradeRequest) -> Client:
        return Client(clients, holder)

    server = await ws_create_server(listener, "127.0.0.1", port, backlog=1024)
    control = await serve_control(holder[0], control_port)
    async with server, control:
        await asyncio.gather(server.serve_forever(), control.serve_forever())


if __name__ == "__main__":
    main("picows broadcast baseline", serve)
