"""The OKX v5 `books` reader on cryptofeed's public sample capture: every
message's own CRC32 matches the rebuilt book, offline and through a node,
and damaged input stops with one line that says where and what."""

from __future__ import annotations

import hashlib
import re
from decimal import Decimal
from pathlib import Path

import pytest

from orderbook.replay.endtoend import verify_through_server
from orderbook.replay.files import detect_format, open_records
from orderbook.replay.formats import okx
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

CAPTURE = DATA / "OKX.ws.1.0"
INSTRUMENTS = DATA / "OKX.0"
SYMBOLS = {"BTC-USD-220527": (99, 1732), "BTC-USDT": (98, 4324), "UNI-USD-SWAP": (93, 864)}  # records, changes


def read(path: Path = CAPTURE, **options) -> list[Record]:
    return list(open_records(path, "okx", **options))


@pytest.fixture(scope="module")
def records() -> list[Record]:
    return read()


def copy_with(tmp_path: Path, edit: Edit) -> Path:
    return copy_capture_with(tmp_path, CAPTURE, INSTRUMENTS, edit)


def book_lines(lines: list[str]) -> list[int]:
    return [i for i, line in enumerate(lines) if '"channel":"books"' in line and '"action"' in line]


def alter_checksum(line: str) -> str:
    return re.sub(r'"checksum":(-?\d+)', lambda m: f'"checksum":{int(m.group(1)) ^ 1}', line)


# ----------------------------------------------------------------------------- the sample capture


def test_the_sample_files_are_the_published_bytes():
    # The sha256 the data README gives: the files are cryptofeed's, unchanged.
    assert hashlib.sha256(CAPTURE.read_bytes()).hexdigest() == (
        "a9b65fb84bda877ac799d3afe6e3630f0929751b31c6fa1bb4a55e0e6aceac91"
    )
    assert hashlib.sha256(INSTRUMENTS.read_bytes()).hexdigest() == (
        "ce3fda8890fb4c17835ea72b7ae6e02a12c38167a182a31f2cef4335137e3914"
    )


def test_every_checksum_of_the_capture_matches(records):
    snapshots = [r for r in records if r.updates[0].replace]
    assert (len(records), len(snapshots)) == (290, 3)
    assert all(len(r.checks) == 1 and isinstance(r.checks[0], TopLevels) for r in records)
    report = verify(records)
    assert report.by_kind() == {"okx checksum": (290, 290)}
    assert {s: (rep.records, rep.level_changes) for s, rep in report.symbols.items()} == SYMBOLS
    assert report.ok


def test_scales_and_increments_come_from_the_instruments_file(records):
    defined = {i.symbol: i for r in records for i in r.instruments}
    got = {s: (i.price_scale, i.size_scale, i.price_increment, i.size_increment) for s, i in defined.items()}
    assert got == {"BTC-USD-220527": (1, 0, 1, 1), "BTC-USDT": (1, 8, 1, 1), "UNI-USD-SWAP": (3, 0, 1, 1)}
    assert (defined["BTC-USDT"].base, defined["BTC-USDT"].quote, defined["BTC-USDT"].venue) == ("BTC", "USDT", "okx")


def test_prices_and_sizes_are_the_exact_decimals_written(records):
    v = Verifier()
    v.feed(records[2])  # BTC-USDT's snapshot: asks [["30243.5","1.44679",...],["30244","0.08",...]
    inst = v.market.get("BTC-USDT").instrument
    book = v.book("BTC-USDT")
    asks = [(inst.format_price(p), inst.format_size(s)) for p, s in book.asks(3)]
    assert asks == [("30243.5", "1.44679000"), ("30244.0", "0.08000000"), ("30246.1", "0.05426064")]
    written = [["30243.5", "1.44679"], ["30244", "0.08"], ["30246.1", "0.05426064"]]
    assert [(Decimal(p), Decimal(s)) for p, s in asks] == [(Decimal(p), Decimal(s)) for p, s in written]


def test_okx_checksum_rule():
    # OKX's documented example: bids and asks interleaved, a short side just ends.
    assert okx.okx_checksum(["3366.1:7", "3366:6"], ["3366.8:9", "3368:8"]) == -1881014294
    text = "3366.1:7:3366.8:9:3368:8:3372:8"
    import zlib

    want = zlib.crc32(text.encode())
    assert okx.okx_checksum(["3366.1:7"], ["3366.8:9", "3368:8", "3372:8"]) == want - (1 << 32) * (want >= 1 << 31)


def test_without_the_instruments_file_scales_come_from_the_data(tmp_path):
    (tmp_path / CAPTURE.name).write_bytes(CAPTURE.read_bytes())
    records = read(tmp_path / CAPTURE.name)
    assert verify(records).by_kind() == {"okx checksum": (290, 290)}
    assert {i.symbol: i.price_increment for r in records for i in r.instruments} == dict.fromkeys(SYMBOLS, 1)


def test_the_format_is_told_from_the_content(tmp_path):
    assert detect_format(CAPTURE) == "okx"
    renamed = tmp_path / "capture.txt"
    renamed.write_bytes(CAPTURE.read_bytes())
    assert detect_format(renamed) == "okx"


def test_verify_command():
    out = orderbook("verify", str(CAPTURE))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "(okx, offline)" in out.stdout
    assert "total okx checksum: 290 of 290 match" in out.stdout
    assert "OK: 290 of 290 references match over 290 records" in out.stdout


async def test_through_a_node_every_book_equals_what_okx_certified():
    async with serve_in_process(test_settings()) as srv:
        report = await verify_through_server(open_records(CAPTURE, "okx"), srv.http, feed_token=FEED_TOKEN, timeout=20)
    assert report.rejected == [], report.rejected[:5]
    assert report.mismatches == [], "\n".join(report.lines())
    assert report.by_kind() == {"okx checksum": (290, 290)}
    assert report.ok


def test_verify_command_through_a_node(tmp_path):
    out = verify_through_a_node(tmp_path, CAPTURE)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "total okx checksum: 290 of 290 match" in out.stdout


# ----------------------------------------------------------------------------- bad input


def test_a_checksum_mismatch_stops_with_file_line_and_symbol(tmp_path):
    lines = capture_lines(CAPTURE)
    at = book_lines(lines)[150]
    bad = copy_with(tmp_path, lambda ls: [alter_checksum(x) if i == at else x for i, x in enumerate(ls)])
    good_before = sum(1 for i in book_lines(lines) if i < at)
    got, error = read_to_error(bad, "okx")
    symbol = re.search(r'"instId":"([^"]+)"', lines[at]).group(1)
    assert re.fullmatch(rf"OKX\.ws\.1\.0:{at + 1}: {symbol}: checksum -?\d+ != venue's -?\d+", str(error))
    # Nothing of the bad message was yielded: every record before it, none of it.
    assert len(got) == good_before

    verify_stops_with(bad, error)


def test_with_resync_a_mismatch_skips_to_the_next_snapshot(tmp_path):
    lines = capture_lines(CAPTURE)
    at = book_lines(lines)[150]
    symbol = re.search(r'"instId":"([^"]+)"', lines[at]).group(1)
    bad = copy_with(tmp_path, lambda ls: [alter_checksum(x) if i == at else x for i, x in enumerate(ls)])
    skipped = sum(1 for i in book_lines(lines) if i >= at and f'"instId":"{symbol}"' in lines[i])
    records = read(bad, gaps="resync")
    report = verify(records)
    # Every other message still checks; the damaged symbol's book stays as its last good message left it.
    assert report.ok and report.checked == 290 - skipped
    original = int(re.search(r'"checksum":(-?\d+)', lines[at]).group(1))
    assert report.notes == {
        f"gap at OKX.ws.1.0:{at + 1}: {symbol}: checksum {original} != venue's {original ^ 1}": 1,
        f"no snapshot: {symbol} skipped {skipped} records to the end": 1,
    }
    clean = Verifier()
    for record in read()[: sum(1 for i in book_lines(lines) if i < at)]:
        clean.feed(record)
    v = Verifier()
    for record in records:
        v.feed(record)
    assert v.book(symbol) == clean.book(symbol)

    verify_resyncs(bad, f"no snapshot: {symbol} skipped {skipped} records to the end")


def test_a_truncated_last_line_names_its_line_and_symbol(tmp_path):
    lines = capture_lines(CAPTURE)
    last = book_lines(lines)[-1]
    assert lines[last + 1 :] == [""]  # the file ends with this line and a newline
    bad = copy_with(tmp_path, lambda ls: [*ls[:last], ls[last][: len(ls[last]) // 2]])
    got, error = read_to_error(bad, "okx")
    symbol = re.search(r'"instId":"([^"]+)"', lines[last]).group(1)
    assert str(error).startswith(f"OKX.ws.1.0:{last + 1}: {symbol}: the line is cut short")
    assert len(got) == 289


def test_a_line_that_is_not_json_names_its_line(tmp_path):
    lines = capture_lines(CAPTURE)
    at = book_lines(lines)[10]
    bad = copy_with(tmp_path, lambda ls: [*ls[:at], "1652459226.0: <html>502 Bad Gateway</html>", *ls[at:]])
    with pytest.raises(FormatError) as err:
        read(bad)
    assert str(err.value).startswith(f"OKX.ws.1.0:{at + 1}: instrument unknown: not JSON")
    out = orderbook("verify", str(bad))
    assert out.returncode == 1 and f"OKX.ws.1.0:{at + 1}: instrument unknown: not JSON" in out.stderr


def test_an_update_before_any_snapshot_is_a_gap():
    lines = [
        '1.0: {"arg":{"channel":"books","instId":"X-Y"},"action":"update","data":[{"asks":[["1","1","0","1"]],'
        '"bids":[],"ts":"1","checksum":0}]}'
    ]
    with pytest.raises(FormatError, match=r"okx:1: X-Y: update with no book to apply it to"):
        list(okx.read(lines))


def test_a_value_finer_than_the_tick_size_is_refused():
    instruments = [
        'https://www.okx.com/api/v5/public/instruments?instType=SPOT -> 1.0: {"code":"0","data":[{"instId":"X-Y",'
        '"tickSz":"0.1","lotSz":"1","baseCcy":"X","quoteCcy":"Y"}]}'
    ]
    lines = [
        '2.0: {"arg":{"channel":"books","instId":"X-Y"},"action":"snapshot","data":[{"asks":[["1.25","1","0","1"]],'
        '"bids":[],"ts":"1","checksum":0}]}'
    ]
    with pytest.raises(FormatError, match=r"okx:1: .*1\.25 has more than 1 decimal places"):
        list(okx.read(lines, instruments=instruments))


def test_with_resync_a_damaged_line_is_a_gap_for_its_instrument_or_a_note(tmp_path):
    lines = capture_lines(CAPTURE)
    at = book_lines(lines)[200]
    symbol = re.search(r'"instId":"([^"]+)"', lines[at]).group(1)
    cut_mid_file = lines[at][: len(lines[at]) // 2]
    junk = "1652459230.0: <html>502 Bad Gateway</html>"
    bad = copy_with(tmp_path, lambda ls: [*ls[:at], junk, cut_mid_file, *ls[at + 1 :]])
    skipped = sum(1 for i in book_lines(lines) if i >= at and f'"instId":"{symbol}"' in lines[i])
    with pytest.raises(FormatError, match=rf"OKX\.ws\.1\.0:{at + 1}: instrument unknown: not JSON"):
        read(bad)
    report = verify(read(bad, gaps="resync"))
    # The junk line changes no book; the cut one costs its instrument the rest of the file.
    assert report.ok and report.checked == 290 - skipped
    notes = sorted(report.notes)
    assert notes[0].startswith(f"gap at OKX.ws.1.0:{at + 2}: {symbol}: the line is cut short")
    assert notes[1] == f"no snapshot: {symbol} skipped {skipped} records to the end"
    assert notes[2].startswith(f"unreadable line at OKX.ws.1.0:{at + 1}: not JSON")


def test_newer_messages_must_continue_their_seq_ids():
    def message(action: str, bid: str, prev: int, seq: int) -> str:
        crc = okx.okx_checksum([f"1.0:{bid}"], ["2.0:1"])
        return (
            f'1.0: {{"arg":{{"channel":"books","instId":"X-Y"}},"action":"{action}","data":[{{'
            f'"asks":[["2.0","1","0","1"]],"bids":[["1.0","{bid}","0","1"]],"ts":"1","checksum":{crc},'
            f'"prevSeqId":{prev},"seqId":{seq}}}]}}'
        )

    good = [message("snapshot", "1", -1, 10), message("update", "2", 10, 12)]
    assert verify(okx.read(good)).by_kind() == {"okx checksum": (2, 2)}
    with pytest.raises(FormatError, match=r"okx:2: X-Y: prevSeqId 11 != the last seqId 10"):
        list(okx.read([good[0], message("update", "2", 11, 12)]))


def test_the_instruments_file_can_be_named(tmp_path):
    alone = tmp_path / "okx-capture.txt"
    alone.write_bytes(CAPTURE.read_bytes())
    out = orderbook("verify", str(alone), "--instruments", str(INSTRUMENTS))
    assert out.returncode == 0, out.stderr
    assert "total okx checksum: 290 of 290 match" in out.stdout
    out = orderbook("verify", str(alone), "--instruments", str(tmp_path / "missing.0"))
    assert out.returncode == 1 and "missing.0: no such instruments file" in out.stderr
