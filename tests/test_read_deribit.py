"""The Deribit `book.<instrument>.raw` reader on cryptofeed's public sample
capture: every change continues its book's change_id chain, the rebuilt
books are the same offline and through a node, and damaged input stops with
one line that says where and what."""

from __future__ import annotations

import hashlib
import re
from decimal import Decimal
from pathlib import Path

import pytest

from orderbook.replay.endtoend import verify_through_server
from orderbook.replay.files import detect_format, open_records
from orderbook.replay.formats import deribit
from orderbook.replay.records import FormatError, Record, TopLevels
from orderbook.replay.verify import Verifier, verify

from .cryptofeed_captures import (
    DATA,
    Edit,
    capture_lines,
    orderbook,
    read_to_error,
    verify_resyncs,
    verify_stops_with,
    verify_through_a_node,
)
from .cryptofeed_captures import copy_with as copy_capture_with
from .harness import FEED_TOKEN, serve_in_process, test_settings

pytestmark = pytest.mark.timeout(120)

CAPTURE = DATA / "DERIBIT.ws.1.0"
INSTRUMENTS = DATA / "DERIBIT.0"
# symbol -> (records, level changes, chained changes checked)
SYMBOLS = {
    "BTC-24JUN22-15000-C": (1, 3, 0),
    "BTC-24SEP21-34000-P": (2, 15, 1),
    "BTC-24SEP21-8000-P": (31, 45, 30),
    "BTC-25MAR22-30000-C": (1, 5, 0),
    "BTC-30JUL21-24000-P": (1, 11, 0),
    "BTC-31DEC21-300000-C": (2, 29, 1),
    "BTC-31DEC21-34000-P": (4, 20, 3),
    "ETH-23JUL21-2300-C": (1, 4, 0),
    "ETH-27AUG21-4000-P": (1, 0, 0),
    "ETH-30JUL21-2800-C": (2, 17, 1),
}
SYM = "BTC-24SEP21-8000-P"


def read(path: Path = CAPTURE, **options) -> list[Record]:
    return list(open_records(path, "deribit", **options))


@pytest.fixture(scope="module")
def records() -> list[Record]:
    return read()


def copy_with(tmp_path: Path, edit: Edit) -> Path:
    return copy_capture_with(tmp_path, CAPTURE, INSTRUMENTS, edit)


def change_lines(lines: list[str], symbol: str = SYM) -> list[int]:
    return [i for i, line in enumerate(lines) if f'"channel":"book.{symbol}.raw"' in line and '"type":"change"' in line]


def book_lines(lines: list[str]) -> list[int]:
    return [i for i, line in enumerate(lines) if '"channel":"book.' in line]


# ----------------------------------------------------------------------------- the sample capture


def test_the_sample_files_are_the_published_bytes():
    # The sha256 the data README gives: the files are cryptofeed's, unchanged.
    assert hashlib.sha256(CAPTURE.read_bytes()).hexdigest() == (
        "ec57519ab08ecdabe339ace164edd7751cba95c4072f2bea598af3038e763342"
    )
    assert hashlib.sha256(INSTRUMENTS.read_bytes()).hexdigest() == (
        "2e35017b87afea60c18a539be63792c644131b7a24cc6d86667a60ffb31ecc28"
    )


def test_every_change_chains(records):
    snapshots = [r for r in records if r.updates[0].replace]
    assert (len(records), len(snapshots)) == (46, 10)
    changes = [r for r in records if not r.updates[0].replace]
    assert all(len(r.checks) == 1 and isinstance(r.checks[0], TopLevels) for r in changes)
    report = verify(records)
    assert report.by_kind() == {"deribit change chain": (36, 36)}
    got = {s: (rep.records, rep.level_changes, rep.checked) for s, rep in report.symbols.items()}
    assert got == SYMBOLS
    assert report.ok


def test_option_prices_are_in_the_currency_on_the_tick_size(records):
    defined = {i.symbol: i for r in records for i in r.instruments}
    assert len(defined) == 10
    btc, eth = defined[SYM], defined["ETH-30JUL21-2800-C"]
    # tick_size 0.0005 BTC; min_trade_amount 0.1 (BTC) and 1 (ETH) contracts.
    assert (btc.price_scale, btc.price_increment, btc.size_scale, btc.size_increment) == (4, 5, 1, 1)
    assert (eth.price_scale, eth.price_increment, eth.size_scale, eth.size_increment) == (4, 5, 0, 1)
    assert (btc.base, btc.quote, btc.venue) == ("BTC", "BTC", "deribit")
    assert (eth.base, eth.quote) == ("ETH", "ETH")


def test_prices_and_amounts_are_the_exact_decimals_written(records):
    v = Verifier()
    for record in records[:8]:
        v.feed(record)
    # BTC-24SEP21-8000-P's snapshot: bids [["new",0.0005,153.1]], asks [["new",0.0015,94.7],["new",0.002,22.0],...]
    inst = v.market.get(SYM).instrument
    book = v.book(SYM)
    assert [(inst.format_price(p), inst.format_size(s)) for p, s in book.bids()] == [("0.0005", "153.1")]
    asks = [(inst.format_price(p), inst.format_size(s)) for p, s in book.asks(2)]
    assert asks == [("0.0015", "94.7"), ("0.0020", "22.0")]
    assert [Decimal(p) for p, _ in asks] == [Decimal("0.0015"), Decimal("0.002")]


def test_the_format_is_told_from_the_content():
    assert detect_format(CAPTURE) == "deribit"


def test_verify_command():
    out = orderbook("verify", str(CAPTURE))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "(deribit, offline)" in out.stdout
    assert "total deribit change chain: 36 of 36 match" in out.stdout
    assert "OK: 36 of 36 references match over 46 records" in out.stdout


async def test_through_a_node_every_chained_book_is_served():
    async with serve_in_process(test_settings()) as srv:
        report = await verify_through_server(
            open_records(CAPTURE, "deribit"), srv.http, feed_token=FEED_TOKEN, timeout=20
        )
    assert report.rejected == [], report.rejected[:5]
    assert report.mismatches == [], "\n".join(report.lines())
    assert report.by_kind() == {"deribit change chain": (36, 36)}
    assert report.ok


def test_verify_command_through_a_node(tmp_path):
    out = verify_through_a_node(tmp_path, CAPTURE)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "total deribit change chain: 36 of 36 match" in out.stdout


def test_without_the_instruments_file_an_empty_first_book_is_a_clear_error(tmp_path):
    (tmp_path / CAPTURE.name).write_bytes(CAPTURE.read_bytes())
    with pytest.raises(FormatError, match=r"DERIBIT\.ws\.1\.0:15: ETH-27AUG21-4000-P: empty first snapshot"):
        read(tmp_path / CAPTURE.name)


# ----------------------------------------------------------------------------- bad input


def break_chain(line: str) -> str:
    return re.sub(r'"prev_change_id":(\d+)', lambda m: f'"prev_change_id":{int(m.group(1)) - 1}', line)


def test_a_broken_chain_stops_with_file_line_and_symbol(tmp_path):
    lines = capture_lines(CAPTURE)
    at = change_lines(lines)[10]
    bad = copy_with(tmp_path, lambda ls: [break_chain(x) if i == at else x for i, x in enumerate(ls)])
    held = int(re.search(r'"prev_change_id":(\d+)', lines[at]).group(1))
    got, error = read_to_error(bad, "deribit")
    assert str(error) == (
        f"DERIBIT.ws.1.0:{at + 1}: {SYM}: prev_change_id {held - 1} != the last change_id {held}: changes were missed"
    )
    assert len(got) == sum(1 for i in book_lines(lines) if i < at)  # nothing of the broken change

    verify_stops_with(bad, error)


def test_with_resync_a_broken_chain_waits_for_the_next_snapshot(tmp_path):
    lines = capture_lines(CAPTURE)
    at = change_lines(lines)[10]
    bad = copy_with(tmp_path, lambda ls: [break_chain(x) if i == at else x for i, x in enumerate(ls)])
    skipped = sum(1 for i in change_lines(lines) if i >= at)
    records = read(bad, gaps="resync")
    report = verify(records)
    assert report.ok and report.checked == 36 - skipped
    assert [n for n in report.notes if n.startswith("no snapshot")] == [
        f"no snapshot: {SYM} skipped {skipped} records to the end"
    ]
    # The symbol's book stays exactly as the last chained change left it.
    clean, v = Verifier(), Verifier()
    for record in read()[: sum(1 for i in book_lines(lines) if i < at)]:
        clean.feed(record)
    for record in records:
        v.feed(record)
    assert v.book(SYM) == clean.book(SYM)

    verify_resyncs(bad, f"no snapshot: {SYM} skipped {skipped} records to the end")


def test_an_action_that_does_not_fit_the_book_is_a_gap():
    head = '{"jsonrpc":"2.0","method":"subscription","params":{"channel":"book.X.raw","data":'
    lines = [
        f'1.0: {head}{{"type":"snapshot","timestamp":1,"instrument_name":"X","change_id":5,'
        '"bids":[["new",1.5,2.0]],"asks":[]}}}',
        f'2.0: {head}{{"type":"change","timestamp":2,"prev_change_id":5,"instrument_name":"X","change_id":6,'
        '"bids":[["change",1.5,3.0],["change",1.0,1.0]],"asks":[]}}}',
    ]
    with pytest.raises(FormatError, match=r"deribit:2: X: change 6: change bid 1.0, which the book does not hold"):
        list(deribit.read(lines))
    records = list(deribit.read(lines, gaps="resync"))
    assert [r.note for r in records][1:] == [
        "gap at deribit:2: X: change 6: change bid 1.0, which the book does not hold",
        "no snapshot: X skipped 1 record to the end",
    ]
    # With resync, the next snapshot restarts the book and says how much was skipped.
    later = [
        f'3.0: {head}{{"type":"change","timestamp":3,"prev_change_id":6,"instrument_name":"X","change_id":7,'
        '"bids":[["delete",1.5,0.0]],"asks":[]}}}',
        f'4.0: {head}{{"type":"snapshot","timestamp":4,"instrument_name":"X","change_id":9,'
        '"bids":[["new",1.0,4.0]],"asks":[]}}}',
    ]
    records = list(deribit.read(lines + later, gaps="resync"))
    assert [r.note for r in records][1:3] == [
        "gap at deribit:2: X: change 6: change bid 1.0, which the book does not hold",
        "resync: X skipped 2 records",
    ]
    last = Verifier()
    for record in records:
        last.feed(record)
    assert last.book("X").bids() == [(10, 4)]


def test_a_truncated_last_line_names_its_line_and_symbol(tmp_path):
    lines = capture_lines(CAPTURE)
    last = change_lines(lines)[-1]
    bad = copy_with(tmp_path, lambda ls: [*ls[:last], ls[last][: len(ls[last]) * 2 // 3]])
    got, error = read_to_error(bad, "deribit")
    assert str(error).startswith(f"DERIBIT.ws.1.0:{last + 1}: {SYM}: the line is cut short")
    assert len(got) == 45


def test_a_line_that_is_not_json_names_its_line(tmp_path):
    lines = capture_lines(CAPTURE)
    at = change_lines(lines)[3]
    bad = copy_with(tmp_path, lambda ls: [*ls[:at], "1626993724.5: <html>502 Bad Gateway</html>", *ls[at:]])
    with pytest.raises(FormatError) as err:
        read(bad)
    assert str(err.value).startswith(f"DERIBIT.ws.1.0:{at + 1}: instrument unknown: not JSON")
    out = orderbook("verify", str(bad))
    assert out.returncode == 1 and f"DERIBIT.ws.1.0:{at + 1}: instrument unknown: not JSON" in out.stderr


def test_a_price_off_the_tick_size_is_refused():
    instruments = [
        "https://www.deribit.com/api/v2/public/get_instruments?currency=BTC&expired=false -> 1.0: "
        '{"jsonrpc":"2.0","result":[{"instrument_name":"X","tick_size":0.0005,"min_trade_amount":0.1,'
        '"base_currency":"BTC","quote_currency":"BTC"}]}'
    ]
    lines = [
        '2.0: {"jsonrpc":"2.0","method":"subscription","params":{"channel":"book.X.raw","data":{"type":"snapshot",'
        '"timestamp":1,"instrument_name":"X","change_id":5,"bids":[["new",0.0012,1.0]],"asks":[]}}}'
    ]
    with pytest.raises(FormatError, match=r"deribit:1: X: level 0.0012 x 1.0 is off the tick size or amount grid"):
        list(deribit.read(lines, instruments=instruments))


def test_with_resync_a_damaged_line_is_a_gap_for_its_instrument_or_a_note(tmp_path):
    lines = capture_lines(CAPTURE)
    at = change_lines(lines)[5]
    cut_mid_file = lines[at][: len(lines[at]) // 2]
    junk = "1626993724.5: <html>502 Bad Gateway</html>"
    bad = copy_with(tmp_path, lambda ls: [*ls[:at], junk, cut_mid_file, *ls[at + 1 :]])
    skipped = sum(1 for i in change_lines(lines) if i >= at)
    report = verify(read(bad, gaps="resync"))
    assert report.ok and report.checked == 36 - skipped
    notes = sorted(report.notes)
    assert notes[0].startswith(f"gap at DERIBIT.ws.1.0:{at + 2}: {SYM}: the line is cut short")
    assert notes[1] == f"no snapshot: {SYM} skipped {skipped} records to the end"
    assert notes[2].startswith(f"unreadable line at DERIBIT.ws.1.0:{at + 1}: not JSON")
