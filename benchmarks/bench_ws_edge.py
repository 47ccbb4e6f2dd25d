"""The subscriber edge: this server's own frame reader and shared frames,
against websockets' sans-I/O `ServerProtocol` in their place.

Two measures, same run, no sockets (a transport that keeps nothing), so
both sides pay the same for what is left out (the write syscall, the hub):
  * memory per idle subscriber after the handshake: tracemalloc over N
    connections of the state the edge keeps per connection (ours:
    `SubscriberSocket` with its frame reader; websockets: `ServerProtocol`
    after `accept` and `send_response`, in the OPEN state); the
    `Connection` (queue, budget) stays in either design;
  * fan-out CPU per delivered message: one delta to N subscribers, then one
    flush each. Ours queues the one pre-framed bytes object
    (`Connection.push`) and writes it; websockets frames the payload once
    per subscriber (`send_binary`) and hands back its bytes (`data_to_send`).

    python benchmarks/bench_ws_edge.py [--subscribers 1000] [--seconds 2]
"""

from __future__ import annotations

import asyncio
import base64
import gc
import os
import sys
import time
import tracemalloc
from collections.abc import Callable

import _common as c
from websockets.http11 import Request
from websockets.server import ServerProtocol

from orderbook.server.channel import Subscription
from orderbook.server.connection import Connection
from orderbook.server.outgoing import Outgoing
from orderbook.server.subscriber_socket import SubscriberSocket
from orderbook.wire import codec
from orderbook.wire.codec import Encoding


class NullTransport(asyncio.Transport):
    """Takes every write and keeps nothing; never closing, never buffered."""

    def __init__(self) -> None:
        super().__init__()
        self.written = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += len(data)

    def writelines(self, list_of_data) -> None:  # type: ignore[no-untyped-def]
        for d in list_of_data:
            self.written += len(d)

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def handshake_request() -> Request:
    key = base64.b64encode(os.urandom(16)).decode()
    from websockets.datastructures import Headers

    return Request(
        "/ws",
        Headers(
            {
                "Host": "127.0.0.1",
                "Upgrade": "websocket",
                "Connection": "Upgrade",
                "Sec-WebSocket-Key": key,
                "Sec-WebSocket-Version": "13",
            }
        ),
    )


def ours(loop: asyncio.AbstractEventLoop) -> tuple[Connection, SubscriberSocket]:
    t = NullTransport()
    conn = Connection(t, Encoding.PROTOBUF, 4 << 20, lambda _c: None, lambda _c: None, "127.0.0.1")
    sock = SubscriberSocket(t, loop, 65536, lambda _m: None, lambda: None, send_frame=conn.send_frame)
    conn.ws = sock
    return conn, sock


def our_socket(loop: asyncio.AbstractEventLoop) -> SubscriberSocket:
    """What websockets' protocol would replace: the socket, not the
    Connection (its queue and budget stay in either design)."""
    return SubscriberSocket(NullTransport(), loop, 65536, lambda _m: None, lambda: None)


def theirs() -> ServerProtocol:
    p = ServerProtocol()
    p.send_response(p.accept(handshake_request()))
    p.data_to_send()
    return p


def per_connection_bytes(make: Callable[[], object], n: int) -> float:
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    kept = [make() for _ in range(n)]
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(s.size_diff for s in after.compare_to(before, "filename"))
    del kept
    return grown / n


def fanout_ours(loop: asyncio.AbstractEventLoop, n: int, payload: bytes) -> Callable[[int], int]:
    conns = [ours(loop)[0] for _ in range(n)]
    subs = [Subscription(conn, None, 0) for conn in conns]  # type: ignore[arg-type]  # no channel needed here
    out_msg = codec.parse_server_message(payload)

    def step(_i: int) -> int:
        o = Outgoing(out_msg)  # encoded and framed once per message, as the hub does
        now = time.monotonic()
        for conn, sub in zip(conns, subs, strict=True):
            conn.push(sub, o, now)
        for conn in conns:
            conn.flush()
        return n

    return step


def fanout_theirs(n: int, payload: bytes) -> Callable[[int], int]:
    protos = [theirs() for _ in range(n)]
    transports = [NullTransport() for _ in range(n)]

    def step(_i: int) -> int:
        for p in protos:
            p.send_binary(payload)  # framed per subscriber: the sans-I/O API has no shared frame
        for p, t in zip(protos, transports, strict=True):
            t.writelines(p.data_to_send())
        return n

    return step


def delta_payload() -> bytes:
    from orderbook.core.events import Delta

    d = Delta("BTC-USD", 1, 101, 100, ((6000000, 12345678),), ((6000100, 0),), 123456789, time.time_ns())
    return codec.delta_message(d).SerializeToString()


def main(argv: list[str]) -> None:
    parser = c.base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args(argv)
    info = c.machine_info()
    loop = asyncio.new_event_loop()
    n = args.subscribers
    payload = delta_payload()

    mem_ours = per_connection_bytes(lambda: our_socket(loop), n)
    mem_theirs = per_connection_bytes(theirs, n)

    rates = c.interleaved(
        {
            "ours": c.timeboxed(fanout_ours(loop, n, payload), args.seconds),
            "websockets": c.timeboxed(fanout_theirs(n, payload), args.seconds),
        },
        args.repeats,
    )
    us = {k: 1e6 / r.median for k, r in rates.items()}
    c.print_header("Subscriber edge: own frame reader vs websockets ServerProtocol", info, argv)
    print(
        c.markdown_table(
            [
                "edge",
                "idle state per subscriber (bytes, tracemalloc)",
                "µs per delivered message (one CPU-bound thread)",
                "ratio",
            ],
            [
                [
                    "ours: SubscriberSocket (frame reader), one shared frame",
                    f"{mem_ours:,.0f}",
                    f"{us['ours']:.3f}",
                    "1.00×",
                ],
                [
                    "websockets ServerProtocol, framed per subscriber",
                    f"{mem_theirs:,.0f}",
                    f"{us['websockets']:.3f}",
                    c.fmt_ratio(us["websockets"] / us["ours"]),
                ],
            ],
        )
    )
    print(f"\n{n} subscribers, a {len(payload)}-byte delta, median of {args.repeats} timed runs.")
    loop.close()


if __name__ == "__main__":
    main(sys.argv[1:])
