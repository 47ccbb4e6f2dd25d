"""The Coinbase level2 + ticker reader: the real capture verifies against
every later ticker, and each quirk of the format is shown on inline inputs."""

from __future__ import annotations

import ast
import calendar
import dataclasses
import itertools
import json
from collections import Counter
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orderbook.replay.files import open_records
from orderbook.replay.formats import coinbase
from orderbook.replay.records import BestPrices, FormatError, Record
from orderbook.replay.verify import Verifier, verify

from .cryptofeed_captures import capture_lines, orderbook, read_to_error, verify_resyncs, verify_stops_with

pytestmark = pytest.mark.timeout(120)

COINBASE_DIR = "coinbase-level2-2021-04-17"

# From the capture's README.
EXPECTED_L2UPDATES = {
    "SKL-USD": 2592,
    "DASH-BTC": 1925,
    "SKL-BTC": 1539,
    "BAND-BTC": 1005,
    "CRV-EUR": 670,
    "NMR-EUR": 665,
    "YFI-BTC": 487,
    "BAND-GBP": 471,
    "SKL-GBP": 289,
    "NU-GBP": 76,
}
EXPECTED_REMOVALS = 2634
EXPECTED_TICKERS = 107  # 10 of them the stale first ones


@pytest.fixture(scope="module")
def capture(shared_data: Path) -> Path:
    return shared_data / COINBASE_DIR / "COINBASE.ws.28.0"


@pytest.fixture(scope="module")
def records(capture: Path) -> list[Record]:
    with capture.open(encoding="utf-8") as f:
        return list(coinbase.read(f))


def incremental(records: Iterable[Record]):
    return [u for r in records for u in r.updates if not u.replace]


# ----------------------------------------------------------------------------- the real capture


def test_real_capture_verifies(records):
    report = verify(records)
    assert report.by_kind() == {"best bid/ask": (97, 97)}
    assert report.notes == {coinbase.STALE_TICKER: 10}
    assert report.ok and report.rejected == []
    assert len(records) == 10 + sum(EXPECTED_L2UPDATES.values()) + EXPECTED_TICKERS


def test_real_capture_counts(records):
    updates = incremental(records)
    assert Counter(u.symbol for u in updates) == EXPECTED_L2UPDATES
    levels = [level for u in updates for level in (*u.bids, *u.asks)]
    assert len(levels) == 9719  # exactly one change per message
    assert sum(size == 0 for _, size in levels) == EXPECTED_REMOVALS
    snapshots = {u.symbol: (len(u.bids), len(u.asks)) for r in records for u in r.updates if u.replace}
    assert snapshots["BAND-GBP"] == (152, 166) and snapshots["SKL-USD"] == (814, 1341)
    scales = {i.symbol: (i.price_scale, i.size_scale, i.base, i.quote, i.venue) for r in records for i in r.instruments}
    # DASH-BTC writes sizes with 8 decimals on a 0.001 grid: the significant ones count.
    assert scales["DASH-BTC"] == (8, 3, "DASH", "BTC", "coinbase")
    assert scales["SKL-USD"] == (4, 1, "SKL", "USD", "coinbase")


def test_book_is_never_crossed(records):
    v = Verifier()
    for n, record in enumerate(records):
        v.feed(record)
        for update in record.updates:
            assert not v.book(update.symbol).crossed(), f"record {n}: {update.symbol} crossed"
    assert v.report.ok


def test_scales_agree_with_the_products_metadata(shared_data, capture, records):
    with (shared_data / COINBASE_DIR / "COINBASE.0").open(encoding="utf-8") as f:
        products = coinbase.read_products(f)
    derived = {i.symbol: (i.price_scale, i.size_scale) for r in records for i in r.instruments}
    assert {p: products[p] for p in derived} == derived
    with capture.open(encoding="utf-8") as f:
        assert list(coinbase.read(f, products=products)) == records


def test_event_time_is_exact(records):
    # Line 35: {"type":"l2update","product_id":"SKL-BTC",...,"time":"2021-04-17T16:43:37.075687Z"}
    first = next(r for r in records if r.updates and not r.updates[0].replace)
    assert first.updates[0].symbol == "SKL-BTC"
    assert first.updates[0].asks == ((1306, 6605),)
    assert first.updates[0].event_time_ns == calendar.timegm((2021, 4, 17, 16, 43, 37)) * 10**9 + 75_687_000
    assert first.time_ns == 1_618_677_817_118_783_000


def dropping_removals(records: Iterable[Record]) -> Iterator[Record]:
    """The plausible mistake of comparing sizes with the string "0"."""
    for record in records:
        yield dataclasses.replace(
            record,
            updates=tuple(
                u
                if u.replace
                else dataclasses.replace(
                    u, bids=tuple(lv for lv in u.bids if lv[1]), asks=tuple(lv for lv in u.asks if lv[1])
                )
                for u in record.updates
            ),
        )


def test_wrong_variant_fails(records):
    report = verify(dropping_removals(records))
    assert report.mismatch_count > 10 and not report.ok


def test_corrupted_ticker_is_reported(capture):
    lines = capture.read_text(encoding="utf-8").splitlines(keepends=True)
    seen: set[str] = set()
    for i, text in enumerate(lines):
        if '"type":"ticker"' in text:
            product = json.loads(text.partition(": ")[2])["product_id"]
            if product in seen:
                lines[i] = text.replace('"best_bid":"', '"best_bid":"1')
                break
            seen.add(product)
    report = verify(coinbase.read(lines))
    assert report.by_kind() == {"best bid/ask": (96, 97)}
    assert report.mismatches[0].kind == "best bid/ask" and "best bid" in report.mismatches[0].detail


def test_crlf_and_trailing_blank_lines(capture):
    with capture.open(encoding="utf-8") as f:
        lines = [text.rstrip("\n") for text in itertools.islice(f, 400)]
    lf = list(coinbase.read(text + "\n" for text in lines))
    crlf = list(coinbase.read(("\r\n".join(lines) + "\r\n\r\n\r\n").splitlines(keepends=True)))
    assert crlf == lf
    assert len(lf) > 300 and verify(crlf).ok


def test_streams_line_by_line(capture):
    pulled = 0

    def counting(f: Iterable[str]) -> Iterator[str]:
        nonlocal pulled
        for text in f:
            pulled += 1
            yield text

    with capture.open(encoding="utf-8") as f:
        first = next(coinbase.read(counting(f)))
    # The first snapshot is line 7 of a 9,950-line file.
    assert first.updates[0].replace and first.updates[0].symbol == "BAND-GBP"
    assert pulled == 7


# ----------------------------------------------------------------------------- synthetic quirks


def line(ts: str, msg: dict) -> str:
    return f"{ts}: {json.dumps(msg, separators=(',', ':'))}"


# Scales as written here: 4 price decimals ("0.5751"), 2 size decimals ("1.25").
SNAPSHOT = line(
    "1.0",
    {
        "type": "snapshot",
        "product_id": "T-X",
        "bids": [["0.5751", "10.5"], ["0.5742", "3.0"]],
        "asks": [["0.5763", "2.0"], ["0.5777", "1.25"]],
    },
)


def l2(side: str, price: str, size: str, ts: str = "2.0") -> str:
    msg = {"type": "l2update", "product_id": "T-X", "changes": [[side, price, size]], "time": "2021-04-17T16:43:37Z"}
    return line(ts, msg)


def ticker(bid: str, ask: str) -> str:
    return line("3.0", {"type": "ticker", "product_id": "T-X", "best_bid": bid, "best_ask": ask})


@pytest.mark.parametrize("zero", ["0", "0.0", "0.00", "0.000", "0.000000", "0.00000000"])
def test_every_spelling_of_zero_removes(zero):
    v = Verifier()
    for record in coinbase.read([SNAPSHOT, l2("buy", "0.5751", zero), l2("sell", "0.5763", zero)]):
        v.feed(record)
    assert v.book("T-X").bids() == [(5742, 300)]
    assert v.book("T-X").asks() == [(5777, 125)]


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 18))
def test_zero_with_any_number_of_decimals_removes(n):
    zero = "0." + "0" * n if n else "0"
    [_, record] = coinbase.read([SNAPSHOT, l2("sell", "0.5777", zero)])
    assert record.updates[0].asks == ((5777, 0),)


def test_sides_and_scales():
    records = list(coinbase.read([SNAPSHOT, l2("buy", "0.5755", "7.5"), l2("sell", "0.58", "1")]))
    assert records[0].instruments[0].price_scale == 4 and records[0].instruments[0].size_scale == 2
    assert records[1].updates[0].bids == ((5755, 750),) and records[1].updates[0].asks == ()
    assert records[2].updates[0].asks == ((5800, 100),) and records[2].updates[0].bids == ()


def test_too_many_decimals_names_the_line():
    with pytest.raises(FormatError, match=r"^cb:3: .*0\.57675") as exc:
        list(coinbase.read([SNAPSHOT, l2("buy", "0.5755", "1"), l2("sell", "0.57675", "1")], source="cb"))
    assert exc.value.where == "cb:3"
    # A wider scale given up front holds it exactly.
    records = list(coinbase.read([SNAPSHOT, l2("sell", "0.57675", "1.125")], price_scale=5, size_scale=3))
    assert records[1].updates[0].asks == ((57675, 1125),)


def test_ticker_prices_convert_exactly():
    lines = [ticker("0.5", "0.5"), SNAPSHOT, ticker("0.5751", "0.57630000"), ticker("0.57510", "0.577")]
    records = list(coinbase.read(lines))
    assert records[0].note == coinbase.STALE_TICKER and records[0].checks == ()
    assert records[2].checks == (BestPrices("T-X", (5751, 0), (5763, 0), False, False),)
    report = verify(records)
    # The first is stale (not checked), the second matches, the third's ask does not.
    assert report.by_kind() == {"best bid/ask": (1, 2)}


def test_a_new_connection_sends_stale_tickers_again():
    opened = "wss://ws-feed.pro.coinbase.com <-> 5.0"
    records = list(coinbase.read([SNAPSHOT, ticker("1", "2"), ticker("0.5751", "0.5763"), opened, ticker("1", "2")]))
    assert [r.note for r in records[1:]] == [coinbase.STALE_TICKER, "", coinbase.STALE_TICKER]


def test_matches_and_other_types_yield_nothing():
    lines = [
        line("0.5", {"type": "subscriptions", "channels": []}),
        SNAPSHOT,
        line("1.5", {"type": "match", "product_id": "T-X", "price": "0.5760", "size": "1", "side": "sell"}),
        line("1.6", {"type": "last_match", "product_id": "T-X", "price": "0.5760", "size": "1", "side": "sell"}),
        line("1.7", {"type": "heartbeat", "product_id": "T-X"}),
    ]
    assert len(list(coinbase.read(lines))) == 1


def test_malformed_messages_are_errors():
    with pytest.raises(FormatError, match="coinbase:1: T-X: l2update before its snapshot"):
        list(coinbase.read([l2("buy", "1", "1")]))
    with pytest.raises(FormatError, match=r"coinbase:2: bad change \['bid'"):
        list(coinbase.read([SNAPSHOT, l2("bid", "0.5755", "1")]))
    with pytest.raises(FormatError, match="coinbase:2: negative size '-1'"):
        list(coinbase.read([SNAPSHOT, l2("buy", "0.5755", "-1")]))
    with pytest.raises(FormatError, match="coinbase:2: not an ISO-8601 time"):
        list(coinbase.read([SNAPSHOT, l2("buy", "0.5755", "1").replace("16:43:37Z", "16:43:37")]))


# ----------------------------------------------------------------------------- bad input and gaps

JUNK = "1618677830.0: <html>502 Bad Gateway</html>"


def copy_with(tmp_path: Path, capture: Path, edit) -> Path:
    """A copy of the capture in tmp_path, its lines passed through `edit`."""
    out = tmp_path / capture.name
    out.write_bytes("\n".join(edit(capture_lines(capture))).encode())
    return out


def of_type(lines: list[str], *types: str) -> list[int]:
    return [i for i, text in enumerate(lines) if any(f'"type":"{t}"' in text for t in types)]


def product_of(text: str) -> str:
    return json.loads(text.partition(": ")[2])["product_id"]


def fed(records: Iterable[Record]) -> Verifier:
    """A verifier that has rebuilt every book from `records`."""
    v = Verifier()
    for record in records:
        v.feed(record)
    return v


def test_a_truncated_last_line_stops_naming_its_line_and_product(tmp_path, capture, records):
    lines = capture_lines(capture)
    last = of_type(lines, "l2update", "ticker", "snapshot")[-1]
    assert lines[last + 1 :] == ["", "", ""]  # the file ends with this line and blank ones
    bad = copy_with(tmp_path, capture, lambda ls: [*ls[:last], ls[last][: len(ls[last]) // 2]])
    got, error = read_to_error(bad, "coinbase")
    assert str(error).startswith(f"COINBASE.ws.28.0:{last + 1}: {product_of(lines[last])}: the line is cut short: ")
    assert got == records[:-1]  # every record before it, whole; nothing of the cut one

    verify_stops_with(bad, error)
    out = orderbook("verify", str(bad), "--gaps", "error")
    assert out.returncode == 1 and out.stderr.strip().splitlines() == [f"orderbook verify: {error}"]


def test_with_resync_a_truncated_last_line_is_noted(tmp_path, capture, records):
    lines = capture_lines(capture)
    last = of_type(lines, "l2update", "ticker", "snapshot")[-1]
    product = product_of(lines[last])
    bad = copy_with(tmp_path, capture, lambda ls: [*ls[:last], ls[last][: len(ls[last]) // 2]])
    got = list(open_records(bad, "coinbase", gaps="resync"))
    assert [r for r in got if not r.note or r.note == coinbase.STALE_TICKER] == records[:-1]
    report = verify(got)
    assert report.ok and report.by_kind() == {"best bid/ask": (97, 97)}
    [gap] = [n for n in report.notes if n.startswith("gap")]
    assert gap.startswith(f"gap at COINBASE.ws.28.0:{last + 1}: {product}: the line is cut short: ")
    assert report.notes == {
        gap: 1,
        f"no snapshot: {product} skipped 1 record to the end": 1,
        coinbase.STALE_TICKER: 10,
    }

    verify_resyncs(bad, f"no snapshot: {product} skipped 1 record to the end", "OK: 97 of 97 references match")


def test_a_line_that_is_not_json_stops_naming_its_line(tmp_path, capture, records):
    lines = capture_lines(capture)
    at = of_type(lines, "l2update")[100]
    before = len(of_type(lines[:at], "l2update", "ticker", "snapshot"))
    bad = copy_with(tmp_path, capture, lambda ls: [*ls[:at], JUNK, *ls[at:]])
    got, error = read_to_error(bad, "coinbase")
    # No product to name: the line and what was wrong.
    assert str(error) == f"COINBASE.ws.28.0:{at + 1}: not JSON: Expecting value: line 1 column 1 (char 0)"
    assert got == records[:before]

    verify_stops_with(bad, error)


def test_with_resync_a_line_that_is_not_json_is_noted_and_changes_nothing(tmp_path, capture, records):
    lines = capture_lines(capture)
    at = of_type(lines, "l2update")[100]
    bad = copy_with(tmp_path, capture, lambda ls: [*ls[:at], JUNK, *ls[at:]])
    got = list(open_records(bad, "coinbase", gaps="resync"))
    unreadable = f"unreadable line at COINBASE.ws.28.0:{at + 1}: not JSON: Expecting value: line 1 column 1 (char 0)"
    assert [r for r in got if r.note != unreadable] == records
    report = verify(got)
    assert report.ok and report.by_kind() == {"best bid/ask": (97, 97)}
    assert report.notes == {unreadable: 1, coinbase.STALE_TICKER: 10}

    verify_resyncs(bad, f"unreadable line at COINBASE.ws.28.0:{at + 1}: not JSON", "OK: 97 of 97 references match")


def test_with_resync_a_product_cut_mid_file_waits_for_a_snapshot(tmp_path, capture, records):
    lines = capture_lines(capture)
    at = of_type(lines, "l2update")[100]
    product = product_of(lines[at])
    bad = copy_with(tmp_path, capture, lambda ls: [*ls[:at], ls[at][:75], *ls[at + 1 :]])
    with pytest.raises(FormatError, match=rf"^COINBASE\.ws\.28\.0:{at + 1}: {product}: the line is cut short"):
        list(open_records(bad, "coinbase"))
    got = list(open_records(bad, "coinbase", gaps="resync"))
    # No later snapshot: its l2updates and tickers from the cut on are skipped.
    mine = [i for i in of_type(lines, "l2update", "ticker") if i >= at and product_of(lines[i]) == product]
    tickers = [i for i in mine if '"type":"ticker"' in lines[i]]
    first_ticker = next(i for i in of_type(lines, "ticker") if product_of(lines[i]) == product)
    assert first_ticker < at and tickers  # its stale ticker came before; later ones are checks lost
    before = len(of_type(lines[:at], "l2update", "ticker", "snapshot"))
    kept = [r for r in got if not r.note.startswith(("gap", "no snapshot"))]
    assert kept == records[:before] + [r for r in records[before + 1 :] if not _about(r, product)]
    report = verify(got)
    assert report.ok and report.by_kind() == {"best bid/ask": (97 - len(tickers), 97 - len(tickers))}
    assert f"no snapshot: {product} skipped {len(mine)} records to the end" in report.notes
    # The product's book stays as the last good message left it.
    assert fed(got).book(product) == fed(records[:before]).book(product)


def _about(record: Record, product: str) -> bool:
    return any(u.symbol == product for u in record.updates) or any(c.symbol == product for c in record.checks)


def test_a_damaged_ticker_is_a_lost_check_not_a_lost_book(tmp_path, capture, records):
    lines = capture_lines(capture)
    at = of_type(lines, "ticker")[50]
    product = product_of(lines[at])
    bad = copy_with(tmp_path, capture, lambda ls: [*ls[:at], ls[at][:-20], *ls[at + 1 :]])
    got, error = read_to_error(bad, "coinbase")
    assert str(error).startswith(f"COINBASE.ws.28.0:{at + 1}: {product}: the line is cut short: ")
    assert got == records[: len(of_type(lines[:at], "l2update", "ticker", "snapshot"))]
    report = verify(open_records(bad, "coinbase", gaps="resync"))
    [note] = [n for n in report.notes if n != coinbase.STALE_TICKER]
    assert note.startswith(f"unreadable line at COINBASE.ws.28.0:{at + 1}: {product}: the line is cut short: ")
    assert report.ok and report.by_kind() == {"best bid/ask": (96, 96)}


def test_with_resync_the_next_snapshot_ends_the_wait():
    lines = [SNAPSHOT, l2("buy", "0.5755", "1")[:50], l2("buy", "0.5756", "1"), ticker("0.5756", "0.5763")]
    lines += [SNAPSHOT.replace("1.0:", "4.0:", 1), l2("sell", "0.5760", "1", ts="5.0"), ticker("0.5751", "0.5760")]
    with pytest.raises(FormatError, match=r"^cb:2: T-X: the line is cut short"):
        list(coinbase.read(lines, source="cb"))
    got = list(coinbase.read(lines, source="cb", gaps="resync"))
    assert [r.note.split(":")[0] for r in got] == ["", "gap at cb", "resync", "", "", ""]
    assert got[2].note == "resync: T-X skipped 3 records"
    # The ticker skipped while waiting was its first: the one after the snapshot is checked.
    assert verify(got).by_kind() == {"best bid/ask": (1, 1)}
    assert fed(got).book("T-X").asks() == [(5760, 100), (5763, 200), (5777, 125)]


def test_with_resync_an_l2update_before_any_snapshot_waits_for_one():
    got = list(coinbase.read([l2("buy", "1", "1"), SNAPSHOT], gaps="resync"))
    assert [r.note for r in got] == [
        "gap at coinbase:1: T-X: l2update before its snapshot",
        "resync: T-X skipped 1 record",
        "",
    ]


def test_gaps_is_checked_when_called():
    with pytest.raises(ValueError, match="gaps must be 'error' or 'resync'"):
        coinbase.read([], gaps="skip")  # type: ignore[arg-type]


def test_iso_times():
    assert coinbase.iso_to_ns("1970-01-01T00:00:00Z", "w") == 0
    assert coinbase.iso_to_ns("2021-04-17T16:43:37.075687Z", "w") == 1_618_677_817_075_687_000
    assert coinbase.iso_to_ns("2021-04-17T18:43:37.075687+02:00", "w") == 1_618_677_817_075_687_000
    assert coinbase.iso_to_ns("2021-04-17T16:43:37.123456789Z", "w") == 1_618_677_817_123_456_789
    for bad in ("2021-02-30T00:00:00Z", "2021-04-17 16:43:37Z", "2021-04-17T24:00:00Z", "x"):
        with pytest.raises(FormatError):
            coinbase.iso_to_ns(bad, "w")


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 4_102_444_800 * 10**6 - 1), st.integers(1, 9))
def test_iso_time_round_trip(micros, digits):
    # datetime (integer arithmetic only) writes the text; the reader must recover it to the digit.
    dt = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=micros)
    frac = f"{dt.microsecond:06d}000"[:digits]
    text = dt.strftime("%Y-%m-%dT%H:%M:%S") + f".{frac}Z"
    expected = (micros // 10**6) * 10**9 + int(frac.ljust(9, "0"))
    assert coinbase.iso_to_ns(text, "w") == expected


def test_reader_is_pure():
    tree = ast.parse(Path(coinbase.__file__).read_text(encoding="utf-8"))
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and not n.level}
    assert not imported & {"asyncio", "socket", "time", "sanic", "websockets", "redis", "subprocess", "io", "os"}
    calls = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    assert "open" not in calls
