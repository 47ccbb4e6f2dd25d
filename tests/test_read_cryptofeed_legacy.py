"""cryptofeed's older raw layout: one file per connection (`<EXCHANGE>-<6 hex>.<n>`),
an optional configuration line, REST responses inline. The Binance sessions
rewritten in that layout give the same checkpoints and books as the originals;
damaged input is named by file, line and symbol, and `gaps` decides whether it
stops the read or skips the symbol to its next snapshot."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from orderbook.core.units import format_units
from orderbook.replay.files import detect_format, open_records
from orderbook.replay.formats import binance
from orderbook.replay.records import BestPrices, FormatError, Record
from orderbook.replay.verify import Verifier

from .harness import ROOT

pytestmark = pytest.mark.timeout(120)

SESSIONS = {"2021-04-17": 199, "2021-08-14": 96, "2021-10-12": 26}
SYM = "FTMUSDT"
# What the older recorder wrote first: its configuration, naming more venues than the file's.
CONFIG = (
    'configuration: {"log": {"filename": "feedhandler.log", "level": "WARNING"}, "uvloop": true, '
    '"rest": {"binance.com": "https://api.binance.com", "kraken.com": "https://api.kraken.com"}}\n'
)


# ----------------------------------------------------------------------------- deriving the older layout


def _ts(line: str) -> float:
    """The receive time of a capture line (REST: after the arrow)."""
    head = line.partition(": ")[0]
    return float(head.rpartition(" -> ")[2] if " -> " in head else head)


def older_layout(ws_lines: list[str], http_lines: list[str]) -> list[str]:
    """The lines the older recorder would have written for one session: each
    REST response inline, where its receive time puts it but never before its
    symbol's first depth event (it was fetched when that event came in)."""
    first_depth: dict[str, int] = {}
    for i, line in enumerate(ws_lines):
        if "depthUpdate" in line:
            first_depth.setdefault(json.loads(line.partition(": ")[2])["data"]["s"], i)
    inserts: dict[int, list[str]] = {}
    for rest in (line for line in http_lines if line.strip()):
        symbol = re.search(r"symbol=(\w+)", rest)[1]
        at = first_depth[symbol] + 1
        while at < len(ws_lines) and ws_lines[at].strip() and _ts(ws_lines[at]) <= _ts(rest):
            at += 1
        inserts.setdefault(at, []).append(rest if rest.endswith("\n") else rest + "\n")
    out: list[str] = []
    for i, line in enumerate(ws_lines):
        out.extend(inserts.get(i, []))
        out.append(line)
    out.extend(inserts.get(len(ws_lines), []))
    return out


def derive(shared_data: Path, name: str, folder: Path, *, config: bool = True) -> Path:
    session = shared_data / "binance-depth-2021" / name
    ws_lines = (session / "BINANCE.ws.1.0").read_text().splitlines(keepends=True)
    http_lines = (session / "BINANCE.http.0.0").read_text().splitlines(keepends=True)
    lines = older_layout(ws_lines, http_lines)
    assert sum(" -> " in line for line in lines) == len([h for h in http_lines if h.strip()])
    path = folder / "BINANCE-3f2a1c.0"
    path.write_text((CONFIG if config else "") + "".join(lines) + "\n")  # the recorder may leave a blank line
    return path


def replayed(records) -> tuple[Verifier, list[tuple[str, object]]]:
    """The verifier after every record, and every reference checked, in order."""
    v = Verifier()
    refs = []
    for record in records:
        v.feed(record)
        refs.extend((record.note, ref) for ref in record.checks)
    return v, refs


def books(v: Verifier) -> dict[str, tuple[list, list]]:
    return {s: (v.book(s).bids(), v.book(s).asks()) for s in v.market.symbols()}


# ----------------------------------------------------------------------------- the real sessions


@pytest.mark.parametrize("name", sorted(SESSIONS))
def test_older_layout_gives_the_same_checkpoints_and_books(shared_data, tmp_path, name):
    derived = derive(shared_data, name, tmp_path)
    assert detect_format(derived) == "binance"
    original, original_refs = replayed(open_records(shared_data / "binance-depth-2021" / name, "binance"))
    older, older_refs = replayed(open_records(derived, "auto"))
    assert older.report.ok, "\n".join(older.report.lines())
    assert older.report.by_kind() == {"best bid/ask": (SESSIONS[name], SESSIONS[name])}
    # The same references, in the same order, each met by the same book.
    assert older_refs == original_refs
    assert books(older) == books(original)
    assert older.report.notes == original.report.notes
    per_symbol = {s: (r.checks, r.matched, r.records, r.level_changes) for s, r in older.report.symbols.items()}
    assert per_symbol == {
        s: (r.checks, r.matched, r.records, r.level_changes) for s, r in original.report.symbols.items()
    }


def test_snapshots_beside_an_older_layout_capture_are_not_used(shared_data, tmp_path):
    # The layout is told by the content: another session's REST file beside it changes nothing.
    derived = derive(shared_data, "2021-10-12", tmp_path)
    other = shared_data / "binance-depth-2021" / "2021-08-14" / "BINANCE.http.0.0"
    (tmp_path / "BINANCE.http.0.0").write_bytes(other.read_bytes())
    v, _ = replayed(open_records(derived, "auto"))
    assert v.report.ok and v.report.by_kind() == {"best bid/ask": (26, 26)}


def orderbook(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "orderbook.cli", *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )


def test_verify_command_reads_the_older_layout_without_flags(shared_data, tmp_path):
    derived = derive(shared_data, "2021-04-17", tmp_path)
    out = orderbook("verify", str(derived), "--no-progress")
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"{derived} (binance, offline)" in out.stdout
    assert "total best bid/ask: 199 of 199 match" in out.stdout
    assert "OK: 199 of 199 references match" in out.stdout
    assert "SWRVBUSD" in out.stdout and "best bid/ask 57/57" in out.stdout


@pytest.mark.parametrize(
    "rel, line",
    [
        ("kraken-book-2021-04-17/KRAKEN.ws.50.0", "total checksum: 4269 of 4269 match"),
        ("coinbase-level2-2021-04-17/COINBASE.ws.28.0", "total best bid/ask: 97 of 97 match"),
    ],
)
def test_kraken_and_coinbase_connection_files_with_a_configuration_line(shared_data, tmp_path, rel, line):
    # One connection was always one file for these venues; only the name and the first line differ.
    source = shared_data / rel
    venue = source.name.split(".")[0]
    older = tmp_path / f"{venue}-a1b2c3.0"
    older.write_text(CONFIG + source.read_text())
    assert detect_format(older) == venue.lower()
    out = orderbook("verify", str(older), "--no-progress")
    assert out.returncode == 0, out.stdout + out.stderr
    assert line in out.stdout and f"({venue.lower()}, offline)" in out.stdout


# ----------------------------------------------------------------------------- hand-cut cases


def px(ticks: int) -> str:
    return format_units(ticks, 8)


def depth(t: str, first: int, final: int, bids=(), asks=()) -> str:
    data = {"e": "depthUpdate", "E": 1_600_000_000_000 + final, "s": SYM, "U": first, "u": final}
    data |= {"b": [[px(p), px(q)] for p, q in bids], "a": [[px(p), px(q)] for p, q in asks]}
    return f"{t}: {json.dumps({'stream': 'ftmusdt@depth@100ms', 'data': data}, separators=(',', ':'))}\n"


def ticker(t: str, u: int, bid: tuple[int, int], ask: tuple[int, int]) -> str:
    data = {"u": u, "s": SYM, "b": px(bid[0]), "B": px(bid[1]), "a": px(ask[0]), "A": px(ask[1])}
    return f"{t}: {json.dumps({'stream': 'ftmusdt@bookTicker', 'data': data}, separators=(',', ':'))}\n"


def rest(t: str, body: dict) -> str:
    # The older recorder's URL: v1, the symbol only in the query string.
    return f"https://www.binance.com/api/v1/depth?symbol={SYM}&limit=1000 -> {t}: {json.dumps(body)}\n"


def snapshot(t: str, last_id: int, bids=(), asks=()) -> str:
    levels = {"bids": [[px(p), px(q), []] for p, q in bids], "asks": [[px(p), px(q), []] for p, q in asks]}
    return rest(t, {"lastUpdateId": last_id, **levels})


OPEN = "wss://stream.binance.com:9443/stream?streams=ftmusdt@depth@100ms/ftmusdt@bookTicker <-> 100.0\n"
SENT = 'wss://stream.binance.com:9443/stream <- 100.01: {"method":"SUBSCRIBE","id":1}\n'
ERROR_BODY = {"code": -1121, "msg": "Invalid symbol."}


def session(*middle: str) -> list[str]:
    """A connection: diffs 101..103 before the lazily fetched snapshot (100),
    then whatever `middle` holds, then a later snapshot (200) and a diff and
    bookTicker after it."""
    return [
        CONFIG,
        OPEN,
        SENT,
        depth("100.1", 95, 100, bids=[(10, 7)]),  # already in the snapshot: stale
        depth("100.2", 101, 101, bids=[(11, 2)]),
        ticker("100.25", 101, (11, 2), (20, 1)),
        rest("100.3", {"lastUpdateId": 100, "bids": [[px(10), px(1), []]], "asks": [[px(20), px(1), []]]}),
        depth("100.4", 102, 103, asks=[(21, 4)]),
        *middle,
        snapshot("102.0", 200, bids=[(15, 2)], asks=[(20, 1)]),
        depth("102.1", 201, 201, bids=[(16, 1)]),
        ticker("102.2", 201, (16, 1), (20, 1)),
        "\n",
    ]


def notes(records: list[Record]) -> list[str]:
    return [r.note for r in records if r.note]


def test_snapshot_after_the_first_events_buffers_them():
    records = list(binance.read(session(), source="BINANCE-3f2a1c.0"))
    v, refs = replayed(records)
    assert notes(records) == [binance.STALE]  # 95-100, buffered, is older than the snapshot
    assert [ref for _, ref in refs] == [BestPrices(SYM, (11, 2), (20, 1)), BestPrices(SYM, (16, 1), (20, 1))]
    assert v.report.ok and v.report.by_kind() == {"best bid/ask": (2, 2)}
    assert books(v) == {SYM: ([(16, 1), (15, 2)], [(20, 1)])}
    # The buffered diffs go out at the snapshot's time, never before it.
    assert [r.time_ns for r in records if r.updates][:3] == [100_300_000_000] * 2 + [100_400_000_000]


def test_trailing_blank_lines_and_a_last_line_without_a_break_are_fine():
    lines = session()
    lines[-1] = "\n\n\r\n"
    lines.append(depth("102.3", 202, 202, bids=[(16, 0)]).rstrip("\n"))
    v, _ = replayed(binance.read(lines, source="BINANCE-3f2a1c.0"))
    assert v.report.ok and books(v) == {SYM: ([(15, 2)], [(20, 1)])}


# Each: (lines in place of the middle, or a replacement of the whole; the 1-based line named; what it says)
CUT = depth("101.0", 104, 104, bids=[(12, 1)])[:60]  # a recorder stopped mid-write: the file's last line
BAD_CASES = {
    "not JSON": (
        ['101.0: {"stream":"ftmusdt@depth@100ms","data":{"e":"depthUpdate" oops}\n'],
        9,
        "FTMUSDT: not JSON",
    ),
    "not a capture line": (["<html>502 Bad Gateway</html>\n"], 9, "not a capture line"),
    "REST error body": ([rest("101.0", ERROR_BODY)], 9, "FTMUSDT: not a depth snapshot but an error: code -1121"),
    "update ids break": ([depth("101.0", 105, 105, bids=[(12, 1)])], 9, "FTMUSDT: update ids break: U=105"),
}


def bad_session(case: str) -> list[str]:
    middle, _, _ = BAD_CASES[case]
    return session(*middle)


def records_until_error(lines: list[str], **options) -> tuple[list[Record], FormatError]:
    records: list[Record] = []
    with pytest.raises(FormatError) as err:
        for record in binance.read(lines, source="BINANCE-3f2a1c.0", **options):
            records.append(record)
    return records, err.value


@pytest.mark.parametrize("case", sorted(set(BAD_CASES) - {"update ids break"}))
def test_bad_input_is_one_line_naming_file_line_and_symbol(case):
    _, lineno, what = BAD_CASES[case]
    records, err = records_until_error(bad_session(case))
    message = str(err)
    assert "\n" not in message
    assert message.startswith(f"BINANCE-3f2a1c.0:{lineno}: ")
    assert what in message
    if case == "not a capture line":
        assert "symbol unknown" in message
    # Nothing of the bad line was applied: the book is the one before it.
    v, _ = replayed(records)
    assert books(v) == {SYM: ([(11, 2), (10, 1)], [(20, 1), (21, 4)])}


def test_truncated_last_line_names_the_symbol_and_applies_nothing():
    lines = [*session()[:-4], CUT]
    records, err = records_until_error(lines)
    assert str(err).startswith("BINANCE-3f2a1c.0:9: FTMUSDT: cut short, the file ends mid-message")
    v, _ = replayed(records)
    assert books(v) == {SYM: ([(11, 2), (10, 1)], [(20, 1), (21, 4)])}


def test_gaps_error_stops_at_a_break_in_the_update_ids():
    lines = bad_session("update ids break")
    assert notes(list(binance.read(lines))).count(binance.GAP) == 1  # the default resyncs, as Binance documents
    records, err = records_until_error(lines, gaps="error")
    assert str(err).startswith("BINANCE-3f2a1c.0:9: FTMUSDT: update ids break: U=105 u=105, expected U == 104")
    v, _ = replayed(records)
    assert books(v) == {SYM: ([(11, 2), (10, 1)], [(20, 1), (21, 4)])}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_gaps_resync_skips_the_symbol_to_its_next_snapshot(case):
    lines = bad_session(case)
    # A later diff while the symbol waits: skipped too (it is older than the next snapshot).
    lines.insert(9, depth("101.5", 104, 104, bids=[(13, 1)]))
    records = list(binance.read(lines, source="BINANCE-3f2a1c.0", gaps="resync"))
    v, refs = replayed(records)
    if case == "not a capture line":
        # Nothing names a symbol; the id chain still holds, so the symbol carries on.
        assert notes(records).count(binance.UNREADABLE) == 1 and binance.GAP not in notes(records)
        return
    waiting = next(i for i, r in enumerate(records) if r.note == binance.GAP)
    resync = next(i for i, r in enumerate(records) if r.updates and r.updates[0].replace and i > waiting)
    # Between the gap and the snapshot nothing touches the book.
    assert not any(r.updates for r in records[waiting:resync])
    skipped = {"update ids break": 2, "not JSON": 2, "REST error body": 2}[case]
    assert f"resync: {SYM} skipped {skipped} records" in notes(records)
    assert v.report.ok and books(v) == {SYM: ([(16, 1), (15, 2)], [(20, 1)])}
    assert [ref for _, ref in refs][-1] == BestPrices(SYM, (16, 1), (20, 1))


def test_gaps_resync_after_a_truncated_last_line_says_the_symbol_never_resynced():
    records = list(binance.read([*session()[:-4], CUT], gaps="resync"))
    assert notes(records)[-2:] == [binance.GAP, f"{binance.NO_SNAPSHOT}: {SYM} skipped 1 record to the end"]
    v, _ = replayed(records)
    assert books(v) == {SYM: ([(11, 2), (10, 1)], [(20, 1), (21, 4)])}


def test_gaps_option_is_checked_at_once():
    with pytest.raises(ValueError, match="gaps must be"):
        binance.read([], gaps="ignore")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- the command line


def test_verify_command_on_bad_input_follows_gaps(tmp_path):
    path = tmp_path / "BINANCE-3f2a1c.0"
    path.write_text("".join(bad_session("REST error body")))
    out = orderbook("verify", str(path), "--no-progress")
    assert out.returncode == 1
    [line] = [x for x in out.stderr.splitlines() if x.strip()]
    assert "BINANCE-3f2a1c.0:9: FTMUSDT: not a depth snapshot but an error: code -1121, 'Invalid symbol.'" in line
    out = orderbook("verify", str(path), "--no-progress", "--gaps", "resync")
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"resync: {SYM} skipped 1 record x1" in out.stdout
    assert "gap x1" in out.stdout and "OK: 2 of 2 references match" in out.stdout
    path.write_text("".join(bad_session("update ids break")))
    out = orderbook("verify", str(path), "--no-progress", "--gaps", "error")
    assert out.returncode == 1 and "BINANCE-3f2a1c.0:9: FTMUSDT: update ids break" in out.stderr


def test_end_to_end_verify_of_the_older_layout(shared_data, tmp_path):
    from .harness import FEED_TOKEN, start_server_process

    derived = derive(shared_data, "2021-10-12", tmp_path)
    node = start_server_process(tmp_path, "--feed-token", FEED_TOKEN, "--no-simulator")
    try:
        out = orderbook("verify", str(derived), "--server", node.http, "--feed-token", FEED_TOKEN, "--no-progress")
        assert out.returncode == 0, out.stdout + out.stderr
        assert "total best bid/ask: 26 of 26 match" in out.stdout
    finally:
        node.stop()
