"""The Kraken v1 book reader: the real capture verifies in full, and each
quirk of the format is shown on small inline inputs."""

from __future__ import annotations

import ast
import itertools
import re
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orderbook.replay.files import open_records
from orderbook.replay.formats import kraken
from orderbook.replay.records import Checksum, FormatError, Record
from orderbook.replay.verify import Verifier, verify

from .cryptofeed_captures import capture_lines, orderbook, read_to_error, verify_resyncs, verify_stops_with

pytestmark = pytest.mark.timeout(120)

KRAKEN_DIR = "kraken-book-2021-04-17"
BOOK_CAPTURE = "KRAKEN.ws.50.0"


@pytest.fixture(scope="module")
def capture(shared_data: Path) -> Path:
    return shared_data / KRAKEN_DIR / BOOK_CAPTURE


@pytest.fixture(scope="module")
def records(capture: Path) -> list[Record]:
    with capture.open(encoding="utf-8") as f:
        return list(kraken.read(f))


def head(capture: Path, n: int) -> list[str]:
    with capture.open(encoding="utf-8") as f:
        return list(itertools.islice(f, n))


# ----------------------------------------------------------------------------- the real capture


def test_real_capture_verifies(records):
    report = verify(records)
    # The README: 4,269 updates, each with a checksum, all matching.
    assert report.by_kind() == {"checksum": (4269, 4269)}
    assert report.ok and report.rejected == [] and report.notes == {}
    assert report.lines()[-1] == "OK: 4269 of 4269 references match over 4279 records"


def test_instruments_come_with_the_snapshots(records):
    defined: dict[str, tuple] = {}
    for record in records:
        for inst in record.instruments:
            defined[inst.symbol] = (inst.base, inst.quote, inst.venue, inst.price_scale, inst.size_scale)
        for update in record.updates:
            # Every update's symbol is defined on or before its first record.
            assert update.symbol in defined
    assert len(defined) == 10
    assert defined["XBT/CHF"] == ("XBT", "CHF", "kraken", 5, 8)
    assert defined["OMG/USD"] == ("OMG", "USD", "kraken", 6, 8)
    assert all(r.updates[0].replace == bool(r.instruments) for r in records)


def test_times_are_exact(records):
    # Line 25: received at 1618678134.213106, level time 1618678133.365913.
    xmr = next(r for r in records if r.updates[0].symbol == "XMR/USD" and not r.updates[0].replace)
    assert xmr.time_ns == 1_618_678_134_213_106_000
    assert xmr.updates[0].event_time_ns == 1_618_678_133_365_913_000
    assert xmr.updates[0].bids == ((35415000000, 500000000),)
    assert xmr.checks == (Checksum("XMR/USD", 2583817756),)
    # The last line's receive time has 7 decimals: a float would lose the last digits.
    assert records[-1].time_ns == 1_618_678_163_372_861_900
    snapshot = records[0]
    assert snapshot.updates[0].event_time_ns == snapshot.time_ns == 1_618_678_133_626_511_000


@pytest.mark.parametrize("name", ["KRAKEN.ws.48.0", "KRAKEN.ws.49.0"])
def test_trade_and_ticker_channels_yield_nothing(shared_data, name):
    # Same pairs and time, other channels: not book data, so no records and no error.
    with (shared_data / KRAKEN_DIR / name).open(encoding="utf-8") as f:
        assert list(kraken.read(f)) == []


def test_crlf_and_trailing_blank_lines(capture):
    lines = [line.rstrip("\n") for line in head(capture, 80)]
    lf = list(kraken.read(line + "\n" for line in lines))
    crlf_text = "\r\n".join(lines) + "\r\n\r\n\r\n"
    crlf = list(kraken.read(crlf_text.splitlines(keepends=True)))
    assert crlf == lf
    assert len(lf) > 50 and verify(crlf).ok


def test_corrupted_checksum_is_reported(capture):
    lines = head(capture, 80)
    target = next(i for i, line in enumerate(lines) if '"c":"' in line)
    good = list(kraken.read(lines))
    lines[target] = re.sub(r'"c":"(\d+)"', lambda m: f'"c":"{(int(m[1]) + 1) % 2**32}"', lines[target])
    bad = list(kraken.read(lines))
    report = verify(bad)
    assert not report.ok and report.mismatch_count == 1
    [mismatch] = report.mismatches
    assert mismatch.kind == "checksum"
    assert bad[mismatch.record].checks != good[mismatch.record].checks
    assert verify(good).ok


def test_streams_line_by_line(capture):
    pulled = 0

    def counting(f: Iterable[str]) -> Iterator[str]:
        nonlocal pulled
        for line in f:
            pulled += 1
            yield line

    with capture.open(encoding="utf-8") as f:
        first = next(kraken.read(counting(f)))
    # The first snapshot is line 15 of a 4,000-line file.
    assert first.updates[0].replace and first.updates[0].symbol == "ADA/XBT"
    assert pulled == 15


# ----------------------------------------------------------------------------- synthetic quirks

SUBSCRIBED = (
    '1.0: {"channelID":7,"channelName":"book-1000","event":"subscriptionStatus","pair":"T/X","status":"subscribed"}'
)
SNAPSHOT = '1.1: [7,{"as":[["1.50","2.000","1.0"]],"bs":[["1.40","1.000","1.0"]]},"book-1000","T/X"]'


def ask_update(price: str, size: str, ts: str = "1.2") -> str:
    return f'{ts}: [7,{{"a":[["{price}","{size}","{ts}"]],"c":"0"}},"book-1000","T/X"]'


def test_too_many_decimals_names_the_line():
    # T/X writes 2 price decimals: "1.505" cannot be held and must not be rounded.
    lines = [SUBSCRIBED, SNAPSHOT, ask_update("1.51", "1.000"), ask_update("1.505", "1.000")]
    with pytest.raises(FormatError, match=r"^book\.ws:4: .*1\.505") as exc:
        list(kraken.read(lines, source="book.ws"))
    assert exc.value.where == "book.ws:4"


def test_other_decimals_accepted_when_exact():
    records = list(kraken.read([SUBSCRIBED, SNAPSHOT, ask_update("1.5", "3"), ask_update("1.5000", "3.0000000")]))
    assert records[1].updates[0].asks == records[2].updates[0].asks == ((150, 3000),)


def test_negative_volume_is_an_error():
    with pytest.raises(FormatError, match="kraken:3: negative volume"):
        list(kraken.read([SUBSCRIBED, SNAPSHOT, ask_update("1.50", "-1.000")]))


def test_update_before_snapshot_is_an_error():
    with pytest.raises(FormatError, match="kraken:2: T/X: update before its snapshot"):
        list(kraken.read([SUBSCRIBED, ask_update("1.50", "1.000")]))


def test_channel_must_match_its_pair():
    wrong = SNAPSHOT.replace('"T/X"]', '"U/X"]')
    with pytest.raises(FormatError, match="channel 7 is T/X"):
        list(kraken.read([SUBSCRIBED, wrong]))


def test_depth_comes_from_the_channel_name():
    asks = ",".join(f'["1.{50 + i}","1.000","1.0"]' for i in range(12))
    lines = [
        SUBSCRIBED.replace("book-1000", "book-10"),
        f'1.1: [7,{{"as":[{asks}],"bs":[["1.40","1.000","1.0"]]}},"book-10","T/X"]',
    ]
    assert len(next(kraken.read(lines)).updates[0].asks) == 10
    assert len(next(kraken.read(lines, depth=3)).updates[0].asks) == 3
    with pytest.raises(FormatError, match="no depth in channel name"):
        list(kraken.read([line.replace('"book-10"', '"book"') for line in lines]))


def test_heartbeats_and_status_yield_nothing():
    lines = ['1.0: {"event":"heartbeat"}', '1.1: {"event":"systemStatus","status":"online"}', SUBSCRIBED, SNAPSHOT]
    assert len(list(kraken.read(lines))) == 1


def test_reader_is_pure():
    tree = ast.parse(Path(kraken.__file__).read_text(encoding="utf-8"))
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and not n.level}
    assert not imported & {"asyncio", "socket", "time", "sanic", "websockets", "redis", "subprocess", "io", "os"}
    calls = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    assert "open" not in calls


# ----------------------------------------------------------------------------- bad input and gaps

JUNK = "1618678140.0: <html>502 Bad Gateway</html>"


def copy_with(tmp_path: Path, capture: Path, edit) -> Path:
    """A copy of the capture in tmp_path, its lines passed through `edit`."""
    out = tmp_path / capture.name
    out.write_bytes("\n".join(edit(capture_lines(capture))).encode())
    return out


def book_lines(lines: list[str]) -> list[int]:
    return [i for i, text in enumerate(lines) if '"book-1000"' in text and text.endswith("]")]


def pair_of(text: str) -> str:
    return re.search(r'"book-1000","([^"]+)"\]', text).group(1)


def fed(records: Iterable[Record]) -> Verifier:
    """A verifier that has rebuilt every book from `records`."""
    v = Verifier()
    for record in records:
        v.feed(record)
    return v


def test_a_truncated_last_line_stops_naming_its_line_and_pair(tmp_path, capture, records):
    lines = capture_lines(capture)
    last = book_lines(lines)[-1]
    assert lines[last + 1 :] == ["", "", ""]  # the file ends with this line and blank ones
    bad = copy_with(tmp_path, capture, lambda ls: [*ls[:last], ls[last][: len(ls[last]) // 2]])
    got, error = read_to_error(bad, "kraken")
    # The pair's name is cut off with the line's end: its channel ID at the start still names it.
    assert str(error).startswith(f"KRAKEN.ws.50.0:{last + 1}: {pair_of(lines[last])}: the line is cut short: ")
    # Every record before it, whole; nothing of the cut one.
    assert got == records[:-1]

    verify_stops_with(bad, error)
    out = orderbook("verify", str(bad), "--gaps", "error")
    assert out.returncode == 1 and out.stderr.strip().splitlines() == [f"orderbook verify: {error}"]


def test_with_resync_a_truncated_last_line_is_noted(tmp_path, capture, records):
    lines = capture_lines(capture)
    last = book_lines(lines)[-1]
    pair = pair_of(lines[last])
    bad = copy_with(tmp_path, capture, lambda ls: [*ls[:last], ls[last][: len(ls[last]) // 2]])
    got = list(open_records(bad, "kraken", gaps="resync"))
    assert [r for r in got if not r.note] == records[:-1]
    report = verify(got)
    assert report.ok and report.by_kind() == {"checksum": (4268, 4268)}
    [gap] = [n for n in report.notes if n.startswith("gap")]
    assert gap.startswith(f"gap at KRAKEN.ws.50.0:{last + 1}: {pair}: the line is cut short: ")
    assert report.notes == {gap: 1, f"no snapshot: {pair} skipped 1 record to the end": 1}

    verify_resyncs(bad, f"no snapshot: {pair} skipped 1 record to the end", "OK: 4268 of 4268 references match")


def test_a_line_that_is_not_json_stops_naming_its_line(tmp_path, capture, records):
    lines = capture_lines(capture)
    at = book_lines(lines)[100]
    before = sum(1 for i in book_lines(lines) if i < at)
    bad = copy_with(tmp_path, capture, lambda ls: [*ls[:at], JUNK, *ls[at:]])
    got, error = read_to_error(bad, "kraken")
    # No pair to name: the line and what was wrong.
    assert str(error) == f"KRAKEN.ws.50.0:{at + 1}: not JSON: Expecting value: line 1 column 1 (char 0)"
    assert got == records[:before]

    verify_stops_with(bad, error)


def test_with_resync_a_line_that_is_not_json_is_noted_and_changes_nothing(tmp_path, capture, records):
    lines = capture_lines(capture)
    at = book_lines(lines)[100]
    bad = copy_with(tmp_path, capture, lambda ls: [*ls[:at], JUNK, *ls[at:]])
    got = list(open_records(bad, "kraken", gaps="resync"))
    assert [r for r in got if not r.note] == records
    report = verify(got)
    assert report.ok and report.by_kind() == {"checksum": (4269, 4269)}
    assert report.notes == {
        f"unreadable line at KRAKEN.ws.50.0:{at + 1}: not JSON: Expecting value: line 1 column 1 (char 0)": 1
    }

    verify_resyncs(bad, f"unreadable line at KRAKEN.ws.50.0:{at + 1}: not JSON", "OK: 4269 of 4269 references match")


def test_with_resync_a_pair_cut_mid_file_waits_for_a_snapshot(tmp_path, capture, records):
    lines = capture_lines(capture)
    at = book_lines(lines)[2000]
    pair = pair_of(lines[at])
    bad = copy_with(tmp_path, capture, lambda ls: [*ls[:at], ls[at][:40], *ls[at + 1 :]])
    with pytest.raises(FormatError, match=rf"^KRAKEN\.ws\.50\.0:{at + 1}: {re.escape(pair)}: the line is cut short"):
        list(open_records(bad, "kraken"))
    got = list(open_records(bad, "kraken", gaps="resync"))
    # The file has no later snapshot: every message of the pair from the cut on is skipped.
    skipped = sum(1 for i in book_lines(lines) if i >= at and pair_of(lines[i]) == pair)
    before = sum(1 for i in book_lines(lines) if i < at)
    kept = [r for r in got if not r.note]
    assert kept == records[:before] + [r for r in records[before:] if r.updates[0].symbol != pair]
    report = verify(got)
    assert report.ok
    assert f"no snapshot: {pair} skipped {skipped} records to the end" in report.notes
    # The pair's book stays as the last good message left it.
    assert fed(got).book(pair) == fed(records[:before]).book(pair)


SNAPSHOT_AGAIN = SNAPSHOT.replace("1.1:", "5.0:").replace('"1.40","1.000"', '"1.41","1.000"')


def test_with_resync_the_next_snapshot_ends_the_wait():
    cut = ask_update("1.51", "1.000", ts="2.0")[:30]
    lines = [SUBSCRIBED, SNAPSHOT, cut, ask_update("1.52", "1.000", ts="3.0"), SNAPSHOT_AGAIN]
    lines.append(ask_update("1.53", "1.000", ts="6.0"))
    with pytest.raises(FormatError, match=r"^k:3: T/X: the line is cut short"):
        list(kraken.read(lines, source="k"))
    got = list(kraken.read(lines, source="k", gaps="resync"))
    assert [r.note.split(":")[0] for r in got] == ["", "gap at k", "resync", "", ""]
    assert got[2].note == "resync: T/X skipped 2 records"
    v = fed(got)
    assert v.book("T/X").bids() == [(141, 1000)] and v.book("T/X").asks() == [(150, 2000), (153, 1000)]


def test_with_resync_an_update_before_any_snapshot_waits_for_one():
    lines = [SUBSCRIBED, ask_update("1.50", "1.000"), ask_update("1.51", "1.000"), SNAPSHOT_AGAIN]
    got = list(kraken.read(lines, gaps="resync"))
    assert [r.note for r in got] == [
        "gap at kraken:2: T/X: update before its snapshot",
        "resync: T/X skipped 2 records",
        "",
    ]


def test_gaps_is_checked_when_called():
    with pytest.raises(ValueError, match="gaps must be 'error' or 'resync'"):
        kraken.read([], gaps="skip")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- property: an independent model


def price_text(ticks: int) -> str:
    return f"{ticks // 100}.{ticks % 100:02d}"


def size_text(lots: int) -> str:
    return f"{lots // 1000}.{lots % 1000:03d}"


def kraken_checksum(asks: dict[int, int], bids: dict[int, int]) -> int:
    """Kraken's rule on the strings themselves: drop '.', strip leading zeros."""
    top = [(p, asks[p]) for p in sorted(asks)[:10]] + [(p, bids[p]) for p in sorted(bids, reverse=True)[:10]]
    digits = "".join(
        price_text(p).replace(".", "").lstrip("0") + size_text(s).replace(".", "").lstrip("0") for p, s in top
    )
    return zlib.crc32(digits.encode())


def entry(ticks: int, lots: int, flag: bool) -> str:
    return f'["{price_text(ticks)}","{size_text(lots)}","1.5"' + (',"r"]' if flag else "]")


asks_entries = st.tuples(st.just("a"), st.integers(101, 140), st.integers(0, 3000), st.booleans())
bids_entries = st.tuples(st.just("b"), st.integers(60, 100), st.integers(0, 3000), st.booleans())


@settings(max_examples=150, deadline=None)
@given(
    depth=st.integers(1, 12),
    snap_asks=st.dictionaries(st.integers(101, 140), st.integers(1, 3000), min_size=1, max_size=15),
    snap_bids=st.dictionaries(st.integers(60, 100), st.integers(1, 3000), max_size=15),
    messages=st.lists(st.lists(st.one_of(asks_entries, bids_entries), min_size=1, max_size=6), max_size=25),
)
def test_rebuilt_book_equals_krakens(depth, snap_asks, snap_bids, messages):
    # Kraken's side of the story: absolute sizes, zero deletes, trim to depth
    # after every message; every checksum must then match the reader's records.
    def trim() -> None:
        for side, keep in ((asks, sorted(asks)[:depth]), (bids, sorted(bids, reverse=True)[:depth])):
            for p in set(side) - set(keep):
                del side[p]

    asks, bids = dict(snap_asks), dict(snap_bids)
    trim()
    snap = ",".join(entry(p, s, False) for p, s in snap_asks.items())
    snap_b = ",".join(entry(p, s, False) for p, s in snap_bids.items())
    lines = [SUBSCRIBED, f'1.1: [7,{{"as":[{snap}],"bs":[{snap_b}]}},"book-1000","T/X"]']
    for n, msg in enumerate(messages):
        for side, p, s, _ in msg:
            book = asks if side == "a" else bids
            if s:
                book[p] = s
            else:
                book.pop(p, None)
        trim()
        a = ",".join(entry(p, s, r) for side, p, s, r in msg if side == "a")
        b = ",".join(entry(p, s, r) for side, p, s, r in msg if side == "b")
        c = f'"c":"{kraken_checksum(asks, bids)}"'
        parts = f'{{"a":[{a}]}},{{"b":[{b}],{c}}}' if a and b else f'{{"{"a" if a else "b"}":[{a or b}],{c}}}'
        lines.append(f'{2 + n}.0: [7,{parts},"book-1000","T/X"]')
    v = Verifier()
    for record in kraken.read(lines, depth=depth):
        v.feed(record)
    assert v.report.by_kind().get("checksum", (0, 0)) == (len(messages), len(messages))
    assert v.report.rejected == []
    assert v.book("T/X").asks() == sorted(asks.items())
    assert v.book("T/X").bids() == sorted(bids.items(), reverse=True)
