"""Graceful drain in a two-node cluster: N subscribers on the node that gets
SIGTERM, when each is closed (a histogram over --drain-seconds), how many
handshakes the other node takes per 100 ms, and how long each subscriber is
away before it has resumed there; against --drain-seconds 0, everyone closed
at once.

Real processes: a private redis-server, two `orderbook serve` nodes, a
publisher at --rate changes per second, and the subscribers of
tests/drain_swarm.py in this process (each reconnects after a jittered
0-250 ms, as the Python client does, and checks every seq).

    .venv/bin/python benchmarks/bench_drain.py                 # 2,000 subscribers, 5 s; ~1 min
    .venv/bin/python benchmarks/bench_drain.py --subscribers 500 --window 2
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import machine_info, markdown_table, print_header

from tests.drain_swarm import Swarm
from tests.harness import FEED_TOKEN, Publisher, has_symbol, instrument, readyz, start_server_process, update
from tests.redis_harness import start_redis


@dataclass
class Run:
    window: float
    subscribers: int
    closes: list[float]  # seconds after SIGTERM, sorted
    away: list[float]  # per subscriber: its close to live again on the other node, sorted
    arrivals: list[float]  # when each was live on the other node, sorted
    stopped_after: float  # SIGTERM to the drained node's exit
    problems: list[str]
    resumed: int  # subscribers that resumed (not a fresh snapshot)


def cluster_node(folder: Path, redis_url: str, *extra: str):
    return start_server_process(
        folder,
        *("--redis", redis_url, "--feed-token", FEED_TOKEN, "--lease-ttl", "1"),
        *("--max-connections-per-ip", "0", "--handshake-rate", "0", "--global-handshake-rate", "0"),
        *extra,
    )


async def wait_for(pred, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(pred):
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.05)


async def drain_once(folder: Path, n: int, window: float, rate: float, seed: int) -> Run:
    redis = start_redis(folder)
    survivor = drained = None
    swarm: Swarm | None = None
    try:
        survivor = cluster_node(folder, redis.url)
        await wait_for(lambda: readyz(survivor.http).get("role") == "sequencer", 20, "a sequencer")
        drained = cluster_node(folder, redis.url, "--drain-seconds", str(window))
        async with Publisher.connect(survivor.feed_url) as pub:
            await pub.send([instrument("D")], [update("D", bids=[(990, 5)], asks=[(1010, 5)])])
            await wait_for(lambda: has_symbol(drained.http, "D"), 20, "the symbol on both nodes")
            swarm = Swarm([drained.url, survivor.url], "D", n, seed=seed)
            await swarm.connect_all(timeout=120)
            stop = asyncio.Event()

            async def pump() -> None:
                i = 0
                while not stop.is_set():
                    await pub.send(updates=[update("D", bids=[(900 + i % 50, 1 + i)])])
                    i += 1
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), 1 / rate)

            pumping = asyncio.create_task(pump())
            await asyncio.sleep(0.5)  # the stream going before the signal
            swarm.t0 = swarm.loop.time()
            drained.proc.send_signal(signal.SIGTERM)
            await swarm.until(lambda: swarm.live[1] == n, window + 60, "every subscriber on the other node")
            await asyncio.to_thread(drained.proc.wait, 30)
            stopped_after = swarm.now()
            stop.set()
            await pumping
        away = []
        for sub in swarm.subs:
            closed = next(c.at for c in sub.closes if c.node == 0)
            back = next(t for node, t in sub.lived if node == 1)
            away.append(back - closed)
        return Run(
            window,
            n,
            swarm.close_times(0),
            sorted(away),
            sorted(t for s in swarm.subs for node, t in s.lived if node == 1),
            stopped_after,
            swarm.problems(),
            sum(s.resumes for s in swarm.subs),
        )
    finally:
        if swarm is not None:
            swarm.stop()
        for node in (drained, survivor):
            if node is not None:
                node.kill()
        redis.close()


def pct(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))]


def peak_per(values: list[float], width: float) -> int:
    """The most values within any `width` seconds (a sliding window)."""
    best, lo = 0, 0
    for hi, t in enumerate(values):
        while values[lo] < t - width:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def histogram(run: Run, span: float, buckets: int) -> str:
    width = span / buckets
    counts = [0] * buckets
    late = 0
    for t in run.closes:
        i = int(t / width)
        if i < buckets:
            counts[i] += 1
        else:
            late += 1
    top = max(counts) or 1
    rows = [
        [f"{i * width:.2f} – {(i + 1) * width:.2f}", c, f"{c / run.subscribers:.1%}", "█" * round(30 * c / top)]
        for i, c in enumerate(counts)
    ]
    if late:
        rows.append([f"> {span:.2f}", late, f"{late / run.subscribers:.1%}", ""])
    return markdown_table(["closed at (s after SIGTERM)", "subscribers", "share", ""], rows, [False, True, True, False])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=1, help="seed of the subscribers' reconnect jitter (default 1)")
    p.add_argument("--subscribers", type=int, default=2000, help="subscribers on the drained node (default 2000)")
    p.add_argument("--window", type=float, default=5.0, help="--drain-seconds of the drained node (default 5)")
    p.add_argument("--rate", type=float, default=20.0, help="changes published per second (default 20)")
    p.add_argument("--buckets", type=int, default=10, help="histogram buckets over the window (default 10)")
    args = p.parse_args()
    info = machine_info()
    runs = []
    with tempfile.TemporaryDirectory() as folder:
        for window in (args.window, 0.0):
            run = asyncio.run(drain_once(Path(folder), args.subscribers, window, args.rate, args.seed))
            runs.append(run)
    print_header("Graceful drain: subscribers of a stopping node move to the other one", info)
    for run in runs:
        print(f"### --drain-seconds {run.window:g}: when each of {run.subscribers:,} subscribers was closed\n")
        print(histogram(run, args.window, args.buckets))
        print()
    rows = []
    for run in runs:
        rows.append(
            [
                f"{run.window:g} s",
                f"{sum(t < args.window / 10 for t in run.closes) / run.subscribers:.0%}",
                f"{statistics.median(run.closes):.2f} s",
                f"{run.closes[-1]:.2f} s",
                peak_per(run.arrivals, 0.1),
                f"{pct(run.away, 0.5) * 1000:.0f} / {pct(run.away, 0.99) * 1000:.0f} / {run.away[-1] * 1000:.0f} ms",
                f"{run.stopped_after:.2f} s",
                f"{run.resumed:,} / {run.subscribers:,}",
                len(run.problems),
            ]
        )
    print(
        markdown_table(
            [
                "--drain-seconds",
                f"closed in the first {args.window / 10:g} s",
                "median close",
                "last close",
                "most resumed on the other node in 100 ms",
                "away: p50 / p99 / max",
                "SIGTERM to exit",
                "resumed",
                "gaps, duplicates, errors",
            ],
            rows,
            [False, True, True, True, True, True, True, True, True],
        )
    )
    for run in runs:
        if run.problems:
            print(f"\n--drain-seconds {run.window:g}: {run.problems[:5]}")


if __name__ == "__main__":
    main()
