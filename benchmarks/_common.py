"""Shared helpers for the benchmark scripts: timing, statistics, machine
details, Markdown tables and a deterministic order-book update stream.

Not part of the package or of the test run. Run the scripts from the
repository root, e.g. `python benchmarks/bench_ingest.py`.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from random import Random
from typing import TypeVar

from sortedcontainers import SortedDict

from orderbook.core.events import BookUpdate
from orderbook.core.instrument import Instrument

S = TypeVar("S")
K = TypeVar("K")

# ----------------------------------------------------------------------------- timing


@dataclass(frozen=True, slots=True)
class Rate:
    """Operations per second over several repeats."""

    samples: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def low(self) -> float:
        return min(self.samples)

    @property
    def high(self) -> float:
        return max(self.samples)


def time_once(setup: Callable[[], S], body: Callable[[S], object]) -> float:
    """Seconds taken by `body(setup())`; setup is not timed and the cyclic
    GC is off while timing, so a collection does not land in one sample."""
    state = setup()
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter()
        body(state)
        return time.perf_counter() - start
    finally:
        gc.enable()


def fixed(setup: Callable[[], S], body: Callable[[S], object], ops: int) -> Callable[[], float]:
    """A sampler: `ops / seconds` of one run of a fixed amount of work."""
    return lambda: ops / time_once(setup, body)


def timeboxed(step: Callable[[int], int], seconds: float) -> Callable[[], float]:
    """A sampler: ops per second of `step(i)` (i = 0, 1, ...; each call returns
    the ops it did), called until `seconds` have passed.

    Used where the cost per op differs by orders of magnitude between rows,
    so a fixed count would make the slow rows take minutes.
    """

    def sample() -> float:
        gc.collect()
        gc.disable()
        try:
            ops = 0
            i = 0
            start = time.perf_counter()
            deadline = start + seconds
            while True:
                ops += step(i)
                i += 1
                now = time.perf_counter()
                if now >= deadline:
                    return ops / (now - start)
        finally:
            gc.enable()

    return sample


def interleaved(samplers: dict[K, Callable[[], float]], repeats: int) -> dict[K, Rate]:
    """Round-robin: round r samples every row once before round r+1 starts.

    On a shared machine the load changes over seconds; interleaving spreads
    it over all rows alike, so ratios within one run stay meaningful.
    """
    samples: dict[K, list[float]] = {k: [] for k in samplers}
    for _ in range(repeats):
        for k, sampler in samplers.items():
            samples[k].append(sampler())
    return {k: Rate(tuple(v)) for k, v in samples.items()}


# ----------------------------------------------------------------------------- formatting


def fmt_rate(value: float) -> str:
    """A rate with thousands separators (k/M suffixes would hide digits that
    matter when comparing runs)."""
    return f"{value:,.0f}"


def fmt_spread(rate: Rate) -> str:
    return f"{fmt_rate(rate.low)} – {fmt_rate(rate.high)}"


def fmt_ratio(value: float) -> str:
    return f"{value:,.1f}×" if value >= 10 else f"{value:,.2f}×"


def markdown_table(
    headers: Sequence[str], rows: Sequence[Sequence[object]], right: Sequence[bool] | None = None
) -> str:
    """A GitHub-flavoured Markdown table; `right[i]` right-aligns column i."""
    align = right or [False] * len(headers)
    cells = [[str(c) for c in row] for row in rows]
    head = "| " + " | ".join(headers) + " |"
    rule = "|" + "|".join("---:" if r else "---" for r in align) + "|"
    body = ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join([head, rule, *body])


# ----------------------------------------------------------------------------- machine


def cpu_model() -> str:
    """`model name` from /proc/cpuinfo, with family/model/cache where given
    (virtual machines often report only a vendor line such as "AMD EPYC")."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    break  # the first processor is enough
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or platform.machine() or "unknown"
    extra = [
        f"{label} {fields[key]}"
        for key, label in (("cpu family", "family"), ("model", "model"), ("cache size", "cache"))
        if fields.get(key)
    ]
    return f"{name} ({', '.join(extra)})" if extra else name


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def load_average() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def machine_info() -> dict[str, str]:
    try:
        usable = str(len(os.sched_getaffinity(0)))
    except AttributeError:
        usable = "?"
    try:
        from google.protobuf.internal import api_implementation

        pb_backend = api_implementation.Type()
    except ImportError:
        pb_backend = "?"
    return {
        "CPU": cpu_model(),
        "Cores (logical / usable)": f"{os.cpu_count()} / {usable}",
        "Load average (1 / 5 / 15 min) at start": load_average(),
        "OS": f"{platform.system()} {platform.release()} ({platform.machine()})",
        "Python": f"{platform.python_implementation()} {platform.python_version()}",
        "orderbook": _version("orderbook"),
        "protobuf": f"{_version('protobuf')} (backend: {pb_backend})",
        "sortedcontainers": _version("sortedcontainers"),
    }


def base_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--seed", type=int, default=1, help="seed of the generated stream (default 1)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per row (default 5)")
    return p


def print_header(title: str, info: dict[str, str], argv: Sequence[str] | None = None) -> None:
    """Title, the command line, and the machine details collected at start
    (`info`) plus the load average now, at the end of the timed runs."""
    args = " ".join(sys.argv[1:] if argv is None else argv)
    script = os.path.join("benchmarks", os.path.basename(sys.argv[0]))
    print(f"## {title}\n")
    print(f"`python {script}{' ' + args if args else ''}`\n")
    rows = [*info.items(), ("Load average (1 / 5 / 15 min) at end", load_average())]
    print(markdown_table(["Machine", ""], rows))
    print()


# ----------------------------------------------------------------------------- stream

# BTC-USD-like: 0.01 price ticks, 1e-8 size lots, mid near 50,000.00.
INSTRUMENT = Instrument("BTC-USD", price_scale=2, size_scale=8, base="BTC", quote="USD", venue="bench")
_MID = 5_000_000
_NEAR = 20  # levels counted as "near the top"


@dataclass(frozen=True, slots=True)
class Stream:
    snapshot: BookUpdate  # replace=True: the starting book
    updates: tuple[BookUpdate, ...]
    levels_per_side: int  # target book size per side

    @property
    def level_count(self) -> int:
        return sum(len(u.bids) + len(u.asks) for u in self.updates)


def _size(rng: Random) -> int:
    # 0.00001 .. 2.00000 BTC, in lots; heavy on small sizes like real books.
    return rng.randint(1, rng.choice((100, 10_000, 200_000))) * 1_000


def _near_index(rng: Random) -> int:
    # Index from the top, skewed to 0: P(i) falls roughly like 1/i.
    return rng.randrange(rng.randint(1, _NEAR))


class _Side:
    """One side of the generator's own view of the book (keys: distance-sorted)."""

    def __init__(self, sign: int) -> None:
        self.sign = sign  # bids: -1 (best = highest), asks: +1 (best = lowest)
        self.levels: SortedDict = SortedDict()  # sign * price -> size

    def best(self) -> int:
        return self.sign * self.levels.peekitem(0)[0]

    def nth(self, i: int) -> int:
        keys = self.levels.keys()
        return self.sign * keys[min(i, len(keys) - 1)]

    def set(self, price: int, size: int) -> tuple[int, int]:
        if size:
            self.levels[self.sign * price] = size
        else:
            self.levels.pop(self.sign * price, None)
        return price, size


def generate_stream(seed: int, updates: int, levels_per_side: int) -> Stream:
    """A deterministic L2 stream for one symbol.

    Roughly: 50% size changes at one of the top ~20 levels, 12% deletes near
    the top, 20% new levels inside the spread or in a gap near the top, 4%
    deletes away from the top, 7% inserts or changes 50-3,000 ticks from the
    top, 7% multi-level
    updates (a sweep that takes out the best levels, resizes the new best
    and refills behind). The book size stays near `levels_per_side` per side
    (within about 10%), the spread stays a few ticks and the mid wanders.
    """
    rng = Random(seed)
    bids, asks = _Side(-1), _Side(1)
    for side in (bids, asks):
        price = _MID - 1 if side is bids else _MID + 1
        for i in range(levels_per_side):
            side.set(price, _size(rng))
            # Dense (every tick) at the top, sparser further out.
            price += side.sign * (1 if i < 30 else rng.randint(1, 1 + i // 25))
    snapshot = BookUpdate(
        INSTRUMENT.symbol,
        bids=tuple((-k, v) for k, v in bids.levels.items()),
        asks=tuple(asks.levels.items()),
        replace=True,
        event_time_ns=1,
    )

    out: list[BookUpdate] = []
    t = 1_700_000_000_000_000_000
    for _ in range(updates):
        t += rng.randint(1_000, 500_000)
        side = bids if rng.getrandbits(1) else asks
        n = len(side.levels)
        r = rng.randrange(100)
        # Keep the book near its target size: lean on deletes or inserts.
        if n > levels_per_side * 11 // 10 and r < 50:
            r = 82  # a far delete, so the levels near the top are not thinned
        elif (n < levels_per_side * 9 // 10 and 50 <= r < 62) or n < 2 * _NEAR + 10:
            r = 65
        levels: list[tuple[int, int]]
        if r < 50:  # size change at an existing level near the top
            levels = [side.set(side.nth(_near_index(rng)), _size(rng))]
        elif r < 62:  # delete near the top
            levels = [side.set(side.nth(_near_index(rng)), 0)]
        elif r < 82:  # new level: inside a wide spread, else in a gap near the top
            spread = asks.best() - bids.best()
            if spread > 1 and rng.randrange(4):
                # Quotes step in toward the mid, so a wide spread closes fast.
                price = side.best() - side.sign * rng.randint(1, max(1, spread // 2))
            else:
                price = side.best() + side.sign * rng.randrange(1, _NEAR)
                for _ in range(4):
                    if side.sign * price not in side.levels:
                        break
                    price += side.sign
            levels = [side.set(price, _size(rng))]
        elif r < 86:  # delete a level away from the top
            levels = [side.set(side.nth(rng.randrange(2 * _NEAR, n)), 0)]
        elif r < 93:  # insert or change 50-3,000 ticks from the top
            levels = [side.set(side.best() + side.sign * rng.randint(50, 3_000), _size(rng))]
        else:  # sweep: the best 1-2 levels go, the next shrinks, one refill behind
            levels = [side.set(side.nth(0), 0) for _ in range(rng.randint(1, 2))]
            levels.append(side.set(side.nth(0), _size(rng)))
            levels.append(side.set(side.nth(_NEAR) + side.sign * rng.randint(1, 5), _size(rng)))
        lv = tuple(levels)
        out.append(
            BookUpdate(
                INSTRUMENT.symbol,
                bids=lv if side is bids else (),
                asks=lv if side is asks else (),
                event_time_ns=t,
            )
        )
    return Stream(snapshot, tuple(out), levels_per_side)
