"""Replication through Redis: replica lag under a steady publish rate, and the
time from killing the sequencing node to the next change reaching a
subscriber on another node.

Starts a private redis-server and node processes on free ports (loopback
only), prints Markdown tables. Not part of the test run.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.harness import (
    FEED_TOKEN,
    Publisher,
    Subscriber,
    instrument,
    readyz,
    sequencer_of,
    start_server_process,
    until,
    update,
)
from tests.redis_harness import start_redis


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def main(rate: int, seconds: float, ttl: float) -> None:
    tmp = Path(tempfile.mkdtemp())
    redis = start_redis(tmp)
    args = ("--redis", redis.url, "--feed-token", FEED_TOKEN, "--lease-ttl", str(ttl))
    nodes = [start_server_process(tmp, *args) for _ in range(2)]
    try:
        seq_node = await sequencer_of(nodes)
        replica = next(n for n in nodes if n is not seq_node)
        async with Publisher.connect(replica.feed_url) as pub, Subscriber.connect(replica.url) as sub:
            await pub.send([instrument("R")], [update("R", asks=[(100_000, 1)])])
            await until(lambda: readyz(replica.http).get("symbols", 0) >= 1)
            await sub.subscribe("R")
            await sub.until(lambda: sub.snapshots.get("R"))
            # Steady rate; end-to-end latency = subscriber receipt - publish_time_ns.
            lags: list[float] = []
            e2e: list[float] = []
            interval = 1.0 / rate
            start = time.monotonic()
            i = 0
            reader = asyncio.create_task(_read(sub, e2e))
            while time.monotonic() - start < seconds:
                await pub.send(updates=[update("R", bids=[(1 + i % 500, 1 + i)])])
                i += 1
                if i % max(rate // 10, 1) == 0:
                    lags.append(float(readyz(replica.http).get("lag_ms") or 0.0))
                delay = start + i * interval - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            achieved = i / (time.monotonic() - start)
            # Failover: kill -9 the sequencer, time until the next change arrives.
            # Every change so far has reached the subscriber (one per batch, plus the first).
            await until(lambda: sub.followers["R"].seq == i + 1)
            before = sub.followers["R"].seq
            seq_node.kill()
            t0 = time.monotonic()
            await pub.send(updates=[update("R", bids=[(9999, 1)])])
            await until(lambda: (sub.followers["R"].seq or 0) > before, timeout=30)
            failover = time.monotonic() - t0
            reader.cancel()
        print(f"| publish rate (batches/s, target {rate}) | {achieved:,.0f} |")
        print(
            f"| replica apply lag, p50 / p99 (ms, /readyz lag_ms) | {statistics.median(lags):.2f} / {pct(lags, 0.99):.2f} |"
        )
        if e2e:
            print(
                f"| publish -> subscriber on the replica, p50 / p99 (ms) | {statistics.median(e2e):.2f} / {pct(e2e, 0.99):.2f} |"
            )
        print(f"| kill -9 sequencer -> next change at a subscriber (s), lease TTL {ttl} s | {failover:.2f} |")
    finally:
        for n in nodes:
            n.kill()
        redis.close()


async def _read(sub: Subscriber, e2e: list[float]) -> None:
    while True:
        msg = await sub.recv(60)
        if msg.WhichOneof("kind") == "delta":
            e2e.append((time.time_ns() - msg.delta.publish_time_ns) / 1e6)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rate", type=int, default=500, help="publisher batches per second")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--lease-ttl", type=float, default=1.0)
    a = p.parse_args()
    print("| measure | value |\n|---|---:|")
    asyncio.run(main(a.rate, a.seconds, a.lease_ttl))
