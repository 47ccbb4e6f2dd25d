"""The Binance diff-depth reader: real captures verify with the counts their
README gives, and Binance's sync procedure holds on small synthetic inputs."""

from __future__ import annotations

import ast
import inspect
import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orderbook.core.units import format_units
from orderbook.replay.formats import binance
from orderbook.replay.records import BestPrices, FormatError, Record
from orderbook.replay.verify import Verifier, verify

pytestmark = pytest.mark.timeout(120)

SESSIONS = {
    "2021-04-17": {
        "applied": 590,
        "stale": 24,
        "checkpoints": {
            "SWRVBUSD": 57,
            "VETETH": 63,
            "AAVEUPUSDT": 43,
            "GTOBTC": 13,
            "PERLBNB": 7,
            "ONTTRY": 7,
            "BUSDTRY": 6,
            "QSPBTC": 2,
            "ADARUB": 1,
            "STEEMETH": 0,
        },
        "bbo": {"SWRVBUSD": ("2.27100000", "2.27600000"), "VETETH": ("0.00009377", "0.00009399")},
    },
    "2021-08-14": {
        "applied": 528,
        "stale": 18,
        "checkpoints": {"FTMUSDT": 34, "BADGERBTC": 33, "XMRBTC": 16, "SXPBTC": 13},
        "bbo": {"FTMUSDT": ("0.33936000", "0.33962000"), "XMRBTC": ("0.00577300", "0.00577900")},
    },
    "2021-10-12": {
        "applied": 172,
        "stale": 5,
        "checkpoints": {"NKNUSDT": 19, "LRCBTC": 6, "BLZETH": 1, "RUNEEUR": 0},
        "bbo": {"NKNUSDT": ("0.35270000", "0.35310000")},
    },
}

SYM = "FTMUSDT"


# ----------------------------------------------------------------------------- helpers


def session_dir(shared_data: Path, name: str) -> Path:
    return shared_data / "binance-depth-2021" / name


def read_session(folder: Path) -> list[Record]:
    # newline="" keeps the files' line endings as written, as the file edge does.
    with (
        (folder / "BINANCE.ws.1.0").open(encoding="utf-8", newline="") as ws,
        (folder / "BINANCE.http.0.0").open(encoding="utf-8", newline="") as http,
    ):
        return list(binance.read(ws, http))


def run(records: Iterable[Record]) -> Verifier:
    v = Verifier()
    for record in records:
        v.feed(record)
    return v


def px(ticks: int) -> str:
    return format_units(ticks, 8)


def ws(t: float | str, data: dict, stream: str | None = None) -> str:
    if stream is None:
        suffix = "depth@100ms" if data.get("e") == "depthUpdate" else "bookTicker"
        stream = f"{data['s'].lower()}@{suffix}"
    return f"{t}: {json.dumps({'stream': stream, 'data': data})}\n"


def depth(t: float | str, first: int, final: int, bids=(), asks=(), sym: str = SYM) -> str:
    data = {
        "e": "depthUpdate",
        "E": 1_600_000_000_000 + final,
        "s": sym,
        "U": first,
        "u": final,
        "b": [[px(p), px(q)] for p, q in bids],
        "a": [[px(p), px(q)] for p, q in asks],
    }
    return ws(t, data)


def ticker(t: float | str, u: int, bid: tuple[int, int], ask: tuple[int, int], sym: str = SYM) -> str:
    data = {"u": u, "s": sym, "b": px(bid[0]), "B": px(bid[1]), "a": px(ask[0]), "A": px(ask[1])}
    return ws(t, data)


def snapshot(t: float | str, last_id: int, bids=(), asks=(), sym: str = SYM) -> str:
    body = {
        "lastUpdateId": last_id,
        "bids": [[px(p), px(q)] for p, q in bids],
        "asks": [[px(p), px(q)] for p, q in asks],
    }
    return f"https://api.binance.com/api/v3/depth?symbol={sym}&limit=1000 -> {t}: {json.dumps(body)}\n"


OPEN = "wss://stream.binance.com:9443/stream?streams=ftmusdt@depth@100ms/ftmusdt@bookTicker <-> 99.0\n"


def notes(records: list[Record]) -> list[str]:
    return [r.note for r in records if r.note]


def applied(records: list[Record]) -> list[int]:
    """Event times (as the helpers stamp them: the final u) of the diffs applied."""
    return [u.event_time_ns // 1_000_000 - 1_600_000_000_000 for r in records for u in r.updates if not u.replace]


def book(records: list[Record], sym: str = SYM) -> tuple[list, list]:
    b = run(records).book(sym)
    return b.bids(), b.asks()


# ----------------------------------------------------------------------------- real captures


@pytest.mark.parametrize("name", sorted(SESSIONS))
def test_session_verifies_with_the_readme_counts(shared_data, name):
    want = SESSIONS[name]
    records = read_session(session_dir(shared_data, name))
    v = run(records)
    report = v.report
    assert report.ok, "\n".join(report.lines())
    assert not report.rejected
    assert report.by_kind() == {"best bid/ask": (sum(want["checkpoints"].values()),) * 2}
    per_symbol = {s: r.checks.get("best bid/ask", 0) for s, r in report.symbols.items()}
    assert per_symbol == want["checkpoints"]
    assert sum(1 for r in records for u in r.updates if not u.replace) == want["applied"]
    # Every symbol syncs on its first applied diff and never gaps.
    assert report.notes == {binance.STALE: want["stale"]}
    for sym, (bid, ask) in want["bbo"].items():
        sb = v.market.get(sym)
        inst = sb.instrument
        assert (inst.format_price(sb.book.best_bid()[0]), inst.format_price(sb.book.best_ask()[0])) == (bid, ask)
    for sym in want["checkpoints"]:
        inst = v.market.get(sym).instrument
        assert (inst.price_scale, inst.size_scale, inst.venue) == (8, 8, "binance")


def test_session_times_never_step_back(shared_data):
    # Buffered diffs are released at their snapshot's time, so replay pacing sees a monotone clock.
    records = read_session(session_dir(shared_data, "2021-04-17"))
    times = [r.time_ns for r in records]
    assert times == sorted(times)
    assert len(set(times)) > len(times) // 2


def test_wrong_checkpoint_fails_verification(shared_data):
    folder = session_dir(shared_data, "2021-08-14")
    ws_lines = (folder / "BINANCE.ws.1.0").read_text().splitlines(keepends=True)
    http_lines = (folder / "BINANCE.http.0.0").read_text().splitlines(keepends=True)
    # Find a checkpoint independently of the reader: a bookTicker whose u is the
    # final u of a depth event newer than its symbol's snapshot.
    last_ids = {
        re.search(r"symbol=(\w+)", line)[1]: json.loads(line.partition(": ")[2])["lastUpdateId"]
        for line in http_lines
        if line.strip()
    }
    finals = set()
    for line in ws_lines:
        if "depthUpdate" in line:
            data = json.loads(line.partition(": ")[2])["data"]
            finals.add((data["s"], data["u"]))
    index = next(
        i
        for i, line in enumerate(ws_lines)
        if '@bookTicker"' in line  # the stream name, not the subscription URL
        and (d := json.loads(line.partition(": ")[2])["data"])
        and (d["s"], d["u"]) in finals
        and d["u"] > last_ids[d["s"]]
    )
    head, _, body = ws_lines[index].partition(": ")
    msg = json.loads(body)
    msg["data"]["B"] = format_units(int(msg["data"]["B"].replace(".", "")) + 1, 8)  # one lot more at the best bid
    ws_lines[index] = f"{head}: {json.dumps(msg)}\n"
    report = verify(binance.read(ws_lines, http_lines))
    assert not report.ok
    assert report.mismatch_count == 1
    assert report.by_kind() == {"best bid/ask": (95, 96)}
    assert report.mismatches[0].symbol == msg["data"]["s"]
    assert "best bid" in report.mismatches[0].detail


def test_reader_streams_the_websocket_capture(shared_data):
    folder = session_dir(shared_data, "2021-08-14")
    pulled = {"ws": 0, "http": 0}

    def counting(path: Path, key: str) -> Iterator[str]:
        with path.open(encoding="utf-8", newline="") as f:
            for line in f:
                pulled[key] += 1
                yield line

    with (folder / "BINANCE.ws.1.0").open() as f:
        total = sum(1 for _ in f)
    records = binance.read(counting(folder / "BINANCE.ws.1.0", "ws"), counting(folder / "BINANCE.http.0.0", "http"))
    first = next(records)
    # The first snapshot (XMRBTC) is the first http line and arrives within the first few ws lines.
    assert first.updates[0].replace and first.updates[0].symbol == "XMRBTC"
    assert pulled["ws"] <= 5 and pulled["http"] <= 2
    for _ in range(50):
        next(records)
    assert pulled["ws"] < total // 4
    rest = list(records)
    assert pulled["ws"] == total and rest


def test_reader_module_is_pure():
    tree = ast.parse(inspect.getsource(binance))
    imported = {
        name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for name in ([a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""])
    }
    assert not imported & {"asyncio", "socket", "time", "sanic", "websockets", "redis", "subprocess", "io", "os"}
    assert "open(" not in inspect.getsource(binance)


# ----------------------------------------------------------------------------- sync procedure (synthetic)


def test_stale_diffs_are_dropped():
    ws_lines = [
        OPEN,
        depth(101.0, 90, 95, bids=[(10, 9)]),  # wholly before the snapshot
        depth(103.0, 96, 100, bids=[(11, 9)]),  # ends exactly at lastUpdateId: already in it
        depth(104.0, 101, 102, bids=[(12, 3)]),
    ]
    records = list(binance.read(ws_lines, [snapshot(102.0, 100, bids=[(10, 1), (11, 1)], asks=[(20, 1)])]))
    assert notes(records) == [binance.STALE, binance.STALE]
    assert applied(records) == [102]
    assert book(records) == ([(12, 3), (11, 1), (10, 1)], [(20, 1)])


def test_diff_before_the_snapshot_is_buffered_then_applied():
    ws_lines = [
        OPEN,
        depth(100.1, 95, 100, bids=[(10, 7)]),  # stale once the snapshot shows up
        depth(100.2, 101, 101, bids=[(11, 2)]),
        depth(100.3, 102, 104, asks=[(20, 0), (21, 4)]),
        depth(101.5, 105, 105, bids=[(10, 0)]),
    ]
    http = [snapshot(101.0, 100, bids=[(10, 1)], asks=[(20, 1)])]
    records = list(binance.read(ws_lines, http))
    assert [r.updates[0].replace for r in records if r.updates] == [True, False, False, False]
    assert notes(records) == [binance.STALE]
    assert book(records[:3]) == ([(11, 2), (10, 1)], [(20, 1)])  # the snapshot, then the first buffered diff
    assert book(records) == ([(11, 2)], [(21, 4)])
    # Released no earlier than the snapshot that made them applicable.
    assert [r.time_ns for r in records] == [101_000_000_000] * 4 + [101_500_000_000]
    # The venue's event time survives the buffering.
    assert records[2].updates[0].event_time_ns == (1_600_000_000_000 + 101) * 1_000_000


def test_no_snapshot_leaves_the_symbol_unapplied_and_says_so():
    records = list(binance.read([OPEN, depth(100.1, 101, 101, bids=[(11, 2)])], []))
    assert records == [Record(100_100_000_000, note=binance.NO_SNAPSHOT)]


def test_first_applied_diff_may_straddle_the_snapshot():
    # U <= lastUpdateId + 1 <= u: the part already in the snapshot is rewritten with the same absolute sizes.
    ws_lines = [OPEN, depth(101.0, 98, 103, bids=[(10, 5)]), depth(102.0, 104, 104, asks=[(21, 1)])]
    records = list(binance.read(ws_lines, [snapshot(100.5, 100, bids=[(10, 1)], asks=[(20, 1)])]))
    assert applied(records) == [103, 104] and not notes(records)
    assert book(records) == ([(10, 5)], [(20, 1), (21, 1)])


@pytest.mark.parametrize(
    "first_ids, gap_at",
    [
        ([(102, 103)], 0),  # skips 101: the first diff must contain lastUpdateId + 1
        ([(101, 102), (104, 105)], 1),  # skips 103 after syncing
        ([(101, 102), (102, 104)], 1),  # overlaps: U must be exactly the previous u + 1
    ],
)
def test_gap_stops_the_symbol_until_the_next_snapshot(first_ids, gap_at):
    ws_lines = [OPEN]
    for i, (first, final) in enumerate(first_ids):
        ws_lines.append(depth(101.0 + i, first, final, bids=[(12, final)]))
    ws_lines.append(ticker(110.0, 106, (30, 1), (40, 1)))  # while out of sync: not a checkpoint
    ws_lines.append(depth(110.5, 106, 106, bids=[(13, 1)]))  # ignored until the resync...
    ws_lines.append(depth(112.0, 200, 201, asks=[(25, 6)]))  # ...and applied after it
    ws_lines.append(ticker(112.1, 201, (15, 2), (20, 1)))  # after its diff: still checked
    http = [snapshot(100.5, 100, bids=[(10, 1)], asks=[(20, 1)]), snapshot(111.0, 199, bids=[(15, 2)], asks=[(20, 1)])]
    records = list(binance.read(ws_lines, http))
    # The diffs held since the gap are older than the new snapshot.
    assert notes(records) == [binance.GAP, binance.STALE, binance.STALE]
    assert applied(records) == [final for _, final in first_ids[:gap_at]] + [201]
    gap = next(i for i, r in enumerate(records) if r.note == binance.GAP)
    # Nothing touches the book between the gap and the resync.
    assert records[gap + 1].updates[0].replace and records[gap + 1].time_ns == 111_000_000_000
    report = run(records).report
    assert report.ok and report.by_kind() == {"best bid/ask": (1, 1)}
    assert book(records) == ([(15, 2)], [(20, 1), (25, 6)])


def test_buffer_overflow_drops_the_oldest_and_then_gaps(monkeypatch):
    monkeypatch.setattr(binance, "MAX_BUFFERED", 2)
    ws_lines = [OPEN] + [depth(100.0 + i / 10, 101 + i, 101 + i, bids=[(10, i + 1)]) for i in range(4)]
    records = list(binance.read(ws_lines, [snapshot(101.0, 100, bids=[(10, 1)])]))
    # 101 and 102 were dropped, so 103 cannot follow the snapshot's 100; no snapshot comes to resync.
    assert notes(records) == [binance.GAP, binance.NO_SNAPSHOT]
    assert applied(records) == []


def test_checkpoint_attaches_to_its_diff_whichever_arrives_first():
    ws_lines = [
        OPEN,
        ticker(101.0, 102, (11, 2), (20, 1)),  # inside the batch below: never checked
        ticker(101.1, 103, (11, 2), (20, 3)),  # ahead of its diff, as bookTicker usually is
        depth(101.2, 101, 103, bids=[(11, 2)], asks=[(20, 3)]),
        depth(101.3, 104, 104, bids=[(12, 1)]),
        ticker(101.4, 104, (12, 1), (20, 3)),  # after its diff, nothing newer applied yet
        depth(101.5, 105, 105, bids=[(12, 0)]),
        ticker(101.6, 104, (12, 1), (20, 3)),  # late: the book has moved on
    ]
    records = list(binance.read(ws_lines, [snapshot(100.5, 100, bids=[(10, 1)], asks=[(20, 1)])]))
    checks = [(r.time_ns, r.checks) for r in records if r.checks]
    bp = BestPrices(SYM, (11, 2), (20, 3))
    assert checks == [(101_200_000_000, (bp,)), (101_400_000_000, (BestPrices(SYM, (12, 1), (20, 3)),))]
    assert run(records).report.by_kind() == {"best bid/ask": (2, 2)}


def test_checkpoint_at_the_snapshot_itself_is_not_taken():
    # The README counts only bookTickers at an applied diff's final u.
    ws_lines = [OPEN, ticker(101.0, 100, (10, 1), (20, 1)), depth(102.0, 101, 101, bids=[(11, 1)])]
    records = list(binance.read(ws_lines, [snapshot(100.5, 100, bids=[(10, 1)], asks=[(20, 1)])]))
    assert not any(r.checks for r in records)


def test_empty_side_in_a_ticker_means_an_empty_book_side():
    ws_lines = [OPEN, depth(101.0, 101, 101, bids=[(10, 0)]), ticker(101.1, 101, (0, 0), (20, 1))]
    records = list(binance.read(ws_lines, [snapshot(100.5, 100, bids=[(10, 1)], asks=[(20, 1)])]))
    assert records[-1].checks == (BestPrices(SYM, None, (20, 1)),)
    assert run(records).report.ok


def test_crlf_line_endings_and_other_streams():
    trade = ws(101.05, {"e": "aggTrade", "s": SYM, "p": "0.5", "q": "1"}, stream="ftmusdt@aggTrade")
    ws_lines = [OPEN, trade, depth(101.1, 101, 101, bids=[(11, 1)])]
    http = [snapshot(100.5, 100, bids=[(10, 1)], asks=[(20, 1)]), "\n"]
    records = list(
        binance.read([line.replace("\n", "\r\n") for line in ws_lines], [line.replace("\n", "\r\n") for line in http])
    )
    assert applied(records) == [101]
    assert book(records) == ([(11, 1), (10, 1)], [(20, 1)])


# ----------------------------------------------------------------------------- bad data


def test_more_decimals_than_the_snapshot_is_an_error():
    line = depth(101.0, 101, 101).replace('"b": []', '"b": [["0.000000101", "1.00000000"]]')
    records = binance.read([OPEN, line], [snapshot(100.5, 100, bids=[(10, 1)], asks=[(20, 1)])])
    with pytest.raises(FormatError, match=r"binance:2: FTMUSDT: .*more than 8 decimal places"):
        list(records)


def test_scales_follow_the_snapshot():
    body = {"lastUpdateId": 100, "bids": [["0.0100", "1.5"]], "asks": [["0.0200", "2.25"]]}
    http = [f"https://api.binance.com/api/v3/depth?symbol={SYM}&limit=1000 -> 100.5: {json.dumps(body)}\n"]
    inst = next(binance.read([OPEN], http)).instruments[0]
    assert (inst.symbol, inst.price_scale, inst.size_scale, inst.venue) == (SYM, 4, 2, "binance")


@pytest.mark.parametrize(
    "ws_lines, http, message",
    [
        ([OPEN, "101.0: not json\n"], [], r"binance:2: not JSON"),
        ([OPEN, depth(101.0, 105, 101)], [], r"binance:2: FTMUSDT: first update id U=105 is after the final u=101"),
        ([OPEN, depth(101.0, 101, 101).replace('"u": 101', '"u": "101"')], [], r"binance:2: FTMUSDT: 'u' must be"),
        (
            [OPEN, depth(101.0, 101, 101).replace('"b": []', '"b": [[1.5, "1"]]')],
            [snapshot(100.5, 100, bids=[(10, 1)])],
            r"binance:2: FTMUSDT: expected a decimal string",
        ),
        (
            [OPEN],
            ['https://api.binance.com/api/v3/depth?limit=1000 -> 100.5: {"lastUpdateId": 1}\n'],
            r"binance snapshots:1: depth snapshot URL names no symbol",
        ),
        (
            [OPEN],
            [f'https://api.binance.com/api/v3/depth?symbol={SYM} -> 100.5: {{"code": -1121, "msg": "Invalid"}}\n'],
            r"binance snapshots:1: FTMUSDT: not a depth snapshot",
        ),
    ],
)
def test_bad_data_names_the_line(ws_lines, http, message):
    with pytest.raises(FormatError, match=message):
        list(binance.read(ws_lines, http))


# ----------------------------------------------------------------------------- property


def apply_levels(side: dict[int, int], levels: list[tuple[int, int]]) -> None:
    for price, size in levels:
        if size:
            side[price] = size
        else:
            side.pop(price, None)


def best(side: dict[int, int], highest: bool) -> tuple[int, int]:
    if not side:
        return (0, 0)
    price = max(side) if highest else min(side)
    return (price, side[price])


levels = st.lists(st.tuples(st.integers(1, 6), st.integers(0, 3)), max_size=4)
events = st.lists(st.tuples(st.integers(1, 3), levels, levels), min_size=1, max_size=12)


@settings(max_examples=200, deadline=None)
@given(
    events=events,
    data=st.data(),
)
def test_any_snapshot_point_and_arrival_order_rebuilds_the_venue_book(events, data):
    """The venue's book evolves by `events`; whichever event the snapshot is
    taken after, wherever it lands among the diffs, and whether each bookTicker
    comes before or after its diff, the replayed book ends as the venue's and
    every bookTicker newer than the snapshot is a matching checkpoint."""
    bids: dict[int, int] = {1: 1}
    asks: dict[int, int] = {11: 1}
    history = []  # (U, u, bid levels, ask levels, book after)
    next_id = 50
    for width, bid_levels, ask_levels in events:
        ask_levels = [(p + 10, q) for p, q in ask_levels]  # asks above bids: never crossed
        apply_levels(bids, bid_levels)
        apply_levels(asks, ask_levels)
        history.append((next_id, next_id + width - 1, bid_levels, ask_levels, dict(bids), dict(asks)))
        next_id += width
    taken_after = data.draw(st.integers(0, len(history)), label="snapshot after event")
    arrives_after = data.draw(st.integers(0, len(history)), label="snapshot arrives after diff line")
    ticker_first = data.draw(st.lists(st.booleans(), min_size=len(history), max_size=len(history)))
    if taken_after:
        _, last_id, _, _, snap_bids, snap_asks = history[taken_after - 1]
    else:
        last_id, snap_bids, snap_asks = history[0][0] - 1, {1: 1}, {11: 1}

    ws_lines = [OPEN]
    http = []
    t = 100
    for i, (first, final, bid_levels, ask_levels, after_bids, after_asks) in enumerate(history):
        if i == arrives_after:  # after the previous diff's lines, before this one's
            http.append(snapshot(f"{t - 1}.9", last_id, sorted(snap_bids.items()), sorted(snap_asks.items())))
        tick = ticker(f"{t}.2" if ticker_first[i] else f"{t}.8", final, best(after_bids, True), best(after_asks, False))
        if ticker_first[i]:
            ws_lines.append(tick)
        ws_lines.append(depth(f"{t}.4", first, final, bid_levels, ask_levels))
        if not ticker_first[i]:
            ws_lines.append(tick)
        t += 1
    if arrives_after == len(history):
        http.append(snapshot(f"{t - 1}.9", last_id, sorted(snap_bids.items()), sorted(snap_asks.items())))

    records = list(binance.read(ws_lines, http))
    v = run(records)
    report = v.report
    newer = len(history) - taken_after
    assert report.ok or newer == 0
    assert report.by_kind() == ({"best bid/ask": (newer, newer)} if newer else {})
    assert not report.rejected and binance.GAP not in report.notes
    assert v.book(SYM).bids() == sorted(bids.items(), reverse=True)
    assert v.book(SYM).asks() == sorted(asks.items())
    assert applied(records) == [h[1] for h in history[taken_after:]]


def test_file_edge_reads_a_session_folder(shared_data):
    # The folder form the command line takes: both files found and streamed by the edge.
    from orderbook.replay.files import open_records

    report = verify(open_records(session_dir(shared_data, "2021-10-12"), "binance"))
    assert report.ok and report.by_kind() == {"best bid/ask": (26, 26)}
