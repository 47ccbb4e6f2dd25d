"""Tardis incremental_book_L2 reader and writer: the real Deribit head, the
format's rules on small inputs, and LOBSTER's verified books carried through
a Tardis file and back."""

from __future__ import annotations

import ast
import dataclasses
import itertools
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orderbook.core.book import Book
from orderbook.core.events import BookUpdate
from orderbook.core.instrument import Instrument
from orderbook.replay.formats import lobster, tardis
from orderbook.replay.records import FormatError, Record
from orderbook.replay.verify import Verifier, verify

pytestmark = pytest.mark.timeout(120)

HEADER = "exchange,symbol,timestamp,local_timestamp,is_snapshot,side,price,amount"


def books_after(records: Iterable[Record]) -> dict[str, Book]:
    """The books the service would hold after these records."""
    v = Verifier()
    for record in records:
        v.feed(record)
    assert not v.report.rejected, v.report.rejected
    return {s: v.book(s) for s in v.market.symbols()}


def csv(*rows: str) -> list[str]:
    return [HEADER + "\n", *(r + "\n" for r in rows)]


# ----------------------------------------------------------------------------- the real sample


def test_real_deribit_head_reads(shared_data):
    path = shared_data / "tardis-deribit-2020-04-01" / "deribit_incremental_book_L2_BTC-PERPETUAL.csv"
    with open(path, newline="") as f:
        records = list(tardis.read(f, source=path.name))
    # 15 rows sharing one local_timestamp: one message, the start-of-day snapshot.
    assert len(records) == 1
    (record,) = records
    (inst,) = record.instruments
    # Half-dollar ticks (6421.5) give one decimal; contract amounts none.
    assert (inst.symbol, inst.price_scale, inst.size_scale, inst.venue) == ("BTC-PERPETUAL", 1, 0, "deribit")
    assert record.time_ns == 1585699200355684000  # local_timestamp, microseconds
    (update,) = record.updates
    assert update.event_time_ns == 1585699200245000000  # Deribit's timestamp
    assert update.replace and update.bids == () and len(update.asks) == 15
    book = books_after(records)["BTC-PERPETUAL"]
    assert book.asks(3) == [(64215, 18640), (64220, 1190), (64225, 1080)]
    assert book.asks()[-1] == (64285, 39950) and book.bid_count() == 0
    assert inst.format_price(book.best_ask()[0]) == "6421.5"


def test_reader_module_is_pure():
    tree = ast.parse(Path(tardis.__file__).read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not imported & {"asyncio", "socket", "time", "sanic", "websockets", "redis", "subprocess", "os", "io"}
    calls = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    assert "open" not in calls


# ----------------------------------------------------------------------------- format rules


def test_a_snapshot_after_updates_resets_the_book():
    lines = csv(
        "deribit,X,1,10,true,bid,100,5",
        "deribit,X,1,10,true,ask,101,5",
        "deribit,X,2,11,true,bid,99,7",  # a second message of the same snapshot: continues it
        "deribit,X,3,12,false,bid,100,0",
        "deribit,X,3,12,false,ask,102,1",
        "deribit,X,4,13,true,bid,98,2",  # after false rows: the venue reset the book
        "deribit,X,4,13,true,ask,103,3",
    )
    records = list(tardis.read(lines))
    assert [r.updates[0].replace for r in records] == [True, False, False, True]
    assert [r.time_ns for r in records] == [10_000, 11_000, 12_000, 13_000]
    assert books_after(records[:3])["X"].bids() == [(99, 7)]
    book = books_after(records)["X"]
    assert (book.bids(), book.asks()) == ([(98, 2)], [(103, 3)])


def test_interleaved_symbols_keep_their_own_books_and_scales():
    lines = csv(
        "binance,A,1,10,true,bid,1.5,2",
        "binance,B,1,10,true,ask,0.125,0.5",
        "binance,A,2,11,false,bid,1.5,3",
        "binance,B,2,11,false,ask,0.125,0",
        "binance,B,2,11,false,ask,0.25,1.5",
        "binance,A,3,12,false,ask,2,1",
    )
    records = list(tardis.read(lines))
    # Same local_timestamp, different symbols: separate messages.
    assert [r.updates[0].symbol for r in records] == ["A", "B", "A", "B", "A"]
    defined = {i.symbol: (i.price_scale, i.size_scale) for r in records for i in r.instruments}
    assert defined == {"A": (1, 0), "B": (3, 1)}
    assert sum(len(r.instruments) for r in records) == 2  # each defined once
    books = books_after(records)
    assert (books["A"].bids(), books["A"].asks()) == ([(15, 3)], [(20, 1)])
    assert (books["B"].bids(), books["B"].asks()) == ([], [(250, 15)])


def test_more_decimals_than_the_inferred_scale_is_an_error():
    lines = csv("deribit,X,1,10,true,ask,6421.5,10", "deribit,X,2,11,false,ask,6421.25,10")
    with pytest.raises(FormatError, match=r"tardis:3: price 6421.25 has 2 decimals .* pass --price-scale 2"):
        list(tardis.read(lines))
    records = list(tardis.read(lines, price_scale=2))
    assert books_after(records)["X"].asks() == [(642125, 10), (642150, 10)]
    with pytest.raises(FormatError, match=r"scale is 1 \(as given\); pass --price-scale 2"):
        list(tardis.read(lines, price_scale=1))
    sizes = csv("deribit,X,1,10,true,ask,1,10", "deribit,X,2,11,false,ask,2,0.5")
    with pytest.raises(FormatError, match=r"tardis:3: amount 0.5 .* pass --size-scale 1"):
        list(tardis.read(sizes))


def test_crlf_and_column_order_are_accepted():
    lines = [
        "symbol,exchange,local_timestamp,timestamp,is_snapshot,side,price,amount\r\n",
        "X,deribit,10,9,true,bid,100.0,5\r\n",
        "\r\n",
        "X,deribit,11,10,false,bid,100.0,6",
    ]
    records = list(tardis.read(lines))
    assert [r.time_ns for r in records] == [10_000, 11_000]
    assert records[0].updates[0].event_time_ns == 9_000
    assert books_after(records)["X"].bids() == [(100, 6)]


@pytest.mark.parametrize(
    ("lines", "error"),
    [
        (["deribit,X,1,10,true,bid,100,5\n"], r"tardis:1: not an incremental_book_L2 header"),
        (csv("deribit,X,1,10,yes,bid,100,5"), r"tardis:2: is_snapshot 'yes'"),
        (csv("deribit,X,1,10,true,buy,100,5"), r"tardis:2: side 'buy'"),
        (csv("deribit,X,1,10.5,true,bid,100,5"), r"tardis:2: local_timestamp '10.5'"),
        (csv("deribit,X,1,10,true,bid,100,-5"), r"tardis:2: negative amount"),
        (csv("deribit,X,1,10,true,bid,abc,5"), r"tardis:2: .*not a decimal number"),
        (csv("deribit,X,1,10,true,bid,100"), r"tardis:2: 7 fields, the header has 8"),
    ],
)
def test_format_errors_name_the_line(lines, error):
    with pytest.raises(FormatError, match=error):
        list(tardis.read(lines))


def test_reading_streams_line_by_line():
    consumed = 0

    def lines() -> Iterator[str]:
        nonlocal consumed
        for line in itertools.chain([HEADER], (f"deribit,X,{t},{t},false,bid,{t % 50 + 1},1" for t in range(1, 10**6))):
            consumed += 1
            yield line

    first = list(itertools.islice(tardis.read(lines()), 3))
    assert len(first) == 3
    assert consumed <= 5  # header, three messages and the row that ended the third


# ----------------------------------------------------------------------------- the writer


def test_writer_output_matches_the_real_sample(shared_data):
    path = shared_data / "tardis-deribit-2020-04-01" / "deribit_incremental_book_L2_BTC-PERPETUAL.csv"
    original = path.read_text().splitlines(keepends=True)
    assert list(tardis.write_rows(tardis.read(original))) == original


def test_writer_keeps_messages_that_share_a_microsecond_apart():
    inst = Instrument("X", 2, 0)
    records = [
        Record(5_000, (inst,), (BookUpdate("X", ((100, 1),), (), replace=True),)),
        Record(5_000, (), (BookUpdate("X", ((100, 2),)),)),
        Record(5_999, (), (BookUpdate("X", ((100, 3),)),)),
        Record(6_000, (), (BookUpdate("X", (), ()),)),  # nothing to say: no rows
    ]
    rows = list(tardis.write_rows(records, exchange="test", header=False))
    assert [r.split(",")[3] for r in rows] == ["5", "6", "7"]
    assert rows[0] == "test,X,5,5,true,bid,1,1\n"
    assert len(list(tardis.read([HEADER, *rows]))) == 3


def test_writer_turns_a_replace_tardis_cannot_express_into_changes():
    inst = Instrument("X", 0, 0)
    records = [
        Record(1_000, (inst,), (BookUpdate("X", ((10, 1), (9, 1)), ((11, 1),), replace=True),)),
        # Right after a snapshot a second one would continue it, not replace it.
        Record(2_000, (), (BookUpdate("X", ((9, 4),), ((12, 1),), replace=True),)),
        Record(3_000, (), (BookUpdate("X", replace=True),)),  # an empty book has no snapshot rows
    ]
    back = list(tardis.read(tardis.write_rows(records), price_scale=0, size_scale=0))
    assert [r.updates[0].replace for r in back] == [True, False, False]
    for n in range(1, 4):
        assert books_after(back[:n]) == books_after(records[:n])


def test_writer_needs_the_instrument():
    with pytest.raises(ValueError, match="before the symbol's instrument"):
        list(tardis.write_rows([Record(1, (), (BookUpdate("X", ((1, 1),)),))]))


levels = st.lists(st.tuples(st.integers(min_value=1, max_value=40), st.integers(min_value=0, max_value=5)), max_size=6)
updates = st.tuples(st.sampled_from(["A", "B"]), st.booleans(), levels, levels, st.integers(min_value=0, max_value=3))


@settings(max_examples=150, deadline=None)
@given(st.lists(updates, max_size=15))
def test_any_record_stream_survives_the_round_trip(steps):
    # Prefixes compare the books after every record, not only at the end.
    defs = (Instrument("A", 5, 3, venue="x"), Instrument("B", 5, 3, venue="y"))
    records, t = [], 1_000_000
    for symbol, replace, bids, asks, dt in steps:
        t += dt * 700  # often inside one microsecond of the previous record
        records.append(Record(t, (), (BookUpdate(symbol, tuple(bids), tuple(asks), replace=replace),)))
    if records:
        records[0] = dataclasses.replace(records[0], instruments=defs)
    for n in range(1, len(records) + 1):
        back = tardis.read(tardis.write_rows(records[:n]), price_scale=5, size_scale=3)
        rebuilt = {s: b for s, b in books_after(back).items() if len(b)}
        assert rebuilt == {s: b for s, b in books_after(records[:n]).items() if len(b)}


# ----------------------------------------------------------------------------- LOBSTER through Tardis


def lobster_records(shared_data: Path, folder: str) -> Iterator[Record]:
    base = shared_data / "lobster-2012-06-21" / folder
    message, orderbook = next(base.glob("*_message_*.csv")), next(base.glob("*_orderbook_*.csv"))
    symbol, day, depth = lobster.parse_filename(message.name)
    with open(message, newline="") as m, open(orderbook, newline="") as o:
        yield from lobster.read(m, o, symbol=symbol, levels=depth, date=day)


@pytest.mark.parametrize(("folder", "messages"), [("aapl-l10-first999", 999), ("amzn-l1-fullday", 57515)])
def test_lobster_books_survive_a_tardis_file(shared_data, tmp_path, folder, messages):
    source = list(lobster_records(shared_data, folder))
    path = tmp_path / "book.csv"
    with open(path, "w", newline="") as f:
        f.writelines(tardis.write_rows(source))
    with open(path, newline="") as f:
        back = iter(tardis.read(f, price_scale=4, size_scale=0, source=path.name))
        # Messages with no visible change have no rows; the rest are one
        # Tardis message each. The LOBSTER rows then check the Tardis books.
        merged = []
        for record in source:
            if any(u.bids or u.asks for u in record.updates):
                merged.append(dataclasses.replace(next(back), checks=record.checks))
            else:
                merged.append(Record(record.time_ns, checks=record.checks))
        assert next(back, None) is None
    report = verify(merged)
    assert report.ok and report.by_kind() == {"book": (messages, messages)}
    # A wrong book would show: drop one Tardis message and the checks fail.
    changed = next(i for i, r in enumerate(merged) if i > 0 and r.updates)
    broken = verify([*merged[:changed], dataclasses.replace(merged[changed], updates=()), *merged[changed + 1 :]])
    assert not broken.ok
