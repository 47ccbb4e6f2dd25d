"""The shared write's per-subscriber loop against a bare `transport.write`
loop: what the node's Python costs per write on top of the syscall.

N socket pairs on uvloop; the far ends are drained by a child process, so
the timed process does only the writing side. Each round writes one joined
block of K 60-byte frames to every socket, R times, with each loop:

- bare: `for t in transports: t.write(data)`, the raw reference's loop;
- bare + the two calls: also `is_closing()` and `get_write_buffer_size()`,
  which the node needs to keep each client's budget;
- `write_shared`: the node's own loop (orderbook/server/connection.py) over
  real `Connection`s, every member on the shared write.

CPU time of this process per write (`time.process_time`), rows interleaved
round by round; the median over rounds. Decides whether a C loop is worth
it: it could save the Python part, never the syscall.
"""

from __future__ import annotations

import asyncio
import os
import selectors
import signal
import socket
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import _common as c  # noqa: E402
import uvloop  # noqa: E402

from orderbook.server.channel import Subscription  # noqa: E402
from orderbook.server.connection import Connection, write_shared  # noqa: E402
from orderbook.server.outgoing import Joined, Outgoing  # noqa: E402
from orderbook.wire.codec import Encoding  # noqa: E402


class _Quiet(asyncio.Protocol):
    pass


def _drain_forever(ends: list[socket.socket]) -> None:
    sel = selectors.DefaultSelector()
    for s in ends:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
    open_ = len(ends)
    while open_:
        for key, _ in sel.select():
            try:
                if not key.fileobj.recv(1 << 16):  # type: ignore[union-attr]
                    sel.unregister(key.fileobj)
                    open_ -= 1
            except BlockingIOError:
                pass
    os._exit(0)


def _member(conn: Connection) -> Subscription:
    # A live subscription on its group's shared write, without a channel:
    # write_shared reads only these fields.
    sub = Subscription.__new__(Subscription)
    sub.conn, sub.skip, sub.lagging, sub.fan = conn, 0, False, None
    return sub


async def run(ends: list[socket.socket], k: int, writes: int, rounds: int) -> dict[str, list[float]]:
    n = len(ends)
    loop = asyncio.get_running_loop()
    transports = [(await loop.connect_accepted_socket(_Quiet, a))[0] for a in ends]
    conns = [
        Connection(t, Encoding.PROTOBUF, 1 << 22, lambda _c: None, lambda _c: None, share=True)  # type: ignore[arg-type]
        for t in transports
    ]
    members = [_member(conn) for conn in conns]
    msgs = [Outgoing(payload=b"x" * 60) for _ in range(k)]
    data = Joined(msgs).get(0)

    async def bare() -> None:
        for _ in range(writes):
            for t in transports:
                t.write(data)
            await asyncio.sleep(0.002)  # the loop flushes what the kernel did not take

    async def bare_calls() -> None:
        for _ in range(writes):
            for t in transports:
                if t.is_closing():
                    continue
                t.write(data)
                t.get_write_buffer_size()
            await asyncio.sleep(0.002)

    async def shared() -> None:
        for _ in range(writes):
            write_shared(members, Joined(msgs))
            await asyncio.sleep(0.002)

    loops = {"bare `transport.write` loop": bare, "bare + is_closing + get_write_buffer_size": bare_calls}
    loops["`write_shared` over `Connection`s"] = shared
    out: dict[str, list[float]] = {name: [] for name in loops}
    try:
        for _ in range(rounds + 1):  # the first round warms up
            for name, body in loops.items():
                t0 = time.process_time()
                await body()
                out[name].append((time.process_time() - t0) / (writes * n) * 1e6)
    finally:
        for t in transports:
            t.abort()
    return {name: samples[1:] for name, samples in out.items()}


def main() -> None:
    p = c.base_parser(__doc__.splitlines()[0])
    p.add_argument("--subscribers", type=int, default=1000)
    p.add_argument("--messages", type=int, default=50, help="60-byte frames joined per write (default 50)")
    p.add_argument("--writes", type=int, default=300, help="writes to every subscriber per round (default 300)")
    args = p.parse_args()
    info = c.machine_info()
    pairs = [socket.socketpair() for _ in range(args.subscribers)]
    pid = os.fork()  # before any event loop exists
    if pid == 0:
        for a, _ in pairs:
            a.close()
        _drain_forever([b for _, b in pairs])
    for _, b in pairs:
        b.close()
    try:
        results = uvloop.run(run([a for a, _ in pairs], args.messages, args.writes, args.repeats))
    finally:
        os.kill(pid, signal.SIGKILL)  # the drain has nothing left to prove
        os.waitpid(pid, 0)
    c.print_header("Shared write: the per-subscriber loop", info)
    base = statistics.median(results["bare `transport.write` loop"])
    rows = []
    for name, samples in results.items():
        med = statistics.median(samples)
        rows.append([name, f"{med:.3f}", f"{min(samples):.3f} – {max(samples):.3f}", c.fmt_ratio(med / base)])
    print(
        c.markdown_table(["loop", "CPU µs per write (median)", "min – max", "vs bare"], rows, [False, True, True, True])
    )
    print(f"\n{args.subscribers:,} subscribers, {args.messages} messages per write, {args.repeats} rounds.")


if __name__ == "__main__":
    main()
