"""`render`: the pure text view of followers used by `orderbook watch`."""

from __future__ import annotations

from orderbook.client.watch import render
from orderbook.core.book import Book
from orderbook.core.follower import BookFollower
from orderbook.core.instrument import Instrument


def follower(symbol: str, bids, asks, *, price_scale=2, size_scale=8, epoch=7, seq=42, depth=0):
    inst = Instrument(symbol, price_scale=price_scale, size_scale=size_scale)
    f = BookFollower(symbol)
    book = Book()
    book.replace(bids, asks)
    f.apply_snapshot(epoch, seq, bids, asks, book.checksum(), inst, depth)
    return f


def test_exact_decimals_best_first_and_position() -> None:
    f = follower(
        "BTC-USD",
        bids=[(6400010, 50_000_000), (6400000, 120_000_000), (6399990, 1)],
        asks=[(6400020, 25_000_000), (6400100, 300_000_000)],
    )
    text = render({"BTC-USD": f}, rows=5)
    lines = text.splitlines()
    assert lines[0] == "BTC-USD  epoch 7  seq 42"
    assert lines[1].split() == ["bid", "size", "bid", "|", "ask", "ask", "size"]
    # Best first on both sides, prices and sizes with exactly their scales.
    assert lines[2].split() == ["0.50000000", "64000.10", "|", "64000.20", "0.25000000"]
    assert lines[3].split() == ["1.20000000", "64000.00", "|", "64001.00", "3.00000000"]
    assert lines[4].split() == ["0.00000001", "63999.90", "|"]
    assert len(lines) == 5
    assert text.endswith("\n")
    # The bid/ask separator lines up on every row.
    assert len({line.index("|") for line in lines[1:]}) == 1


def test_rows_limits_levels() -> None:
    bids = [(100 - i, 1) for i in range(10)]
    asks = [(101 + i, 1) for i in range(10)]
    f = follower("X", bids, asks, price_scale=0, size_scale=0)
    lines = render({"X": f}, rows=3).splitlines()
    assert len(lines) == 2 + 3
    assert lines[-1].split() == ["1", "98", "|", "103", "1"]


def test_several_symbols_unsynced_and_empty() -> None:
    live = follower("A", [(10, 1)], [(11, 2)], price_scale=1, size_scale=0, depth=10)
    empty = follower("B", [], [], price_scale=1, size_scale=0)
    waiting = BookFollower("C")
    broken = follower("D", [(5, 1)], [], price_scale=0, size_scale=0)
    broken.desync()
    text = render({"A": live, "B": empty, "C": waiting, "D": broken})
    blocks = text.strip("\n").split("\n\n")
    assert [b.splitlines()[0] for b in blocks] == [
        "A  epoch 7  seq 42  depth 10",
        "B  epoch 7  seq 42",
        "C  (waiting for snapshot)",
        "D  epoch 7  seq 42  [resyncing]",
    ]
    assert blocks[0].splitlines()[2].split() == ["1", "1.0", "|", "1.1", "2"]
    assert blocks[1].splitlines()[-1] == "(empty book)"


def test_negative_prices_and_no_books() -> None:
    f = follower("SPREAD", [(-150, 3)], [(-100, 4)], price_scale=2, size_scale=0)
    assert render({"SPREAD": f}).splitlines()[2].split() == ["3", "-1.50", "|", "-1.00", "4"]
    assert render({}) == ""


def test_render_is_pure() -> None:
    f = follower("A", [(10, 1)], [(11, 2)])
    before = (f.book.bids(), f.book.asks(), f.seq, f.epoch, f.synced)
    assert render({"A": f}) == render({"A": f})
    assert (f.book.bids(), f.book.asks(), f.seq, f.epoch, f.synced) == before
