"""LOBSTER reader: the real AAPL (10 levels) and AMZN (1 level, full day) files
verify against their own orderbook rows, and the depth rules hold on small
hand-made files and on random order flow."""

from __future__ import annotations

import ast
import calendar
import dataclasses
import itertools
from collections.abc import Iterable, Iterator
from datetime import date
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from orderbook.replay.formats import lobster
from orderbook.replay.records import FormatError, Record, TopLevels
from orderbook.replay.verify import verify

pytestmark = pytest.mark.timeout(120)

EMPTY_ASK, EMPTY_BID = lobster.EMPTY_ASK_PRICE, lobster.EMPTY_BID_PRICE


# ----------------------------------------------------------------------------- helpers


def dataset(shared_data: Path, folder: str) -> tuple[Path, Path]:
    base = shared_data / "lobster-2012-06-21" / folder
    return next(base.glob("*_message_*.csv")), next(base.glob("*_orderbook_*.csv"))


def read_files(message: Path, orderbook: Path) -> Iterator[Record]:
    """What the file-opening edge does: names from the file name, lines as stored."""
    symbol, day, levels = lobster.parse_filename(message.name)
    with open(message, newline="") as m, open(orderbook, newline="") as o:
        yield from lobster.read(m, o, symbol=symbol, levels=levels, date=day, source=message.name)


def book_row(asks: list[tuple[int, int]], bids: list[tuple[int, int]], depth: int) -> str:
    fields: list[int] = []
    for k in range(depth):
        fields += asks[k] if k < len(asks) else (EMPTY_ASK, 0)
        fields += bids[k] if k < len(bids) else (EMPTY_BID, 0)
    return ",".join(map(str, fields))


def message(kind: int, size: int, price: int, direction: int, order_id: int = 1, t: str = "34200.5") -> str:
    return f"{t},{kind},{order_id},{size},{price},{direction}"


def utc_ns(y: int, mo: int, d: int, h: int, mi: int, s: int, ns: int) -> int:
    return calendar.timegm((y, mo, d, h, mi, s, 0, 0, 0)) * 10**9 + ns


# A two-level book: $101.00/$102.00 asks over $100.00/$99.00 bids.
BASE_ASKS = [(1010000, 10), (1020000, 20)]
BASE_BIDS = [(1000000, 30), (990000, 40)]
BASE = book_row(BASE_ASKS, BASE_BIDS, 2)
OPEN = message(1, 10, 1000000, 1)  # row 1 already includes it


def records_of(messages: list[str], rows: list[str], **kw) -> list[Record]:
    return list(lobster.read(messages, rows, symbol="TEST", **kw))


def levels_set(record: Record) -> tuple[set, set]:
    (update,) = record.updates
    return set(update.bids), set(update.asks)


# ----------------------------------------------------------------------------- real data


def test_parse_filename():
    name = "AAPL_2012-06-21_34200000_57600000_message_10.csv"
    assert lobster.parse_filename(name) == ("AAPL", date(2012, 6, 21), 10)
    assert lobster.parse_filename("data/x/AMZN_2012-06-21_34200000_57600000_orderbook_1.csv") == (
        "AMZN",
        date(2012, 6, 21),
        1,
    )
    with pytest.raises(FormatError, match="not a LOBSTER file name"):
        lobster.parse_filename("AAPL_2012-06-21_message.csv")


def test_aapl_ten_levels_verify_completely(shared_data):
    report = verify(read_files(*dataset(shared_data, "aapl-l10-first999")))
    print("\n".join(report.lines()))
    # README: 999 messages and rows; 998 of 998 transitions match, plus row 1.
    assert report.records == 999
    assert report.by_kind() == {"book": (999, 999)}
    assert report.ok and not report.rejected and not report.notes


def test_aapl_records_carry_exact_times_instrument_and_row_one(shared_data):
    message_path, orderbook_path = dataset(shared_data, "aapl-l10-first999")
    records = list(read_files(message_path, orderbook_path))
    first, last = records[0], records[-1]
    # 09:30:00.004241176 and 09:30:49.086375027 New York (EDT, UTC-4), to the nanosecond.
    assert first.time_ns == utc_ns(2012, 6, 21, 13, 30, 0, 4241176)
    assert last.time_ns == utc_ns(2012, 6, 21, 13, 30, 49, 86375027)
    (inst,) = first.instruments
    assert (inst.symbol, inst.price_scale, inst.size_scale, inst.venue) == ("AAPL", 4, 0, "nasdaq")
    (update,) = first.updates
    assert update.replace and update.event_time_ns == first.time_ns
    row1 = orderbook_path.read_text().splitlines()[0].split(",")
    assert update.asks[0] == (int(row1[0]), int(row1[1]))  # $585.94 x 200
    assert update.bids[0] == (int(row1[2]), int(row1[3]))
    assert len(update.asks) == len(update.bids) == 10
    assert all(isinstance(c, TopLevels) and c.depth == 10 for r in records for c in r.checks)
    assert all(not r.instruments for r in records[1:])


def test_amzn_full_day_with_header_and_crlf_verifies(shared_data):
    message_path, orderbook_path = dataset(shared_data, "amzn-l1-fullday")
    head = message_path.read_bytes()[:60]
    # The quirks this test is about are really in the file.
    assert head.startswith(b"Time,Type,OrderId") and b"\r\n" in head
    assert not message_path.read_bytes().endswith(b"\n")
    report = verify(read_files(message_path, orderbook_path))
    print("\n".join(report.lines()))
    # README: 57,515 messages; 57,514 of 57,514 transitions match, plus row 1.
    assert report.records == 57515
    assert report.by_kind() == {"book": (57515, 57515)}
    assert report.ok and not report.rejected


def test_amzn_five_decimal_times_are_exact(shared_data):
    records = itertools.islice(read_files(*dataset(shared_data, "amzn-l1-fullday")), 2)
    assert [r.time_ns for r in records] == [
        utc_ns(2012, 6, 21, 13, 30, 0, 17460000),
        utc_ns(2012, 6, 21, 13, 30, 0, 189610000),
    ]


def with_header_and_crlf(lines: Iterable[str], header: str) -> Iterator[str]:
    rows = [line.rstrip("\n") for line in lines]
    yield header + "\r\n"
    for i, row in enumerate(rows):
        yield row + ("\r\n" if i < len(rows) - 1 else "")


def test_header_and_crlf_read_like_the_plain_file(shared_data):
    message_path, orderbook_path = dataset(shared_data, "aapl-l10-first999")
    with open(message_path) as m, open(orderbook_path) as o:
        plain = list(lobster.read(m, o, symbol="AAPL", date="2012-06-21"))
    with open(message_path) as m, open(orderbook_path) as o:
        quirky = list(
            lobster.read(
                with_header_and_crlf(m, "Time,Type,OrderId,Size,Price,Direction"),
                with_header_and_crlf(o, "AskPrice1,AskSize1,BidPrice1,BidSize1"),
                symbol="AAPL",
                date="2012-06-21",
            )
        )
    assert quirky == plain and len(plain) == 999


def test_a_wrong_orderbook_row_fails_verification(shared_data):
    message_path, orderbook_path = dataset(shared_data, "aapl-l10-first999")

    def tampered(lines: Iterable[str]) -> Iterator[str]:
        for n, line in enumerate(lines, 1):
            if n == 500:  # one more share at the best bid of row 500
                fields = line.split(",")
                fields[3] = str(int(fields[3]) + 1)
                line = ",".join(fields)
            yield line

    with open(message_path, newline="") as m, open(orderbook_path, newline="") as o:
        report = verify(lobster.read(m, tampered(o), symbol="AAPL", levels=10))
    assert not report.ok
    assert report.mismatch_count == 1
    assert report.mismatches[0].record == 499 and "bids differ at level 1" in report.mismatches[0].detail


def test_reading_streams_line_by_line(shared_data):
    message_path, orderbook_path = dataset(shared_data, "amzn-l1-fullday")
    consumed = {"message": 0, "orderbook": 0}

    def counting(lines: Iterable[str], name: str) -> Iterator[str]:
        for line in lines:
            consumed[name] += 1
            yield line

    with open(message_path, newline="") as m, open(orderbook_path, newline="") as o:
        reader = lobster.read(counting(m, "message"), counting(o, "orderbook"), symbol="AMZN")
        assert consumed == {"message": 0, "orderbook": 0}  # a generator: nothing read yet
        taken = list(itertools.islice(reader, 5))
    assert len(taken) == 5
    # The header plus five rows of each file, out of 57,516 lines.
    assert consumed == {"message": 6, "orderbook": 6}


def test_reader_module_is_pure():
    tree = ast.parse(Path(lobster.__file__).read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not imported & {"asyncio", "socket", "time", "sanic", "websockets", "redis", "subprocess", "os", "io"}
    calls = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    assert "open" not in calls


# ----------------------------------------------------------------------------- synthetic quirks


def test_trading_halt_rows_change_nothing_and_are_noted():
    messages = [OPEN, message(7, 0, -1, -1, 0), message(7, 0, 0, -1, 0), message(7, 0, 1, -1, 0)]
    records = records_of(messages, [BASE] * 4)
    assert [r.note for r in records] == ["", "halt", "quoting resumed", "trading resumed"]
    assert all(u.bids == () and u.asks == () for r in records[1:] for u in r.updates)
    report = verify(records)
    assert report.ok and report.by_kind() == {"book": (4, 4)}
    assert report.notes == {"halt": 1, "quoting resumed": 1, "trading resumed": 1}


def test_halt_with_an_unknown_price_is_an_error():
    with pytest.raises(FormatError, match=r"lobster:2: trading-halt Price 5"):
        records_of([OPEN, message(7, 0, 5, -1, 0)], [BASE] * 2)


def test_orders_never_seen_change_their_level_as_l2_requires():
    messages = [
        OPEN,
        # Order 77 rested before the file began: deleting it takes 20 off $100.00.
        message(3, 20, 1000000, 1, order_id=77),
        # An execution of an unseen order below the recorded depth: no visible change.
        message(4, 5, 980000, 1, order_id=78),
        # A cancel of an unseen ask at a known level.
        message(2, 4, 1020000, -1, order_id=79),
    ]
    after_delete = book_row(BASE_ASKS, [(1000000, 10), (990000, 40)], 2)
    after_cancel = book_row([(1010000, 10), (1020000, 16)], [(1000000, 10), (990000, 40)], 2)
    records = records_of(messages, [BASE, after_delete, after_delete, after_cancel])
    assert levels_set(records[1]) == ({(1000000, 10)}, set())
    assert levels_set(records[2]) == (set(), set())
    assert levels_set(records[3]) == (set(), {(1020000, 16)})
    report = verify(records)
    assert report.ok and report.by_kind() == {"book": (4, 4)}


def test_a_level_pushed_below_the_top_is_removed():
    # A new best bid pushes $99.00 to the third level, which a 2-level feed no longer shows.
    messages = [OPEN, message(1, 7, 1005000, 1)]
    rows = [BASE, book_row(BASE_ASKS, [(1005000, 7), (1000000, 30)], 2)]
    records = records_of(messages, rows)
    assert levels_set(records[1]) == ({(1005000, 7), (990000, 0)}, set())
    assert verify(records).ok
    # Without the explicit removal the book holds three bids: the depth check sees it.
    (update,) = records[1].updates
    kept = dataclasses.replace(update, bids=((1005000, 7),))
    report = verify([records[0], dataclasses.replace(records[1], updates=(kept,))])
    assert not report.ok and "3 levels, venue shows at most 2" in report.mismatches[0].detail


def test_levels_come_into_view_from_depth_only_beyond_the_last_shown():
    # Deleting the best bid brings $98.00 up from depth the file never showed.
    messages = [OPEN, message(3, 30, 1000000, 1)]
    rows = [BASE, book_row(BASE_ASKS, [(990000, 40), (980000, 15)], 2)]
    records = records_of(messages, rows)
    assert levels_set(records[1]) == ({(1000000, 0), (980000, 15)}, set())
    assert verify(records).ok


def test_a_row_the_message_does_not_explain_fails():
    # The message takes 30 off $100.00 but the row says $99.00 changed too: the
    # reader leaves the range it can predict alone, so the check catches it.
    messages = [OPEN, message(3, 30, 1000000, 1)]
    rows = [BASE, book_row(BASE_ASKS, [(990000, 41), (980000, 15)], 2)]
    report = verify(records_of(messages, rows))
    assert not report.ok and report.mismatch_count == 1


def test_empty_level_fillers_mean_no_level_and_hide_nothing():
    one_ask = book_row([(1010000, 10)], BASE_BIDS, 2)
    two_asks = book_row([(1010000, 10), (1030000, 5)], BASE_BIDS, 2)
    records = records_of([OPEN, message(1, 5, 1030000, -1)], [one_ask, two_asks])
    assert records[0].checks[0].asks == ((1010000, 10),)
    assert verify(records).ok
    # With only one ask shown there is no unseen depth: an ask that no message
    # explains (here after a hidden execution) must not be taken from the row.
    report = verify(records_of([OPEN, message(5, 5, 1010000, -1, order_id=0)], [one_ask, two_asks]))
    assert not report.ok


@pytest.mark.parametrize(
    ("messages", "rows", "error"),
    [
        ([message(1, 1, 1000000, 1, t="34200.0123456789")], [BASE], r"lobster:1: Time .* at most 9 decimals"),
        ([OPEN, OPEN], [BASE], r"lobster:2: the orderbook file has no row"),
        ([OPEN], [BASE, BASE], r"lobster orderbook:2: the message file has no message"),
        ([OPEN + ",9"], [BASE], r"lobster:1: a message row has 6 fields"),
        ([message(1, 1, 1000000, 0)], [BASE], r"Direction 0"),
        ([message(9, 1, 1000000, 1)], [BASE], r"unknown message Type 9"),
        ([message(1, 1, 1000000, 1), "34200.6,1,x,1,1000000,1"], [BASE] * 2, r"lobster:2: OrderID 'x'"),
        ([OPEN], [BASE + ",1"], r"lobster orderbook:1: an orderbook row has 4 fields per level"),
        ([OPEN], [book_row([(EMPTY_ASK, 0), (1020000, 20)], BASE_BIDS, 2)], r"ask level 2 follows an empty level"),
        ([OPEN], [book_row(BASE_ASKS, BASE_BIDS[::-1], 2)], r"bid level 2 price 1000000 is not worse"),
    ],
)
def test_format_errors_name_the_line(messages, rows, error):
    with pytest.raises(FormatError, match=error):
        records_of(messages, rows)


def test_given_levels_must_match_the_rows():
    with pytest.raises(FormatError, match=r"expected 40 fields \(10 levels\), got 8"):
        records_of([OPEN], [BASE], levels=10)


# ----------------------------------------------------------------------------- time


def test_times_follow_new_york_daylight_saving():
    t = "34200.000000001"  # 09:30 and one nanosecond
    summer = records_of([message(1, 1, 1000000, 1, t=t)], [BASE], date="2012-06-21")
    winter = records_of([message(1, 1, 1000000, 1, t=t)], [BASE], date=date(2012, 1, 3))
    assert summer[0].time_ns == utc_ns(2012, 6, 21, 13, 30, 0, 1)  # EDT, UTC-4
    assert winter[0].time_ns == utc_ns(2012, 1, 3, 14, 30, 0, 1)  # EST, UTC-5
    undated = records_of([message(1, 1, 1000000, 1, t=t)], [BASE])
    assert undated[0].time_ns == 34200 * 10**9 + 1  # no date: nanoseconds after midnight


def test_without_zone_data_the_wall_clock_is_read_as_utc(monkeypatch):
    def no_zone(key: str):
        raise lobster.ZoneInfoNotFoundError(key)

    monkeypatch.setattr(lobster, "ZoneInfo", no_zone)
    records = records_of([message(1, 1, 1000000, 1, t="34200.25")], [BASE], date="2012-06-21")
    assert records[0].time_ns == utc_ns(2012, 6, 21, 9, 30, 0, 250000000)


@given(st.integers(min_value=0, max_value=86400 * 10**9 - 1), st.integers(min_value=0, max_value=9))
def test_time_text_converts_exactly(ns, digits):
    ns -= ns % 10 ** (9 - digits)  # what a file written with `digits` decimals can hold
    text = f"{ns // 10**9}.{ns % 10**9:09d}"[: len(str(ns // 10**9)) + 1 + digits].rstrip(".")
    assert lobster.parse_time(text, "t") == ns


# ----------------------------------------------------------------------------- random order flow

BID_PRICES = [990000 - 100 * k for k in range(12)]
ASK_PRICES = [1010000 + 100 * k for k in range(12)]

events = st.tuples(
    st.sampled_from([1, 1, 1, 2, 3, 4, 5, 7]),
    st.booleans(),  # bid side?
    st.integers(min_value=0, max_value=11),  # price index (or which level to hit)
    st.integers(min_value=1, max_value=50),
)
sides = st.dictionaries(st.integers(min_value=0, max_value=11), st.integers(min_value=1, max_value=50), max_size=8)


Levels = list[tuple[int, int]]


def simulate(depth: int, bids0: dict, asks0: dict, flow: list) -> tuple[list[str], list[tuple[Levels, Levels]]]:
    """A full-depth book under random order flow: the messages, and each row's
    top `depth` (asks, bids) as a level-`depth` LOBSTER file would show them."""
    bids = {BID_PRICES[k]: s for k, s in bids0.items()}
    asks = {ASK_PRICES[k]: s for k, s in asks0.items()}
    messages, rows = [], []
    for n, (kind, is_bid, k, size) in enumerate(flow):
        book, prices = (bids, BID_PRICES) if is_bid else (asks, ASK_PRICES)
        price = prices[k]
        if kind in (2, 3, 4):
            if not book:
                kind = 5
            else:
                price = sorted(book)[k % len(book)]
                size = book[price] if kind == 3 else 1 + size % book[price]
                book[price] -= size
                if not book[price]:
                    del book[price]
        elif kind == 1:
            book[price] = book.get(price, 0) + size
        if kind == 7:
            price, size, is_bid = (-1, 0, 1)[k % 3], 0, False
        messages.append(message(kind, size, price, 1 if is_bid else -1, order_id=n, t=f"{34200 + n}.5"))
        rows.append((sorted(asks.items())[:depth], sorted(bids.items(), reverse=True)[:depth]))
    return messages, rows


def written(rows: list[tuple[Levels, Levels]], depth: int) -> list[str]:
    return [book_row(asks, bids, depth) for asks, bids in rows]


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=1, max_value=4), sides, sides, st.lists(events, min_size=1, max_size=60))
def test_random_order_flow_verifies_at_any_depth(depth, bids0, asks0, flow):
    messages, rows = simulate(depth, bids0, asks0, flow)
    report = verify(records_of(messages, written(rows, depth)))
    assert report.ok, report.lines()
    assert report.by_kind() == {"book": (len(flow), len(flow))}


def tamperings(rows: list[tuple[Levels, Levels]], depth: int) -> list[tuple[int, int, Levels]]:
    """(row, side, new levels) changes that no message explains: a size at a price
    the previous row lets one predict, or a level below a side shown whole."""
    out = []
    for i in range(1, len(rows)):
        for side in (0, 1):
            before, now = rows[i - 1][side], rows[i][side]
            worse = (lambda p, q: p > q) if side == 0 else (lambda p, q: p < q)
            full = len(before) == depth
            for j, (price, size) in enumerate(now):
                if not full or not worse(price, before[-1][0]):
                    out.append((i, side, [*now[:j], (price, size + 1), *now[j + 1 :]]))
            if not full and len(now) < depth:
                step = 100 if side == 0 else -100
                deepest = now[-1][0] if now else (ASK_PRICES if side == 0 else BID_PRICES)[-1]
                out.append((i, side, [*now, (deepest + step, 1)]))
    return out


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=1, max_value=4), sides, sides, st.lists(events, min_size=2, max_size=40), st.data())
def test_rows_the_messages_do_not_explain_fail(depth, bids0, asks0, flow, data):
    # The reader must take from the row only what lies beyond the last level shown
    # before; any other difference in a row is the check's to catch.
    messages, rows = simulate(depth, bids0, asks0, flow)
    options = tamperings(rows, depth)
    assume(options)
    i, side, levels = data.draw(st.sampled_from(options))
    rows[i] = (levels, rows[i][1]) if side == 0 else (rows[i][0], levels)
    report = verify(records_of(messages, written(rows, depth)))
    assert not report.ok
    assert report.mismatches[0].record == i
