"""What the metrics cost a node: the fan-out hot path with and without the
counting /metrics reads, and the time one scrape holds the event loop, by
symbol count.

Fan-out: one symbol, N subscribers (fake transports that take every write),
each change applied by the hub, fanned out and flushed: the loop of a live
node, without sockets, so the few nanoseconds counting adds are not lost in
kernel time. Two source trees are timed in turn (`--before`, `--after`), each
in a fresh process, round after round, so the machine's load hits both alike.

    git worktree add ../before <a commit without the metrics>
    .venv/bin/python benchmarks/bench_metrics.py --before ../before       # after: this tree
    .venv/bin/python benchmarks/bench_metrics.py --sections scrape          # this tree only

Scrape: a node's registry with S symbols (one subscriber each): the time the
loop spends reading the node's state (`collect`) and the time the text
format takes (written in a thread by the node, so off the loop).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

SUBSCRIBERS = (1, 10, 100, 1000)
CHANGES = 3000  # per timed run
CHUNK = 50  # changes timed together; the fastest chunk of a run is its figure


def child(tree: Path, changes: int) -> None:
    """Time the fan-out of `tree`'s hub; print {subscribers: ns per change} as JSON."""
    sys.path.insert(0, str(tree))
    sys.path.insert(1, str(HERE))
    import asyncio
    import gc

    import _common as c

    import orderbook
    from orderbook.core.events import FeedBatch
    from orderbook.server.hub import Hub
    from orderbook.server.settings import Settings
    from orderbook.wire import codec
    from orderbook.wire.codec import Encoding

    assert Path(orderbook.__file__).resolve().is_relative_to(tree.resolve()), orderbook.__file__
    try:  # the tree counts: give it a real histogram, as a node would
        from prometheus_client import CollectorRegistry, Histogram

        from orderbook.server.counts import Counts

        def extra() -> dict:
            h = Histogram("bench_seconds", "bench", registry=CollectorRegistry())
            return {"counts": Counts(h)}
    except ImportError:

        def extra() -> dict:
            return {}

    class Sink:
        """A transport that takes everything at once."""

        def write(self, data: bytes) -> None:
            pass

        def get_write_buffer_size(self) -> int:
            return 0

        def is_closing(self) -> bool:
            return False

    stream = c.generate_stream(1, changes, 1000)
    request = codec.decode_client(codec.subscribe_message(c.INSTRUMENT.symbol).SerializeToString(), Encoding.PROTOBUF)
    out = {}
    loop = asyncio.new_event_loop()
    for n in SUBSCRIBERS:
        hub = Hub(Settings(simulator=False), 1, loop, **extra())
        hub.ingest(FeedBatch(0, (c.INSTRUMENT,), (stream.snapshot,)))
        for _ in range(n):
            hub.subscribe(hub.new_connection(Sink(), Encoding.PROTOBUF), request)  # type: ignore[arg-type]
        loop.run_until_complete(asyncio.sleep(0))
        batches = [FeedBatch(i + 1, (), (u,)) for i, u in enumerate(stream.updates)]

        def run(hub: Hub, batches: list) -> list[float]:
            """Seconds per change of each chunk of CHUNK changes."""
            times = []
            for start in range(0, len(batches), CHUNK):
                chunk = batches[start : start + CHUNK]
                gc.disable()
                t0 = time.perf_counter()
                for b in chunk:
                    hub.ingest(b)
                    handle = hub._flush_handle
                    if handle is not None:  # flushed at once: what the loop would do next
                        handle.cancel()
                        hub._flush()
                times.append((time.perf_counter() - t0) / len(chunk))
                gc.enable()
                loop.run_until_complete(asyncio.sleep(0))  # untimed: drop the cancelled handles
            return times

        run(hub, batches[: len(batches) // 5])  # warm-up
        # The fastest chunk: on a shared machine, the one least disturbed by other processes.
        out[n] = min(run(hub, batches)) * 1e9
    loop.close()
    print(json.dumps(out))


def fanout(trees: dict[str, Path], rounds: int, changes: int) -> str:
    import _common as c

    samples: dict[str, dict[int, list[float]]] = {k: {n: [] for n in SUBSCRIBERS} for k in trees}
    for _ in range(rounds):
        for label, tree in trees.items():
            done = subprocess.run(
                [sys.executable, __file__, "--child", str(tree), "--changes", str(changes)],
                capture_output=True,
                text=True,
                check=True,
                cwd=tree,
            )
            for n, ns in json.loads(done.stdout.strip().splitlines()[-1]).items():
                samples[label][int(n)].append(ns)
    before, after = list(trees)
    rows = []
    for n in SUBSCRIBERS:
        b, a = statistics.median(samples[before][n]), statistics.median(samples[after][n])
        rows.append(
            [
                f"{n:,}",
                f"{b / 1000:,.1f} ({min(samples[before][n]) / 1000:,.1f} – {max(samples[before][n]) / 1000:,.1f})",
                f"{a / 1000:,.1f} ({min(samples[after][n]) / 1000:,.1f} – {max(samples[after][n]) / 1000:,.1f})",
                f"{(a - b) / 1000:+,.2f}",
                f"{(a - b) / n:+,.1f}",
                f"{(a / b - 1) * 100:+.1f}%",
            ]
        )
    return c.markdown_table(
        [
            "subscribers",
            f"µs per change, {before}: median (min – max) of runs",
            f"µs per change, {after}: median (min – max) of runs",
            "µs added per change",
            "ns added per message",
            "change",
        ],
        rows,
        [True] * 6,
    )


def scrape(symbol_counts: list[int], repeats: int) -> str:
    sys.path.insert(0, str(ROOT))
    import asyncio

    import _common as c
    from prometheus_client.exposition import generate_latest

    from orderbook.core.events import BookUpdate, FeedBatch
    from orderbook.core.instrument import Instrument
    from orderbook.server.handshake_limits import Gate
    from orderbook.server.hub import Hub
    from orderbook.server.metrics import NodeMetrics, _Collected
    from orderbook.server.settings import Settings
    from orderbook.server.state import ServerState
    from orderbook.wire import codec
    from orderbook.wire.codec import Encoding

    class Sink:
        def write(self, data: bytes) -> None:
            pass

        def get_write_buffer_size(self) -> int:
            return 0

        def is_closing(self) -> bool:
            return False

    loop = asyncio.new_event_loop()
    rows = []
    for s in symbol_counts:
        settings = Settings(simulator=False, max_symbols=0)
        hub = Hub(settings, 1, loop)
        instruments = tuple(Instrument(f"S{i:05d}", 2, 4) for i in range(s))
        updates = tuple(BookUpdate(inst.symbol, ((100, 1),), ((101, 1),)) for inst in instruments)
        hub.ingest(FeedBatch(1, instruments, updates))
        for inst in instruments:
            req = codec.decode_client(codec.subscribe_message(inst.symbol).SerializeToString(), Encoding.PROTOBUF)
            hub.subscribe(hub.new_connection(Sink(), Encoding.PROTOBUF), req)  # type: ignore[arg-type]
        state = ServerState(settings, hub, Gate(settings), ready=True)
        for per_symbol in (True, False):
            metrics = NodeMetrics(lambda state=state: state, per_symbol)
            on_loop, writing, size = [], [], 0
            for _ in range(repeats):
                t0 = time.perf_counter()
                families = list(metrics.registry.collect())
                t1 = time.perf_counter()
                body = generate_latest(_Collected(families))
                t2 = time.perf_counter()
                on_loop.append(t1 - t0)
                writing.append(t2 - t1)
                size = len(body)
            rows.append(
                [
                    f"{s:,}",
                    "on" if per_symbol else "off",
                    f"{statistics.median(on_loop) * 1000:,.2f}",
                    f"{statistics.median(writing) * 1000:,.2f}",
                    f"{size / 1024:,.0f}",
                ]
            )
    loop.close()
    return c.markdown_table(
        ["symbols", "per-symbol series", "ms on the loop (collect)", "ms writing the text (thread)", "KiB"],
        rows,
        [True, False, True, True, True],
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--before", type=Path, help="source tree timed as 'before' (default: none, fan-out skipped)")
    p.add_argument("--after", type=Path, default=ROOT, help="source tree timed as 'after' (default: this one)")
    p.add_argument("--rounds", type=int, default=10, help="fan-out: alternating runs of each tree (default 10)")
    p.add_argument("--changes", type=int, default=CHANGES, help=f"fan-out: changes per run (default {CHANGES})")
    p.add_argument("--symbols", default="100,1000,10000", help="scrape: symbol counts (default 100,1000,10000)")
    p.add_argument("--repeats", type=int, default=5, help="scrape: scrapes timed per row (default 5)")
    p.add_argument("--sections", default="fanout,scrape")
    p.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.child, args.changes)
        return
    sys.path.insert(0, str(HERE))
    import _common as c

    info = c.machine_info()
    sections = args.sections.split(",")
    out = []
    if "fanout" in sections and args.before:
        out.append("### Fan-out: time per change, before and after the counting\n")
        out.append(fanout({"before": args.before, "after": args.after}, args.rounds, args.changes))
    if "scrape" in sections:
        out.append("\n### One scrape of /metrics\n")
        out.append(scrape([int(x) for x in args.symbols.split(",")], args.repeats))
    c.print_header("Metrics: hot-path and scrape cost", info)
    print("\n".join(out))


if __name__ == "__main__":
    main()
