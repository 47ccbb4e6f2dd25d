"""The replay commands as a user runs them: `orderbook verify`, `orderbook
replay` into a running node, and `orderbook serve --replay`, checked through
the JSON endpoint and `orderbook watch`."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from orderbook.replay.files import open_records
from orderbook.replay.verify import Verifier

from .harness import FEED_TOKEN, ROOT, start_server_process

pytestmark = pytest.mark.timeout(180)

KRAKEN = "kraken-book-2021-04-17/KRAKEN.ws.50.0"


def orderbook(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "orderbook.cli", *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )


def final_books(path: Path, fmt: str) -> Verifier:
    v = Verifier()
    for record in open_records(path, fmt):
        v.feed(record)
    return v


def book_json(http: str, symbol: str) -> dict:
    with urllib.request.urlopen(f"{http}/book/{urllib.parse.quote(symbol, safe='')}?depth=0", timeout=5) as r:
        return json.load(r)


def same_book(served: dict, expected: Verifier, symbol: str) -> bool:
    inst = expected.market.get(symbol).instrument
    book = expected.book(symbol)
    return served["bids"] == [[inst.format_price(p), inst.format_size(s)] for p, s in book.bids()] and served[
        "asks"
    ] == [[inst.format_price(p), inst.format_size(s)] for p, s in book.asks()]


def test_verify_command_reports_every_match(shared_data):
    out = orderbook("verify", str(shared_data / KRAKEN))
    assert out.returncode == 0, out.stderr
    assert "total checksum: 4269 of 4269 match" in out.stdout
    assert "OK: 4269 of 4269 references match" in out.stdout


def test_verify_command_fails_on_a_tampered_capture(shared_data, tmp_path):
    lines = (shared_data / KRAKEN).read_text().splitlines(keepends=True)[:400]
    # Change one checksum digit in the 300th line that carries one.
    at = [i for i, line in enumerate(lines) if '"c":"' in line][300]
    head, _, tail = lines[at].partition('"c":"')
    value, _, tail = tail.partition('"')
    lines[at] = f'{head}"c":"{int(value) ^ 1}"{tail}'
    bad = tmp_path / "KRAKEN.ws.tampered"
    bad.write_text("".join(lines))
    out = orderbook("verify", str(bad), "--format", "kraken")
    assert out.returncode == 1
    assert "MISMATCH" in out.stdout and "FAILED" in out.stdout


def test_verify_command_bad_input_is_a_clear_error(shared_data, tmp_path):
    out = orderbook("verify", str(tmp_path / "missing.csv"), "--format", "tardis")
    assert out.returncode == 2 and "no such file" in out.stderr
    out = orderbook("verify", str(shared_data / KRAKEN), "--format", "kraken", "--snapshots", "x")
    assert out.returncode == 2 and "--snapshots does not apply to the kraken format" in out.stderr
    junk = tmp_path / "junk.txt"
    junk.write_text("hello\n")
    out = orderbook("verify", str(junk))
    assert out.returncode == 2 and "pass --format" in out.stderr


def test_replay_into_a_running_node_then_watch(shared_data, tmp_path):
    node = start_server_process(tmp_path, "--feed-token", FEED_TOKEN)  # simulator on, as `make run`
    try:
        out = orderbook(
            "replay", str(shared_data / KRAKEN), "--url", node.http, "--feed-token", FEED_TOKEN, "--speed", "max"
        )
        assert out.returncode == 0, out.stderr
        assert "4279 records" in out.stdout
        expected = final_books(shared_data / KRAKEN, "kraken")
        for symbol in expected.market.symbols():
            assert same_book(book_json(node.http, symbol), expected, symbol), symbol
        watch = orderbook("watch", "XBT/CHF", "--url", node.url, "--once", timeout=30)
        assert watch.returncode == 0, watch.stderr
        best_bid = expected.market.get("XBT/CHF").instrument.format_price(expected.book("XBT/CHF").best_bid()[0])
        assert best_bid in watch.stdout
    finally:
        node.stop()


def test_replay_refused_without_the_feed_token(shared_data, tmp_path):
    node = start_server_process(tmp_path, "--feed-token", FEED_TOKEN, "--no-simulator")
    try:
        out = orderbook("replay", str(shared_data / KRAKEN), "--url", node.http, "--feed-token", "wrong")
        assert out.returncode == 1
        assert "401" in out.stderr
    finally:
        node.stop()


def test_serve_replay_serves_the_recording(shared_data, tmp_path):
    path = shared_data / "lobster-2012-06-21/aapl-l10-first999"
    node = start_server_process(tmp_path, "--replay", str(path), "--speed", "max")
    try:
        expected = final_books(path, "lobster")
        served = {}

        def done() -> bool:
            served["AAPL"] = book_json(node.http, "AAPL")
            return same_book(served["AAPL"], expected, "AAPL")

        import time

        deadline = time.monotonic() + 30
        while not done():
            assert time.monotonic() < deadline, served
            time.sleep(0.05)
        # The simulator is off while a recording is served.
        with urllib.request.urlopen(node.http + "/symbols", timeout=5) as r:
            assert [s["symbol"] if isinstance(s, dict) else s for s in json.load(r)["symbols"]] == ["AAPL"]
    finally:
        node.stop()


def test_end_to_end_verify_command(shared_data, tmp_path):
    node = start_server_process(tmp_path, "--feed-token", FEED_TOKEN, "--no-simulator")
    try:
        out = orderbook("verify", str(shared_data / KRAKEN), "--server", node.http, "--feed-token", FEED_TOKEN)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "total server checksum: 4269 of 4269 match" in out.stdout
    finally:
        node.stop()


def test_verify_every_shared_dataset(shared_data):
    """`orderbook verify` passes on every recording in the shared folder, each
    with the count its README gives (Tardis carries no references)."""
    expected = {
        "kraken-book-2021-04-17/KRAKEN.ws.50.0": "total checksum: 4269 of 4269 match",
        "coinbase-level2-2021-04-17/COINBASE.ws.28.0": "total best bid/ask: 97 of 97 match",
        "binance-depth-2021/2021-04-17": "total best bid/ask: 199 of 199 match",
        "binance-depth-2021/2021-08-14": "total best bid/ask: 96 of 96 match",
        "binance-depth-2021/2021-10-12": "total best bid/ask: 26 of 26 match",
        "lobster-2012-06-21/aapl-l10-first999": "total book: 999 of 999 match",
        "lobster-2012-06-21/amzn-l1-fullday": "total book: 57515 of 57515 match",
        "tardis-deribit-2020-04-01/deribit_incremental_book_L2_BTC-PERPETUAL.csv": "the format carries no references",
    }
    for rel, line in expected.items():
        out = orderbook("verify", str(shared_data / rel))  # the format is recognised by itself
        assert out.returncode == 0, (rel, out.stdout[-2000:], out.stderr)
        assert line in out.stdout, (rel, out.stdout[-2000:])


def test_record_verify_replay_commands(tmp_path):
    """record a live node, verify the file, replay it into a second node: the
    second node ends with the books the recording ends with."""
    live = start_server_process(tmp_path, "--simulator-rate", "400", "--seed", "7")
    quiet = start_server_process(tmp_path, "--feed-token", FEED_TOKEN, "--no-simulator")
    try:
        rec = tmp_path / "live.rec.gz"
        out = orderbook("record", "AAPL", "BTC-USD", "--url", live.url, "--out", str(rec), "--count", "300", timeout=60)
        assert out.returncode == 0, out.stderr
        check = orderbook("verify", str(rec))
        assert check.returncode == 0, check.stdout + check.stderr
        assert "(recording, offline)" in check.stdout and "OK:" in check.stdout
        out = orderbook("replay", str(rec), "--url", quiet.http, "--feed-token", FEED_TOKEN, "--speed", "max")
        assert out.returncode == 0, out.stderr
        expected = final_books(rec, "recording")
        for symbol in ("AAPL", "BTC-USD"):
            assert same_book(book_json(quiet.http, symbol), expected, symbol), symbol
        # A recorder killed mid-write leaves a cut file: the complete part still verifies.
        cut = tmp_path / "cut.rec.gz"
        cut.write_bytes(rec.read_bytes()[: rec.stat().st_size * 2 // 3])
        check = orderbook("verify", str(cut))
        assert check.returncode == 0, check.stdout + check.stderr
        assert "complete entries are checked" in check.stderr
    finally:
        live.stop()
        quiet.stop()


def test_replay_loop_and_window_through_a_node(shared_data, tmp_path):
    from orderbook.replay.window import parse_time, within

    path = shared_data / KRAKEN
    node = start_server_process(tmp_path, "--feed-token", FEED_TOKEN, "--no-simulator")
    try:
        # Two laps: each restarts from the capture's snapshots, so the node
        # ends with the capture's final books, not a mix of two laps.
        out = orderbook(
            "replay",
            str(path),
            "--url",
            node.http,
            "--feed-token",
            FEED_TOKEN,
            "--speed",
            "max",
            "--loop",
            "--laps",
            "2",
        )
        assert out.returncode == 0, out.stderr
        assert "8558 records" in out.stdout and "2 lap(s)" in out.stdout
        expected = final_books(path, "kraken")
        for symbol in expected.market.symbols():
            assert same_book(book_json(node.http, symbol), expected, symbol), symbol
        # A window ending 10 s in: the node holds the books as they stood then.
        out = orderbook(
            "replay",
            str(path),
            "--url",
            node.http,
            "--feed-token",
            FEED_TOKEN,
            "--speed",
            "max",
            "--start",
            "+5s",
            "--end",
            "+10s",
        )
        assert out.returncode == 0, out.stderr
        windowed = Verifier()
        for record in within(open_records(path, "kraken"), parse_time("+5s"), parse_time("+10s")):
            windowed.feed(record)
        assert windowed.report.records < 4279
        for symbol in windowed.market.symbols():
            assert same_book(book_json(node.http, symbol), windowed, symbol), symbol
        assert any(windowed.book(s) != expected.book(s) for s in expected.market.symbols())
    finally:
        node.stop()
