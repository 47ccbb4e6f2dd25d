"""Replay throughput: recorded market data parsed alone, rebuilt into books,
and replayed at full speed through /feed into a node with 100 subscribers.

The node runs in its own process; the replayer and the subscribers share
this one. Reads the shared recordings in place (../shared/data, or
$ORDERBOOK_SHARED_DATA). Prints Markdown tables; not part of the test run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import _common as c  # noqa: E402

from orderbook.core.events import FeedBatch  # noqa: E402
from orderbook.replay.files import open_records  # noqa: E402
from orderbook.replay.player import FeedSink, play  # noqa: E402
from orderbook.replay.verify import verify  # noqa: E402
from orderbook.wire import codec  # noqa: E402
from tests.harness import FEED_TOKEN, start_server_process  # noqa: E402

DATASETS = {
    "kraken": ("kraken-book-2021-04-17/KRAKEN.ws.50.0", "kraken"),
    "coinbase": ("coinbase-level2-2021-04-17/COINBASE.ws.28.0", "coinbase"),
    "binance": ("binance-depth-2021/2021-04-17", "binance"),
    "lobster-aapl": ("lobster-2012-06-21/aapl-l10-first999", "lobster"),
    "lobster-amzn": ("lobster-2012-06-21/amzn-l1-fullday", "lobster"),
}


def data_dir() -> Path:
    env = os.environ.get("ORDERBOOK_SHARED_DATA")
    return Path(env) if env else ROOT.parent / "shared" / "data"


def count_changes(path: Path, fmt: str) -> tuple[int, int]:
    records = changes = 0
    for rec in open_records(path, fmt):
        records += 1
        for u in rec.updates:
            changes += len(u.bids) + len(u.asks)
    return records, changes


class Subscribers:
    """N subscriber sockets reading every message and noting the last seq per symbol."""

    def __init__(self) -> None:
        self.sockets = []
        self.last: list[dict[str, int]] = []
        self.messages = 0
        self.tasks: list[asyncio.Task] = []

    async def start(self, url: str, n: int, symbols: list[str]) -> None:
        import websockets

        for i in range(n):
            ws = await websockets.connect(url, max_size=None)
            self.sockets.append(ws)
            self.last.append({})
            for s in symbols:
                await ws.send(codec.subscribe_message(s).SerializeToString())
            self.tasks.append(asyncio.ensure_future(self._read(ws, self.last[i])))

    async def _read(self, ws, last: dict[str, int]) -> None:
        async for data in ws:
            msg = codec.parse_server_message(data)
            self.messages += 1
            kind = msg.WhichOneof("kind")
            if kind == "delta":
                last[msg.delta.symbol] = msg.delta.seq
            elif kind == "snapshot":
                last[msg.snapshot.symbol] = msg.snapshot.seq

    def reached(self, final: dict[str, int]) -> bool:
        return all(all(last.get(s, -1) >= q for s, q in final.items()) for last in self.last)

    async def close(self) -> None:
        for t in self.tasks:
            t.cancel()
        for ws in self.sockets:
            await ws.close()


async def through_server(path: Path, fmt: str, n_subs: int, tmp: Path) -> dict[str, float]:
    records = list(open_records(path, fmt))
    instruments = {i.symbol: i for r in records for i in r.instruments}
    node = start_server_process(tmp, "--feed-token", FEED_TOKEN, "--no-simulator", "--history-entries", "100000")
    subs = Subscribers()
    final: dict[str, int] = {}

    def on_ack(batch, recs, ack) -> None:
        for p in ack.positions:
            final[p.symbol] = p.seq

    try:
        sink = await FeedSink.connect(node.http, FEED_TOKEN, on_ack)
        # Define the symbols first so every subscriber is in place before the clock starts.
        await sink.send(FeedBatch(10**9, tuple(instruments.values()), ()), [])
        await subs.start(node.url, n_subs, sorted(instruments))
        start = time.perf_counter()
        stats = await play(lambda: iter(records), sink, speed=0)
        published = time.perf_counter() - start
        # Polled: an event set from the receive loop would add work to every measured message.
        while not subs.reached(final):  # noqa: ASYNC110
            await asyncio.sleep(0.005)
        delivered = time.perf_counter() - start
        await sink.close()
        return {
            "levels": sum(len(u.bids) + len(u.asks) for r in records for u in r.updates),
            "changes": sink.changes,
            "updates": stats.updates,
            "published_s": published,
            "delivered_s": delivered,
            "messages": subs.messages,
        }
    finally:
        await subs.close()
        node.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--subscribers", type=int, default=100)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--datasets", nargs="*", default=list(DATASETS))
    args = p.parse_args()
    base = data_dir()
    if not base.is_dir():
        sys.exit(f"recorded data not found at {base}: set ORDERBOOK_SHARED_DATA")
    print("## Machine\n")
    print(c.markdown_table(["", ""], list(c.machine_info().items())))

    rows = []
    for name in args.datasets:
        rel, fmt = DATASETS[name]
        path = base / rel
        records, changes = count_changes(path, fmt)
        rates = c.interleaved(
            {
                "parse": c.fixed(lambda: None, lambda _, path=path, fmt=fmt: count_changes(path, fmt), changes),
                "verify": c.fixed(lambda: None, lambda _, path=path, fmt=fmt: verify(open_records(path, fmt)), changes),
            },
            args.repeats,
        )
        rows.append(
            [
                name,
                f"{records:,}",
                f"{changes:,}",
                c.fmt_rate(rates["parse"].median),
                c.fmt_rate(rates["verify"].median),
            ]
        )
    print("\n## Reading alone (level changes per second, median of", args.repeats, "runs)\n")
    print(
        c.markdown_table(
            ["dataset", "records", "level changes", "parse only", "parse + books + checks"],
            rows,
            [False, True, True, True, True],
        )
    )

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.datasets:
            rel, fmt = DATASETS[name]
            runs = [
                asyncio.run(through_server(base / rel, fmt, args.subscribers, Path(tmp)))
                for _ in range(max(1, args.repeats // 2))
            ]
            best = sorted(runs, key=lambda r: r["delivered_s"])[len(runs) // 2]
            rows.append(
                [
                    name,
                    f"{best['updates']:,}",
                    f"{best['levels']:,}",
                    c.fmt_rate(best["levels"] / best["published_s"]),
                    c.fmt_rate(best["levels"] / best["delivered_s"]),
                    c.fmt_rate(best["messages"] / best["delivered_s"]),
                    f"{best['delivered_s']:.2f}",
                ]
            )
    print(f"\n## Replay at full speed through /feed, {args.subscribers} subscribers on every symbol\n")
    print(
        c.markdown_table(
            [
                "dataset",
                "updates",
                "level changes",
                "changes/s acked",
                "changes/s delivered to all",
                "messages/s received",
                "seconds",
            ],
            rows,
            [False, True, True, True, True, True, True],
        )
    )


if __name__ == "__main__":
    main()
