"""Several files of one capture (cryptofeed's rotation: `KRAKEN.ws.50.0`,
`.1`, ...) read in the order given as one stream: the same checks, matches
and final books as the whole file, errors naming each part's own file and
line, a mix of formats refused, and the books carried through a real node."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from orderbook.replay.files import open_records
from orderbook.replay.records import FormatError
from orderbook.replay.verify import Verifier

from .harness import FEED_TOKEN, ROOT, start_server_process
from .test_read_cryptofeed_legacy import derive
from .test_recording import model_stream

pytestmark = pytest.mark.timeout(180)

KRAKEN = "kraken-book-2021-04-17/KRAKEN.ws.50.0"
COINBASE = "coinbase-level2-2021-04-17/COINBASE.ws.28.0"
SAMPLES = Path(__file__).parent / "data" / "cryptofeed-sample-data"


def orderbook(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    quiet = ("--no-progress",) if args[0] in ("verify", "replay") else ()
    return subprocess.run(
        [sys.executable, "-m", "orderbook.cli", *args, *quiet],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def split(path: Path, folder: Path, parts: int = 3, stem: str | None = None) -> list[Path]:
    """`path` cut at line boundaries into `parts` files named as cryptofeed rotates them."""
    lines = path.read_text().splitlines(keepends=True)
    stem = stem or path.name.rpartition(".")[0]
    cuts = [len(lines) * i // parts for i in range(parts + 1)]
    out = []
    for i in range(parts):
        part = folder / f"{stem}.{i}"
        part.write_text("".join(lines[cuts[i] : cuts[i + 1]]))
        out.append(part)
    return out


def verified(records) -> Verifier:
    v = Verifier()
    for record in records:
        v.feed(record)
    return v


def summary(v: Verifier) -> tuple:
    """Everything a verify report and the final books say."""
    r = v.report
    per_symbol = {s: (x.checks, x.matched, x.records, x.level_changes) for s, x in r.symbols.items()}
    books = {s: (v.book(s).bids(), v.book(s).asks()) for s in v.market.symbols()}
    return r.records, r.by_kind(), r.notes, per_symbol, books, r.ok


def report_body(stdout: str) -> list[str]:
    # Everything after the heading, which names the files and the time taken.
    return stdout.splitlines()[1:]


@pytest.fixture
def kraken_parts(shared_data, tmp_path) -> list[Path]:
    return split(shared_data / KRAKEN, tmp_path)


# ----------------------------------------------------------------------------- library


def test_parts_verify_exactly_as_the_whole_capture(shared_data, kraken_parts):
    whole = verified(open_records(shared_data / KRAKEN, "kraken"))
    parts = verified(open_records(kraken_parts, "auto"))
    assert summary(parts) == summary(whole)
    assert parts.report.by_kind() == {"checksum": (4269, 4269)} and parts.report.ok


def test_an_error_in_a_later_part_names_that_part_and_its_own_line(kraken_parts):
    last = kraken_parts[2]
    lines = last.read_text().splitlines(keepends=True)
    lines[6] = lines[6].partition(": ")[0] + ": [1, garbage\n"  # line 7 of part 2
    last.write_text("".join(lines))
    with pytest.raises(FormatError) as caught:
        verified(open_records(kraken_parts, "kraken"))
    assert caught.value.where == f"{last.name}:7"
    out = orderbook("verify", *map(str, kraken_parts))
    assert out.returncode == 1
    assert f"orderbook verify: {last.name}:7: not JSON" in out.stderr


def test_a_later_part_alone_has_no_snapshot(kraken_parts):
    """Read alone, the second part is what it always was: updates with no
    snapshot before them, an error naming its first book line."""
    second = kraken_parts[1]
    with pytest.raises(FormatError, match=r"update before its snapshot") as caught:
        verified(open_records(second, "kraken"))
    assert re.fullmatch(rf"{re.escape(second.name)}:\d+", caught.value.where)
    # A rotated part shows no venue: its format must be given.
    out = orderbook("verify", str(second))
    assert out.returncode == 2 and "pass --format" in out.stderr
    out = orderbook("verify", str(second), "--format", "kraken")
    assert out.returncode == 1 and f"{second.name}:" in out.stderr and "update before its snapshot" in out.stderr


def test_files_of_the_same_name_are_named_by_their_paths(shared_data, tmp_path):
    # A year of captures: every day's folder holds a KRAKEN.ws.50.0.
    days = [tmp_path / "day1", tmp_path / "day2"]
    for day in days:
        day.mkdir()
    first = split(shared_data / KRAKEN, days[0], parts=2)[0]
    second = days[1] / first.name
    second.write_text("1618678070.1: [1, garbage\n")
    with pytest.raises(FormatError) as caught:
        verified(open_records([first, second], "kraken"))
    assert caught.value.where == f"{second}:1"


def test_a_mix_of_formats_is_refused_naming_the_file(shared_data, kraken_parts):
    coinbase = shared_data / COINBASE
    with pytest.raises(FormatError) as caught:
        open_records([kraken_parts[0], coinbase], "auto")
    assert caught.value.where == str(coinbase)
    out = orderbook("verify", str(kraken_parts[0]), str(coinbase))
    assert out.returncode == 2
    assert f"{coinbase}: this is a coinbase file, but {kraken_parts[0].name} is kraken" in out.stderr
    out = orderbook("replay", str(kraken_parts[0]), str(coinbase), "--format", "kraken", "--feed-token", "x")
    assert out.returncode == 2
    assert f"{coinbase}: this is a coinbase file, but --format kraken" in out.stderr


def test_binance_older_layout_parts_verify_as_the_whole(shared_data, tmp_path):
    whole = derive(shared_data, "2021-04-17", tmp_path)
    parts_dir = tmp_path / "parts"
    parts_dir.mkdir()
    parts = split(whole, parts_dir, stem="BINANCE-3f2a1c")
    assert summary(verified(open_records(parts, "auto"))) == summary(verified(open_records(whole, "auto")))


def test_okx_parts_verify_as_the_whole(tmp_path):
    parts = split(SAMPLES / "OKX.ws.1.0", tmp_path)
    shutil.copy(SAMPLES / "OKX.0", tmp_path / "OKX.0")  # the instruments, beside the first part
    parts_v = verified(open_records(parts, "okx"))
    assert summary(parts_v) == summary(verified(open_records(SAMPLES / "OKX.ws.1.0", "okx")))
    assert parts_v.report.ok and [checked for checked, _ in parts_v.report.by_kind().values()] == [290]


def test_recordings_are_read_one_after_another(tmp_path):
    first, second = tmp_path / "a.rec", tmp_path / "b.rec"
    first.write_bytes(model_stream(20)[0])
    second.write_bytes(model_stream(30)[0])
    # Each file is read whole, as a later header in one file starts another
    # recording: the books, checks and notes of the two files concatenated
    # (which define the symbol once, not once a file).
    joined = tmp_path / "joined.rec"
    joined.write_bytes(first.read_bytes() + second.read_bytes())
    chained = verified(open_records([first, second], "auto"))
    assert summary(chained)[1:] == summary(verified(open_records(joined, "recording")))[1:]
    assert chained.report.ok and chained.report.by_kind() == {"checksum": (52, 52), "book": (2, 2)}


def test_formats_with_reference_files_refuse_several(shared_data, tmp_path):
    lobster = shared_data / "lobster-2012-06-21/aapl-l10-first999"
    with pytest.raises(FormatError, match="several lobster files are not read as one stream"):
        open_records([lobster, lobster], "auto")
    session = shared_data / "binance-depth-2021/2021-04-17"
    with pytest.raises(FormatError, match=r"\*\.http\.\*"):
        open_records([session / "BINANCE.ws.1.0", session / "BINANCE.ws.1.0"], "binance")


def test_daily_tardis_files_chain_each_with_its_own_header(shared_data, tmp_path):
    # The shared day opens with its snapshot; a next "day" holds changes only.
    day1 = shared_data / "tardis-deribit-2020-04-01/deribit_incremental_book_L2_BTC-PERPETUAL.csv"
    header, *rows = day1.read_text().splitlines(keepends=True)
    later = [
        "deribit,BTC-PERPETUAL,1585785600100000,1585785600200000,false,ask,6421.5,0\n",
        "deribit,BTC-PERPETUAL,1585785600300000,1585785600400000,false,bid,6400,2500\n",
    ]
    day2 = tmp_path / "day2.csv"
    day2.write_text(header + "".join(later))
    joined = tmp_path / "joined.csv"
    joined.write_text(header + "".join(rows) + "".join(later))
    assert summary(verified(open_records([day1, day2], "auto"))) == summary(verified(open_records(joined, "tardis")))
    # A bad row of the second file is named by that file and its own line.
    bad = tmp_path / "bad.csv"
    bad.write_text(header + later[0] + "deribit,BTC-PERPETUAL,1585785600300000,x,false,bid,6400,2500\n")
    with pytest.raises(FormatError, match=r"^bad\.csv:3: "):
        list(open_records([day1, bad], "auto"))


# ----------------------------------------------------------------------------- the commands


def test_verify_command_over_parts_reports_the_whole(shared_data, kraken_parts):
    whole = orderbook("verify", str(shared_data / KRAKEN))
    parts = orderbook("verify", *map(str, kraken_parts))
    assert parts.returncode == 0, parts.stdout + parts.stderr
    assert report_body(parts.stdout) == report_body(whole.stdout)
    assert "(3 files, kraken, offline): 4279 records" in parts.stdout
    assert "OK: 4269 of 4269 references match over 4279 records" in parts.stdout


def book_json(http: str, symbol: str) -> dict:
    with urllib.request.urlopen(f"{http}/book/{urllib.parse.quote(symbol, safe='')}?depth=0", timeout=5) as r:
        return json.load(r)


def served_books_are(http: str, expected: Verifier) -> bool:
    for symbol in expected.market.symbols():
        inst = expected.market.get(symbol).instrument
        book = expected.book(symbol)
        try:
            served = book_json(http, symbol)
        except urllib.error.HTTPError:
            return False  # not defined yet
        if served["bids"] != [[inst.format_price(p), inst.format_size(s)] for p, s in book.bids()]:
            return False
        if served["asks"] != [[inst.format_price(p), inst.format_size(s)] for p, s in book.asks()]:
            return False
    return True


def test_parts_through_a_node(shared_data, kraken_parts, tmp_path):
    """End to end: verify --server over the parts meets every Kraken checksum
    in the node's own deltas; replay and serve --replay end with the whole
    capture's books."""
    expected = verified(open_records(shared_data / KRAKEN, "kraken"))
    files = list(map(str, kraken_parts))
    node = start_server_process(tmp_path, "--feed-token", FEED_TOKEN, "--no-simulator")
    try:
        out = orderbook("verify", *files, "--server", node.http, "--feed-token", FEED_TOKEN)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "total server checksum: 4269 of 4269 match" in out.stdout
    finally:
        node.stop()
    node = start_server_process(tmp_path, "--feed-token", FEED_TOKEN, "--no-simulator")
    try:
        out = orderbook("replay", *files, "--url", node.http, "--feed-token", FEED_TOKEN, "--speed", "max")
        assert out.returncode == 0, out.stderr
        assert "4279 records" in out.stdout
        assert served_books_are(node.http, expected)
    finally:
        node.stop()
    node = start_server_process(tmp_path, "--replay", *files, "--speed", "max")
    try:
        deadline = time.monotonic() + 30
        while not served_books_are(node.http, expected):
            assert time.monotonic() < deadline, "serve --replay did not reach the capture's final books"
            time.sleep(0.05)
    finally:
        node.stop()
