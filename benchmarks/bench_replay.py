"""Replay throughput: recorded market data parsed alone, rebuilt into books,
and replayed at full speed through /feed into a node with 100 subscribers.

The node runs in its own process; the replayer and the subscribers share
this one. Reads the shared recordings in place (../shared/data, or
$ORDERBOOK_SHARED_DATA) and the small OKX and Deribit samples in
tests/data. Prints Markdown tables; not part of the test run.

Reading alone runs in child processes, one core each, timed in CPU seconds
(`time.process_time`: what other work on a shared machine takes is not
counted): each child reads every dataset enough times for a stable figure.
With `--against REV` the same children run the package as of git revision
REV (extracted with `git archive`), alternating with this tree's, so the
speedup is a ratio measured in one run.

    python benchmarks/bench_replay.py [--datasets NAME...] [--repeats N]
        [--against REV] [--no-server] [--stages] [--subscribers N]

`--stages` adds where one verify spends its CPU time (this tree only): the
reader, the line split and JSON within it, applying the records to a node's
books, and the checks and report (verify of records already read, less
applying them).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import io
import json
import math
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# A child measuring another revision: its package goes first on the path.
if "--tree" in sys.argv:
    sys.path.insert(0, sys.argv[sys.argv.index("--tree") + 1])

import _common as c  # noqa: E402

from orderbook.core.events import FeedBatch  # noqa: E402
from orderbook.replay.files import open_records  # noqa: E402
from orderbook.replay.player import FeedSink, play  # noqa: E402
from orderbook.replay.verify import verify  # noqa: E402
from orderbook.wire import codec  # noqa: E402
from tests.harness import FEED_TOKEN, start_server_process  # noqa: E402

# name -> (path, format); a path starting "tests/" is in this repository.
DATASETS = {
    "kraken": ("kraken-book-2021-04-17/KRAKEN.ws.50.0", "kraken"),
    "coinbase": ("coinbase-level2-2021-04-17/COINBASE.ws.28.0", "coinbase"),
    "binance": ("binance-depth-2021/2021-04-17", "binance"),
    "okx": ("tests/data/cryptofeed-sample-data/OKX.ws.1.0", "okx"),
    "deribit": ("tests/data/cryptofeed-sample-data/DERIBIT.ws.1.0", "deribit"),
    "lobster-aapl": ("lobster-2012-06-21/aapl-l10-first999", "lobster"),
    "lobster-amzn": ("lobster-2012-06-21/amzn-l1-fullday", "lobster"),
    "tardis": ("tardis-deribit-2020-04-01/deribit_incremental_book_L2_BTC-PERPETUAL.csv", "tardis"),
}
# Each timed sample reads a dataset for about this many CPU seconds (a small
# file several times over; the same number of times for every revision).
SAMPLE_SECONDS = 0.4
# A replay through a node whose subscribers fall silent fails after this, rather than hanging.
DELIVERY_TIMEOUT_S = 300


def data_dir() -> Path:
    env = os.environ.get("ORDERBOOK_SHARED_DATA")
    return Path(env) if env else ROOT.parent / "shared" / "data"


def dataset_path(name: str) -> Path:
    rel = DATASETS[name][0]
    return ROOT / rel if rel.startswith("tests/") else data_dir() / rel


def count_changes(path: Path, fmt: str) -> tuple[int, int]:
    records = changes = 0
    for rec in open_records(path, fmt):
        records += 1
        for u in rec.updates:
            changes += len(u.bids) + len(u.asks)
    return records, changes


def cpu_seconds(body: Callable[[], object], loops: int) -> float:
    """CPU seconds of `loops` calls of `body`, the cyclic GC off while timing."""
    gc.collect()
    gc.disable()
    try:
        start = time.process_time()
        for _ in range(loops):
            body()
        return time.process_time() - start
    finally:
        gc.enable()


def reads_per_sample(name: str) -> int:
    """How many reads of a dataset make one sample (timed once with this tree)."""
    path, fmt = dataset_path(name), DATASETS[name][1]
    verify(open_records(path, fmt))  # (imports, caches: not timed)
    once = cpu_seconds(lambda: verify(open_records(path, fmt)), 1)
    return max(1, math.ceil(SAMPLE_SECONDS / max(once, 1e-6)))


def measure(jobs: list[str]) -> dict[str, dict[str, float | str]]:
    """One sample per `NAME:READS` job: records, level changes and the CPU
    seconds of reading the dataset READS times (reader alone) and verifying
    it READS times (reader + books + checks)."""
    out: dict[str, dict[str, float | str]] = {}
    for job in jobs:
        name, _, reads = job.partition(":")
        path, fmt, loops = dataset_path(name), DATASETS[name][1], int(reads)
        try:
            records, changes = count_changes(path, fmt)
            parse = cpu_seconds(lambda path=path, fmt=fmt: count_changes(path, fmt), loops)
            report = verify(open_records(path, fmt))
            check = cpu_seconds(lambda path=path, fmt=fmt: verify(open_records(path, fmt)), loops)
        except Exception as exc:  # an older revision may not read a format
            out[name] = {"error": f"{type(exc).__name__}: {exc}"[:120]}
            continue
        out[name] = {
            "records": records,
            "changes": changes,
            "loops": loops,
            "parse_s": parse,
            "verify_s": check,
            "checked": report.checked,
            "matched": report.matched,
        }
    return out


# Verify's budget per record at the target rate.
TARGET_CHANGES_PER_S = 500_000
STAGE_TRIES = 15


def best_ms(body: Callable[[], object], tries: int = STAGE_TRIES) -> float:
    return min(cpu_seconds(body, 1) for _ in range(tries)) * 1000


def stage_table(names: list[str]) -> None:
    """Where one verify of each dataset spends its CPU time, this tree only:
    each stage timed apart (best of STAGE_TRIES), in ms and µs per record."""
    from orderbook.core.market import Market
    from orderbook.replay.formats.capture import OPENED, read_capture
    from orderbook.replay.records import Record, loads

    rows = []
    for name in names:
        path, fmt = dataset_path(name), DATASETS[name][1]
        records = list(open_records(path, fmt))
        n = len(records)
        changes = sum(len(u.bids) + len(u.asks) for r in records for u in r.updates)
        # Every capture file the reader opens: the directory's, or the file and an OKX instruments file beside it.
        files = sorted(path.iterdir()) if path.is_dir() else [path]
        if fmt == "okx" and (path.parent / "OKX.0").exists():
            files.append(path.parent / "OKX.0")

        def split_json(files: list[Path] = files) -> None:
            for f in files:
                with f.open(encoding="utf-8") as lines:
                    for line in read_capture(lines):
                        if line.kind != OPENED and line.body:
                            with contextlib.suppress(ValueError):  # the reader's business
                                loads(line.body)

        def apply_all(records: list[Record] = records) -> None:
            # As verify applies them: a record of one update through `apply_one`.
            market = Market(epoch=1)
            for i, r in enumerate(records):
                if len(r.updates) == 1 and not r.instruments:
                    market.apply_one(r.updates[0])
                else:
                    market.apply(FeedBatch(i, r.instruments, r.updates))

        whole = best_ms(lambda path=path, fmt=fmt: verify(open_records(path, fmt)))
        reader = best_ms(lambda path=path, fmt=fmt: list(open_records(path, fmt)))
        split = best_ms(split_json) if fmt in ("kraken", "coinbase", "binance", "okx") else float("nan")
        applying = best_ms(apply_all)
        checks = best_ms(lambda records=records: verify(records)) - applying
        us = 1000 / n
        rows.append(
            [
                name,
                f"{changes / n:.1f}",
                f"{whole:.1f}",
                f"{changes / TARGET_CHANGES_PER_S * 1000:.1f}",
                f"{reader:.1f} ({reader * us:.1f} µs)",
                f"{split:.1f}",
                f"{applying:.1f} ({applying * us:.1f} µs)",
                f"{checks:.1f} ({checks * us:.1f} µs)",
            ]
        )
    columns = [
        "dataset",
        "changes per record",
        "verify",
        "budget at 500k/s",
        "reader (per record)",
        "of which line split + JSON",
        "applying (per record)",
        "checks + report (per record)",
    ]
    print(f"\n## Verify by stage, one core (CPU ms, best of {STAGE_TRIES}, each stage timed apart)\n")
    print(c.markdown_table(columns, rows, [False] + [True] * (len(columns) - 1)))


def extract(rev: str, into: Path) -> Path:
    """The `orderbook` package as of git revision `rev`, under `into`."""
    try:
        archive = subprocess.run(["git", "archive", rev, "orderbook"], cwd=ROOT, capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        sys.exit(f"--against {rev}: cannot read orderbook/ from git: {exc}")
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(into, filter="data")
    return into


def child_sample(jobs: list[str], tree: Path | None) -> dict[str, dict[str, float | str]]:
    cmd = [sys.executable, __file__, "--measure", *jobs]
    if tree is not None:
        cmd += ["--tree", str(tree)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"measuring child failed:\n{done.stderr[-2000:]}")
    result: dict[str, dict[str, float | str]] = json.loads(done.stdout)
    return result


def reading_tables(names: list[str], repeats: int, against: str | None) -> None:
    trees: dict[str, Path | None] = {"this tree": None}
    with tempfile.TemporaryDirectory() as tmp:
        if against:
            # Named by its commit, so a table says what it was compared with.
            rev = subprocess.run(
                ["git", "rev-parse", "--short", against], cwd=ROOT, capture_output=True, text=True, check=False
            ).stdout.strip()
            against = rev or against
            trees[against] = extract(against, Path(tmp))
        # Round-robin over the trees, so a change of load on the machine falls on both alike.
        jobs = [f"{name}:{reads_per_sample(name)}" for name in names]
        samples: dict[str, list[dict[str, dict[str, float | str]]]] = {t: [] for t in trees}
        for _ in range(repeats):
            for label, tree in trees.items():
                samples[label].append(child_sample(jobs, tree))

    def rate(label: str, name: str, key: str) -> float | None:
        runs = [run[name] for run in samples[label]]
        if "error" in runs[0]:
            return None
        return statistics.median(float(r["changes"]) * float(r["loops"]) / float(r[key]) for r in runs)

    head = samples["this tree"][0]
    rows = []
    for name in names:
        first = head[name]
        if "error" in first:
            rows.append([name, "-", "-", "-", "-", "-", str(first["error"])])
            continue
        parse, check = rate("this tree", name, "parse_s"), rate("this tree", name, "verify_s")
        assert parse is not None and check is not None
        row = [
            name,
            f"{first['records']:,}",
            f"{first['changes']:,}",
            f"{first['loops']}",
            c.fmt_rate(parse),
            c.fmt_rate(check),
            f"{first['matched']:,} of {first['checked']:,}",
        ]
        if against:
            old_parse, old_check = rate(against, name, "parse_s"), rate(against, name, "verify_s")
            row += [
                c.fmt_rate(old_parse) if old_parse else "n/a",
                c.fmt_rate(old_check) if old_check else "n/a",
                c.fmt_ratio(parse / old_parse) if old_parse else "n/a",
                c.fmt_ratio(check / old_check) if old_check else "n/a",
            ]
        rows.append(row)
    columns = [
        "dataset",
        "records",
        "level changes",
        "reads per sample",
        "reader alone (changes/s)",
        "verify (changes/s)",
        "references matched",
    ]
    if against:
        columns += [f"reader at {against}", f"verify at {against}", "reader speedup", "verify speedup"]
    print(f"\n## Reading alone, one core (level changes per CPU second, median of {repeats} runs)\n")
    print(c.markdown_table(columns, rows, [False] + [True] * (len(columns) - 1)))


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
            ws = await websockets.connect(url, max_size=None, close_timeout=2)
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
        # All at once: one by one, a node slow to answer the closing
        # handshakes would hold each socket for its whole close timeout.
        await asyncio.gather(*(ws.close() for ws in self.sockets))


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
        deadline = time.perf_counter() + DELIVERY_TIMEOUT_S
        while not subs.reached(final):
            if time.perf_counter() > deadline:
                raise TimeoutError(f"{path.name}: subscribers still short of {final} after {DELIVERY_TIMEOUT_S} s")
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
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--datasets", nargs="*", default=list(DATASETS))
    p.add_argument("--against", metavar="REV", help="also read with the package at git revision REV")
    p.add_argument("--no-server", action="store_true", help="reading alone only: no replay through a node")
    p.add_argument("--stages", action="store_true", help="also time verify's stages apart (this tree only)")
    p.add_argument("--measure", nargs="*", help=argparse.SUPPRESS)  # a child: print one sample as JSON
    p.add_argument("--tree", help=argparse.SUPPRESS)  # a child: the package's folder (see the imports)
    args = p.parse_args()
    if args.measure is not None:
        print(json.dumps(measure(args.measure)))
        return
    unknown = [n for n in args.datasets if n not in DATASETS]
    if unknown:
        sys.exit(f"unknown datasets {unknown}; known: {', '.join(DATASETS)}")
    names = [n for n in args.datasets if dataset_path(n).exists()]
    for n in sorted(set(args.datasets) - set(names)):
        print(f"(skipped {n}: {dataset_path(n)} not found; set ORDERBOOK_SHARED_DATA)", file=sys.stderr)
    print("## Machine\n")
    print(c.markdown_table(["", ""], list(c.machine_info().items())))

    reading_tables(names, args.repeats, args.against)
    if args.stages:
        stage_table(names)
    if args.no_server:
        return

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            fmt = DATASETS[name][1]
            runs = [
                asyncio.run(through_server(dataset_path(name), fmt, args.subscribers, Path(tmp)))
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
