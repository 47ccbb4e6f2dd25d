"""Ingest: level changes applied per second through the sequencer and book.

Two streams of the same market, generated before timing:
  * "as generated": one feed update per change (1.18 levels on average);
  * "merged, N+ levels": the same stream cut into feed messages of at least
    N = `--levels-per-message` levels: consecutive updates merged, the last
    size of a price winning, as a venue's diff messages carry them. Both
    streams end in the same book.

Rows, on each stream (same run, sampled round-robin):
  * `Market.apply` on `FeedBatch` batches: whole-batch validation, book
    update, effective-change detection, seq stamping, top-10 checksum and a
    `Delta` per change.
  * `SequencedBook.apply` per update: the same without validation or batching.
  * naive baseline: two plain dicts of `Decimal` price -> `Decimal` size,
    decimal strings parsed for every level, both sides `sorted()` on every
    update for the top 10 and the checksum string.
  * with `--against REV`: `Market.apply` and `SequencedBook.apply` of the
    core at git revision REV (`orderbook/core` extracted with `git archive`
    and imported beside this tree's), fed the same stream.

A level change is one (price, size) pair of an update, whether or not it
changes the book. Every timed run starts from the same snapshot, and every
path must end with the same book checksum.

    python benchmarks/bench_ingest.py [--updates N] [--levels-per-message N]
        [--book-levels N] [--against REV] [--profile]
"""

from __future__ import annotations

import cProfile
import dataclasses
import importlib
import importlib.util
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from types import ModuleType
from typing import Any

import _common as c

from orderbook.core import events, market, sequencer
from orderbook.core.events import BookUpdate

TOP = 10
EPOCH = 1

# ----------------------------------------------------------------------------- streams


def merge_messages(updates: Sequence[BookUpdate], levels: int) -> tuple[BookUpdate, ...]:
    """Consecutive updates merged into messages of at least `levels` levels
    (the last one may hold fewer). Within a message the last size of a price
    wins, at the place of its first appearance; applying the message leaves
    the book that applying its updates one by one leaves."""
    out: list[BookUpdate] = []
    bids: dict[int, int] = {}
    asks: dict[int, int] = {}
    t = 0
    for u in updates:
        bids.update(u.bids)
        asks.update(u.asks)
        t = u.event_time_ns
        if len(bids) + len(asks) >= levels:
            out.append(BookUpdate(u.symbol, tuple(bids.items()), tuple(asks.items()), event_time_ns=t))
            bids, asks = {}, {}
    if bids or asks:
        out.append(BookUpdate(updates[-1].symbol, tuple(bids.items()), tuple(asks.items()), event_time_ns=t))
    return tuple(out)


def level_count(updates: Sequence[BookUpdate]) -> int:
    return sum(len(u.bids) + len(u.asks) for u in updates)


# ----------------------------------------------------------------------------- our paths


@dataclass(frozen=True)
class Core:
    """One implementation of `orderbook.core`: this tree's, or a git revision's
    imported under another name (its own event classes)."""

    name: str
    market: ModuleType
    sequencer: ModuleType
    events: ModuleType
    instrument: Any

    def updates(self, updates: Sequence[BookUpdate]) -> tuple[Any, ...]:
        if self.events is events:
            return tuple(updates)
        cls = self.events.BookUpdate
        return tuple(cls(**_fields(u)) for u in updates)

    def batches(self, updates: Sequence[Any], size: int) -> tuple[Any, ...]:
        cls = self.events.FeedBatch
        return tuple(cls(i, updates=tuple(updates[i : i + size])) for i in range(0, len(updates), size))

    def fresh_market(self, snapshot: Any) -> Any:
        m = self.market.Market(EPOCH)
        m.define(self.instrument)
        m.apply(self.events.FeedBatch(0, updates=(snapshot,)))
        return m

    def fresh_book(self, snapshot: Any) -> Any:
        sb = self.sequencer.SequencedBook(self.instrument, EPOCH)
        sb.apply(snapshot)
        return sb


def _fields(obj: Any) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}


THIS_TREE = Core("this tree", market, sequencer, events, c.INSTRUMENT)


def core_at(rev: str, workdir: str) -> Core:
    """`orderbook/core` as of git revision `rev`, imported as a separate package."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        archive = subprocess.run(
            ["git", "archive", rev, "orderbook/core"], cwd=root, capture_output=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        sys.exit(f"--against {rev}: cannot read orderbook/core from git: {exc}")
    # The "data" filter (refusing links and paths out of `workdir`) exists
    # from Python 3.11.4 on; the archive comes from this repository anyway.
    safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(workdir, **safe)
    path = os.path.join(workdir, "orderbook", "core")
    # The core imports only itself (relatively) and third-party packages, so
    # it loads under any package name, beside this tree's.
    pkg = "_core_at_" + "".join(ch if ch.isalnum() else "_" for ch in rev)
    spec = importlib.util.spec_from_file_location(
        pkg, os.path.join(path, "__init__.py"), submodule_search_locations=[path]
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[pkg] = module
    spec.loader.exec_module(module)
    ev = importlib.import_module(pkg + ".events")
    inst = importlib.import_module(pkg + ".instrument").Instrument(**_fields(c.INSTRUMENT))
    return Core(rev, importlib.import_module(pkg + ".market"), importlib.import_module(pkg + ".sequencer"), ev, inst)


def run_market(market: Any, batches: Sequence[Any]) -> int:
    apply = market.apply
    n = 0
    for batch in batches:
        n += len(apply(batch).deltas)
    return n


def run_book(sb: Any, updates: Sequence[Any]) -> int:
    apply = sb.apply
    n = 0
    for u in updates:
        if apply(u) is not None:
            n += 1
    return n


def stage_validate(sb: Any, updates: Sequence[BookUpdate]) -> int:
    check = sequencer.validate_update
    inst = sb.instrument
    for u in updates:
        check(inst, u)
    return len(updates)


def stage_mutate(sb: Any, updates: Sequence[BookUpdate]) -> int:
    book = sb.book
    apply_bids, apply_asks = book.apply_bids, book.apply_asks
    for u in updates:
        if u.bids:
            apply_bids(u.bids)
        if u.asks:
            apply_asks(u.asks)
    return len(updates)


def stage_checksum(sb: Any, updates: Sequence[BookUpdate]) -> int:
    book = sb.book
    apply_bids, apply_asks, checksum = book.apply_bids, book.apply_asks, book.checksum
    for u in updates:
        if u.bids:
            apply_bids(u.bids)
        if u.asks:
            apply_asks(u.asks)
        checksum()
    return len(updates)


# (label, runner on a fresh SequencedBook): validation alone, then stages that
# each add work to the one before.
STAGES = (
    ("`validate_update` alone", stage_validate),
    ("`Book.apply_bids` / `apply_asks`", stage_mutate),
    ("+ `Book.checksum()` after each update", stage_checksum),
    ("+ seq and `Delta`: `SequencedBook.apply`", run_book),
)


# ----------------------------------------------------------------------------- naive baseline

StrLevels = tuple[tuple[str, str], ...]


@dataclass(slots=True)
class NaiveBook:
    bids: dict[Decimal, Decimal]
    asks: dict[Decimal, Decimal]
    seq: int = 0
    checksum: int = 0


def to_strings(levels: Sequence[tuple[int, int]]) -> StrLevels:
    # What a JSON feed delivers: decimal strings with the venue's decimals.
    fp, fs = c.INSTRUMENT.format_price, c.INSTRUMENT.format_size
    return tuple((fp(p), fs(s)) for p, s in levels)


def fresh_naive(snapshot: tuple[StrLevels, StrLevels]) -> NaiveBook:
    b, a = snapshot
    return NaiveBook({Decimal(p): Decimal(s) for p, s in b}, {Decimal(p): Decimal(s) for p, s in a})


def _digits(d: Decimal) -> str:
    return str(d).replace(".", "").lstrip("0")


def run_naive(book: NaiveBook, updates: Sequence[tuple[StrLevels, StrLevels]]) -> int:
    bids, asks = book.bids, book.asks
    out = []
    for ub, ua in updates:
        for side, levels in ((bids, ub), (asks, ua)):
            for p, s in levels:
                price, size = Decimal(p), Decimal(s)
                if size:
                    side[price] = size
                else:
                    side.pop(price, None)
        top_asks = sorted(asks.items())[:TOP]
        top_bids = sorted(bids.items(), reverse=True)[:TOP]
        text = "".join(_digits(p) + _digits(s) for p, s in top_asks + top_bids)
        book.checksum = zlib.crc32(text.encode("ascii"))
        book.seq += 1
        out.append((book.seq, ub, ua, book.checksum))
    return len(out)


# ----------------------------------------------------------------------------- profile


def _where(path: str) -> str:
    # Relative, machine-independent names for the profile table.
    if path == "<string>":
        return "generated"  # dataclass __init__ and the like
    if path.startswith(("~", "<")):
        return "builtin"
    marker = "site-packages" + os.sep
    if marker in path:
        return path.split(marker, 1)[1]
    try:
        return os.path.relpath(path)
    except ValueError:
        return os.path.basename(path)


# Generated dataclass __init__s all come from "<string>" line 2, so they are
# told apart by their code objects.
GENERATED = {
    cls.__init__.__code__: cls.__name__
    for cls in (events.BatchResult, events.Position, events.FeedBatch, events.BookUpdate)
}

# (label, file suffix, function name): shares of the run shown under the table.
FOCUS = (
    ("`Book.apply_bids` / `apply_asks` (book mutation, change detection)", "orderbook/core/book.py", "update"),
    ("`Book.checksum` (top-10 text + CRC-32)", "orderbook/core/book.py", "checksum"),
    ("`validate_updates` (whole-batch validation)", "orderbook/core/sequencer.py", "validate_updates"),
    ("`_Keys.add` (sorted index: a level appears)", "orderbook/core/book.py", "add"),
    ("`_Keys.remove` (sorted index: a level goes)", "orderbook/core/book.py", "remove"),
    ("`Delta` construction (a named tuple's `__new__`)", "<string>", "__new__"),
)


def _label(code: Any) -> tuple[str, str, str]:
    """(table label, file, name) of a profiler entry's code."""
    if isinstance(code, str):
        return f"`{code}`", "builtin", code
    if code in GENERATED:
        name = f"{GENERATED[code]}.__init__"
        return f"`{name}` (generated)", code.co_filename, name
    where = _where(code.co_filename)
    return f"`{where}:{code.co_firstlineno}({code.co_name})`", code.co_filename, code.co_name


def profile_tables(fn: Any, *args: object, top: int = 12) -> str:
    """Top functions by own time, then the cumulative share of `FOCUS` entries."""
    prof = cProfile.Profile()
    prof.enable()
    fn(*args)
    prof.disable()
    entries = [e for e in prof.getstats() if e.code != "<method 'disable' of '_lsprof.Profiler' objects>"]
    total = sum(e.inlinetime for e in entries)
    rows = []
    for e in sorted(entries, key=lambda e: e.inlinetime, reverse=True)[:top]:
        label = _label(e.code)[0]
        share = f"{100 * e.inlinetime / total:.1f}%"
        rows.append([label, f"{e.callcount:,}", f"{e.inlinetime:.3f}", share, f"{e.totaltime:.3f}"])
    own = c.markdown_table(
        ["function", "calls", "own s", "own %", "cumulative s"], rows, [False, True, True, True, True]
    )
    shares = []
    for label, suffix, func in FOCUS:
        cum = 0.0
        for e in entries:
            _, path, name = _label(e.code)
            if name == func and path.endswith(suffix):
                cum += e.totaltime
        if cum:
            shares.append([label, f"{100 * cum / total:.0f}%"])
    focus = c.markdown_table(["including callees", "share of the run"], shares, [False, True])
    return own + "\n\n" + focus


# ----------------------------------------------------------------------------- main


@dataclass(frozen=True)
class Feed:
    """One stream as every path takes it."""

    label: str
    updates: tuple[BookUpdate, ...]
    naive: tuple[tuple[StrLevels, StrLevels], ...]  # a prefix, as decimal strings

    @property
    def levels(self) -> int:
        return level_count(self.updates)

    @property
    def naive_levels(self) -> int:
        return sum(len(b) + len(a) for b, a in self.naive)


def main(argv: Sequence[str] | None = None) -> None:
    p = c.base_parser(__doc__.splitlines()[0])
    p.add_argument("--updates", type=int, default=100_000, help="generated updates per timed run (default 100,000)")
    p.add_argument(
        "--levels-per-message",
        type=int,
        default=10,
        help="levels per feed message in the merged stream (default 10)",
    )
    p.add_argument("--book-levels", type=int, default=500, help="book size per side (default 500)")
    p.add_argument(
        "--naive-updates",
        type=int,
        default=4_000,
        help="generated updates per naive run: a prefix of the same stream, as the naive "
        "path is much slower (default 4,000)",
    )
    p.add_argument("--batch-size", type=int, default=32, help="updates per FeedBatch (default 32)")
    p.add_argument(
        "--against",
        metavar="REV",
        help="also time orderbook/core at this git revision (e.g. HEAD, a commit), same streams",
    )
    p.add_argument("--profile", action="store_true", help="also print a cProfile summary of our paths")
    args = p.parse_args(argv)
    if args.book_levels < 60:
        p.error("--book-levels must be at least 60")
    if args.levels_per_message < 1:
        p.error("--levels-per-message must be at least 1")

    workdir = tempfile.mkdtemp(prefix="bench-ingest-")
    try:
        cores = [THIS_TREE] + ([core_at(args.against, workdir)] if args.against else [])
        _run(args, argv, cores)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _run(args: Any, argv: Sequence[str] | None, cores: list[Core]) -> None:
    info = c.machine_info()
    stream = c.generate_stream(args.seed, args.updates, args.book_levels)
    n_naive = min(args.naive_updates, len(stream.updates))
    merged = merge_messages(stream.updates, args.levels_per_message)
    # The naive prefix of the merged stream covers about as many generated updates.
    n_naive_merged = max(1, round(len(merged) * n_naive / len(stream.updates)))
    naive_snapshot = (to_strings(stream.snapshot.bids), to_strings(stream.snapshot.asks))

    def feed(label: str, updates: tuple[BookUpdate, ...], naive_prefix: Sequence[BookUpdate]) -> Feed:
        return Feed(label, updates, tuple((to_strings(u.bids), to_strings(u.asks)) for u in naive_prefix))

    feeds = [
        feed("as generated", stream.updates, stream.updates[:n_naive]),
        feed(f"merged, {args.levels_per_message}+ levels", merged, merged[:n_naive_merged]),
    ]

    # Per core and feed: its snapshot, updates and batches, converted once.
    prepared: dict[tuple[str, str], tuple[Any, tuple[Any, ...], tuple[Any, ...]]] = {}
    for core in cores:
        snap = core.updates([stream.snapshot])[0]
        for f in feeds:
            ups = core.updates(f.updates)
            prepared[core.name, f.label] = (snap, ups, core.batches(ups, args.batch_size))

    # Correctness first (untimed): on both feeds, every path ends in the same
    # book (the naive one after its prefix, compared with ours after the same).
    finals = set()
    deltas: dict[str, int] = {}
    changes: dict[str, int] = {}
    for f in feeds:
        nb = fresh_naive(naive_snapshot)
        run_naive(nb, f.naive)
        for core in cores:
            snap, ups, batches = prepared[core.name, f.label]
            m = core.fresh_market(snap)
            res = [m.apply(b) for b in batches]
            sb = core.fresh_book(snap)
            run_book(sb, ups[: len(f.naive)])
            if sb.book.checksum() != nb.checksum:
                sys.exit(f"{core.name}, {f.label}: naive and ours disagree on the book checksum")
            run_book(sb, ups[len(f.naive) :])
            book = m.get(c.INSTRUMENT.symbol).book
            finals.add((book.checksum(), sb.book.checksum(), tuple(book.bids()), tuple(book.asks())))
            if core is THIS_TREE:
                deltas[f.label] = sum(len(r.deltas) for r in res)
                changes[f.label] = sum(len(d.bids) + len(d.asks) for r in res for d in r.deltas)
                final = book
    if len(finals) != 1:
        sys.exit("paths disagree on the final book")

    # Warm-up on a prefix, then the timed runs.
    warm = 1_000
    samplers = {}
    for f in feeds:
        for core in cores:
            snap, ups, batches = prepared[core.name, f.label]
            run_market(core.fresh_market(snap), batches[: max(1, warm // args.batch_size)])
            run_book(core.fresh_book(snap), ups[:warm])
            n = len(ups)

            def market_setup(core: Core = core, snap: Any = snap) -> Any:
                return core.fresh_market(snap)

            def book_setup(core: Core = core, snap: Any = snap) -> Any:
                return core.fresh_book(snap)

            samplers[f.label, core.name, "market"] = c.fixed(market_setup, lambda s, b=batches: run_market(s, b), n)
            samplers[f.label, core.name, "book"] = c.fixed(book_setup, lambda s, u=ups: run_book(s, u), n)
        run_naive(fresh_naive(naive_snapshot), f.naive[:warm])
        samplers[f.label, "naive", "naive"] = c.fixed(
            lambda: fresh_naive(naive_snapshot), lambda s, u=f.naive: run_naive(s, u), len(f.naive)
        )
    rates = c.interleaved(samplers, args.repeats)

    c.print_header("Ingest: level changes applied per second", info, argv)
    stream_rows = [["book size per side at start", f"{args.book_levels:,}"]]
    stream_rows.append(["book size at end (bids / asks)", f"{final.bid_count():,} / {final.ask_count():,}"])
    for f in feeds:
        lpu = f.levels / len(f.updates)
        lpu_naive = f.naive_levels / len(f.naive)
        stream_rows += [
            [f"{f.label}: updates (naive: a prefix)", f"{len(f.updates):,} (naive: {len(f.naive):,})"],
            [f"{f.label}: level changes per update, mean", f"{lpu:.2f} (naive: {lpu_naive:.2f})"],
            [f"{f.label}: updates that changed the book (deltas)", f"{deltas[f.label]:,}"],
            [f"{f.label}: levels in those deltas (effective changes)", f"{changes[f.label]:,}"],
        ]
    stream_rows += [
        ["updates per FeedBatch", f"{args.batch_size}"],
        ["seed / repeats", f"{args.seed} / {args.repeats}"],
    ]
    print(c.markdown_table(["Stream", ""], stream_rows))
    print()

    headers = ["path", "stream", "level changes/s (median)", "min – max", "updates/s", "µs/update", "vs naive"]
    if len(cores) > 1:
        headers.append(f"vs `{cores[1].name}`")
    rows = []
    for f in feeds:
        lpu = f.levels / len(f.updates)
        lpu_naive = f.naive_levels / len(f.naive)
        naive = rates[f.label, "naive", "naive"].median
        for core in cores:
            for kind, label in (
                ("market", "`Market.apply` (FeedBatch, validated)"),
                ("book", "`SequencedBook.apply` (per update)"),
            ):
                r = rates[f.label, core.name, kind]
                name = label if core is THIS_TREE else f"{label} at `{core.name}`"
                row = [
                    name,
                    f.label,
                    c.fmt_rate(r.median * lpu),
                    f"{c.fmt_rate(r.low * lpu)} – {c.fmt_rate(r.high * lpu)}",
                    c.fmt_rate(r.median),
                    f"{1e6 / r.median:.2f}",
                    c.fmt_ratio(r.median * lpu / (naive * lpu_naive)),
                ]
                if len(cores) > 1:
                    row.append(c.fmt_ratio(r.median / rates[f.label, cores[1].name, kind].median))
                rows.append(row)
        r = rates[f.label, "naive", "naive"]
        row = [
            "naive: Decimal dicts + sorted() per update",
            f.label,
            c.fmt_rate(r.median * lpu_naive),
            f"{c.fmt_rate(r.low * lpu_naive)} – {c.fmt_rate(r.high * lpu_naive)}",
            c.fmt_rate(r.median),
            f"{1e6 / r.median:.2f}",
            c.fmt_ratio(1.0),
        ]
        if len(cores) > 1:
            row.append("")
        rows.append(row)
    print(c.markdown_table(headers, rows, [False, False] + [True] * (len(headers) - 2)))
    print()

    if args.profile:
        # Unprofiled first: cProfile's cost per call would inflate the many
        # small calls, so the split comes from timing cumulative stages.
        samplers = {}
        for f in feeds:
            snap, ups, batches = prepared[THIS_TREE.name, f.label]
            for label, runner in STAGES:
                samplers[f.label, label] = c.fixed(
                    lambda snap=snap: THIS_TREE.fresh_book(snap), lambda s, u=ups, r=runner: r(s, u), len(ups)
                )
            samplers[f.label, "market"] = c.fixed(
                lambda snap=snap: THIS_TREE.fresh_market(snap), lambda s, b=batches: run_market(s, b), len(ups)
            )
        stage_rates = c.interleaved(samplers, args.repeats)
        print("### Where the time goes: cumulative stages, µs per update (median)\n")
        headers = ["stage"] + [f.label for f in feeds]
        rows = []
        for label, _ in STAGES:
            rows.append([label] + [f"{1e6 / stage_rates[f.label, label].median:.2f}" for f in feeds])
        rows.append(
            ["+ batching and validation: `Market.apply`"]
            + [f"{1e6 / stage_rates[f.label, 'market'].median:.2f}" for f in feeds]
        )
        print(c.markdown_table(headers, rows, [False] + [True] * len(feeds)))
        print()
        for f in feeds:
            snap, ups, batches = prepared[THIS_TREE.name, f.label]
            print(f"### Profile: `Market.apply`, {f.label}, one run, top functions by own time\n")
            print(profile_tables(run_market, THIS_TREE.fresh_market(snap), batches))
            print()


if __name__ == "__main__":
    main()
