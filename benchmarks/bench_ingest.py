"""Ingest: level updates applied per second through the sequencer and book.

Rows (same generated stream, same run):
  * `Market.apply` on `FeedBatch` batches: whole-batch validation, book
    update, effective-change detection, seq stamping, top-10 checksum and a
    `Delta` per change.
  * `SequencedBook.apply` per update: the same without validation or batching.
  * naive baseline: two plain dicts of `Decimal` price -> `Decimal` size,
    decimal strings parsed for every level, both sides `sorted()` on every
    update for the top 10 and the checksum string.

The stream is generated before timing; every timed run starts from the same
snapshot. All three rows must end with the same book checksum.

    python benchmarks/bench_ingest.py [--updates N] [--book-levels N] [--profile]
"""

from __future__ import annotations

import cProfile
import os
import pstats
import sys
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

import _common as c

from orderbook.core.events import BookUpdate, FeedBatch
from orderbook.core.market import Market
from orderbook.core.sequencer import SequencedBook

TOP = 10
EPOCH = 1

# ----------------------------------------------------------------------------- our paths


def fresh_market(snapshot: BookUpdate) -> Market:
    m = Market(EPOCH)
    m.define(c.INSTRUMENT)
    m.apply(FeedBatch(0, updates=(snapshot,)))
    return m


def fresh_book(snapshot: BookUpdate) -> SequencedBook:
    sb = SequencedBook(c.INSTRUMENT, EPOCH)
    sb.apply(snapshot)
    return sb


def run_market(market: Market, batches: Sequence[FeedBatch]) -> int:
    apply = market.apply
    n = 0
    for batch in batches:
        n += len(apply(batch).deltas)
    return n


def run_book(sb: SequencedBook, updates: Sequence[BookUpdate]) -> int:
    apply = sb.apply
    n = 0
    for u in updates:
        if apply(u) is not None:
            n += 1
    return n


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
    if path.startswith("~") or path.startswith("<"):
        return "builtin"
    marker = "site-packages" + os.sep
    if marker in path:
        return path.split(marker, 1)[1]
    try:
        return os.path.relpath(path)
    except ValueError:
        return os.path.basename(path)


# (label, file suffix, function name): shares of the run shown under the table.
FOCUS = (
    ("`Book.checksum` (top-10 lists + CRC-32)", "orderbook/core/book.py", "checksum"),
    ("`_apply_side` (book mutation, change detection)", "orderbook/core/sequencer.py", "_apply_side"),
    ("`SequencedBook.validate`", "orderbook/core/sequencer.py", "validate"),
)


def profile_tables(fn, *args: object, top: int = 12) -> str:
    """Top functions by own time, then the cumulative share of `FOCUS` entries."""
    prof = cProfile.Profile()
    prof.enable()
    fn(*args)
    prof.disable()
    st = pstats.Stats(prof)
    stats = st.stats  # type: ignore[attr-defined]
    total = st.total_tt  # type: ignore[attr-defined]
    rows = []
    entries = sorted(stats.items(), key=lambda kv: kv[1][2], reverse=True)
    for (path, line, name), (_cc, ncalls, tottime, cumtime, _callers) in entries[:top]:
        where = _where(path)
        if where == "builtin":
            label = f"`{name}`"
        elif where == "generated":
            # pstats keys by (file, line, name): generated __init__s collide, so this
            # row may stand for one class only (in the per-update run, `Delta`).
            label = f"dataclass `{name}` (generated)"
        else:
            label = f"`{where}:{line}({name})`"
        share = f"{100 * tottime / total:.1f}%"
        rows.append([label, f"{ncalls:,}", f"{tottime:.3f}", share, f"{cumtime:.3f}"])
    own = c.markdown_table(
        ["function", "calls", "own s", "own %", "cumulative s"], rows, [False, True, True, True, True]
    )
    shares = []
    for label, suffix, func in FOCUS:
        cum = sum(
            v[3] for (path, _, name), v in stats.items() if name == func and path.endswith(suffix)
        )
        if cum:
            shares.append([label, f"{100 * cum / total:.0f}%"])
    focus = c.markdown_table(["including callees", "share of the run"], shares, [False, True])
    return own + "\n\n" + focus


# ----------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> None:
    p = c.base_parser(__doc__.splitlines()[0])
    p.add_argument("--updates", type=int, default=20_000, help="updates per timed run (default 20,000)")
    p.add_argument("--book-levels", type=int, default=500, help="book size per side (default 500)")
    p.add_argument(
        "--naive-updates",
        type=int,
        default=4_000,
        help="updates per naive run: a prefix of the same stream, as the naive path is "
        "~20x slower (default 4,000)",
    )
    p.add_argument("--batch-size", type=int, default=32, help="updates per FeedBatch (default 32)")
    p.add_argument("--profile", action="store_true", help="also print a cProfile summary of both paths")
    args = p.parse_args(argv)
    if args.book_levels < 60:
        p.error("--book-levels must be at least 60")

    info = c.machine_info()
    stream = c.generate_stream(args.seed, args.updates, args.book_levels)
    updates = stream.updates
    size = args.batch_size
    batches = tuple(FeedBatch(i, updates=updates[i : i + size]) for i in range(0, len(updates), size))
    naive_snapshot = (to_strings(stream.snapshot.bids), to_strings(stream.snapshot.asks))
    n_naive = min(args.naive_updates, len(updates))
    naive_updates = tuple((to_strings(u.bids), to_strings(u.asks)) for u in updates[:n_naive])
    warm = min(1_000, len(updates))

    # Correctness first (untimed): all paths must end in the same book.
    m = fresh_market(stream.snapshot)
    deltas = run_market(m, batches)
    final = m.get(c.INSTRUMENT.symbol).book
    nb = fresh_naive(naive_snapshot)
    run_naive(nb, naive_updates)
    sb = fresh_book(stream.snapshot)
    run_book(sb, updates[:n_naive])
    agree = nb.checksum == sb.book.checksum()
    run_book(sb, updates[n_naive:])
    if not agree or final.checksum() != sb.book.checksum():
        sys.exit("paths disagree on the book checksum")

    # Warm-up on a prefix, then the timed runs.
    run_market(fresh_market(stream.snapshot), batches[: max(1, warm // args.batch_size)])
    run_book(fresh_book(stream.snapshot), updates[:warm])
    run_naive(fresh_naive(naive_snapshot), naive_updates[:warm])
    n = len(updates)
    rates = c.interleaved(
        {
            "market": c.fixed(lambda: fresh_market(stream.snapshot), lambda s: run_market(s, batches), n),
            "book": c.fixed(lambda: fresh_book(stream.snapshot), lambda s: run_book(s, updates), n),
            "naive": c.fixed(
                lambda: fresh_naive(naive_snapshot), lambda s: run_naive(s, naive_updates), n_naive
            ),
        },
        args.repeats,
    )

    c.print_header("Ingest: updates applied per second", info, argv)
    lpu = stream.level_count / n
    lpu_naive = sum(len(u.bids) + len(u.asks) for u in updates[:n_naive]) / n_naive
    print(
        c.markdown_table(
            ["Stream", ""],
            [
                ["updates per run (naive: first part of the same stream)", f"{n:,} (naive: {n_naive:,})"],
                ["levels per update (mean)", f"{lpu:.2f} (naive: {lpu_naive:.2f})"],
                ["book size per side at start", f"{args.book_levels:,}"],
                ["book size at end (bids / asks)", f"{final.bid_count():,} / {final.ask_count():,}"],
                ["updates that changed the book (deltas)", f"{deltas:,}"],
                ["updates per FeedBatch", f"{args.batch_size}"],
                ["seed / repeats", f"{args.seed} / {args.repeats}"],
            ],
        )
    )
    print()
    naive = rates["naive"].median
    labels = {
        "market": "`Market.apply` (FeedBatch, validated)",
        "book": "`SequencedBook.apply` (per update)",
        "naive": "naive: Decimal dicts + sorted() per update",
    }
    rows = []
    for key, r in rates.items():
        rows.append(
            [
                labels[key],
                c.fmt_rate(r.median),
                c.fmt_spread(r),
                c.fmt_rate(r.median * (lpu_naive if key == "naive" else lpu)),
                f"{1e6 / r.median:.1f}",
                c.fmt_ratio(r.median / naive),
            ]
        )
    print(
        c.markdown_table(
            ["path", "updates/s (median)", "min – max", "levels/s", "µs/update", "vs naive"],
            rows,
            [False, True, True, True, True, True],
        )
    )
    print()

    if args.profile:
        print("### Profile: `SequencedBook.apply`, one run, top functions by own time\n")
        print(profile_tables(run_book, fresh_book(stream.snapshot), updates))
        print()
        print("### Profile: `Market.apply`, one run, top functions by own time\n")
        print(profile_tables(run_market, fresh_market(stream.snapshot), batches))
        print()


if __name__ == "__main__":
    main()
