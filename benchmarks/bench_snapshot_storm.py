"""Subscribe storms: N clients joining one symbol at once, through the hub's
own subscribe path (ack, snapshot, registration), with the snapshot shared
per (seq, depth) against one snapshot built and encoded per subscriber (the
path before sharing, forced here by dropping the shared one before each
join).

    .venv/bin/python benchmarks/bench_snapshot_storm.py
"""

from __future__ import annotations

import asyncio
import gc
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import base_parser, machine_info, markdown_table, print_header

from orderbook.core.events import BookUpdate, FeedBatch
from orderbook.core.instrument import Instrument
from orderbook.server.hub import Hub
from orderbook.server.settings import Settings
from orderbook.wire.codec import Encoding, SubscribeRequest


def make_hub(loop: asyncio.AbstractEventLoop, levels: int) -> Hub:
    hub = Hub(Settings(simulator=False), 1, loop)
    inst = Instrument("S", price_scale=2, size_scale=8)
    bids = tuple((10_000_000 - i, 1_000 + i) for i in range(levels))
    asks = tuple((10_000_001 + i, 1_000 + i) for i in range(levels))
    hub.ingest(FeedBatch(1, (inst,), (BookUpdate("S", bids, asks, True),)))
    return hub


def storm(hub: Hub, clients: int, depth: int, shared: bool) -> float:
    """Seconds for `clients` subscribes at one seq (each connection's queued
    frames included); connections are dropped afterwards, untimed."""
    conns = [hub.new_connection(None, Encoding.PROTOBUF) for _ in range(clients)]
    ch = hub.channels["S"]
    req = SubscribeRequest("S", depth)
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter()
        for conn in conns:
            if not shared:
                ch.changed()  # the per-subscriber path: build and encode for each
            hub.subscribe(conn, req)
        elapsed = time.perf_counter() - start
    finally:
        gc.enable()
    for conn in conns:
        hub.drop_connection(conn)
    return elapsed


def main() -> None:
    p = base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--clients", default="100,1000", help="comma-separated storm sizes (default 100,1000)")
    p.add_argument("--levels", default="20,1000,5000", help="comma-separated book sizes per side")
    p.add_argument("--depths", default="0,10", help="comma-separated subscription depths (0 = full book)")
    args = p.parse_args()
    info = machine_info()
    loop = asyncio.new_event_loop()
    rows = []
    base: dict[tuple[int, int], float] = {}
    for levels in (int(x) for x in args.levels.split(",")):
        hub = make_hub(loop, levels)
        for depth in (int(x) for x in args.depths.split(",")):
            for clients in (int(x) for x in args.clients.split(",")):
                runs = {False: [], True: []}
                for _ in range(args.repeats):  # alternate, so load hits both alike
                    for shared in (False, True):
                        runs[shared].append(storm(hub, clients, depth, shared))
                per, sh = (sorted(runs[k])[len(runs[k]) // 2] for k in (False, True))
                if levels == 20:
                    base[(depth, clients)] = sh
                rows.append(
                    [
                        f"{levels:,}",
                        depth or "full",
                        f"{clients:,}",
                        f"{per * 1e3:,.1f}",
                        f"{sh * 1e3:,.1f}",
                        f"{per / sh:,.1f}×",
                        f"{sh / clients * 1e6:,.1f}",
                        f"{sh / base[(depth, clients)]:,.2f}×" if (depth, clients) in base else "–",
                    ]
                )
    loop.close()
    print_header("Subscribe storms: shared snapshots against one per subscriber", info)
    print(
        markdown_table(
            [
                "levels per side",
                "depth",
                "clients",
                "per subscriber, ms",
                "shared, ms",
                "speed-up",
                "shared µs per client",
                "shared vs 20-level storm",
            ],
            rows,
            right=[True] * 8,
        )
    )


if __name__ == "__main__":
    main()
