"""The book checksum, proven equal to Kraken's on a real capture read by the
Kraken reader and rebuilt by the same Market the server uses."""

from __future__ import annotations

import dataclasses
import itertools
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orderbook.core.book import Book
from orderbook.core.checksum import CHECKSUM_DEPTH, book_checksum
from orderbook.core.events import BookUpdate
from orderbook.replay.formats import kraken
from orderbook.replay.records import Record
from orderbook.replay.verify import Verifier, verify

pytestmark = pytest.mark.timeout(120)

KRAKEN_DIR = "kraken-book-2021-04-17"
KRAKEN_DEPTH = 1000  # subscribed depth; Kraken trims silently beyond it

# From the capture's README.
EXPECTED_UPDATES = 4269
EXPECTED_LEVEL_CHANGES = 4272
EXPECTED_DELETIONS = 1615
EXPECTED_PER_PAIR = {
    "ADA/XBT": 347,
    "ETH/CHF": 317,
    "GRT/ETH": 20,
    "KSM/XBT": 335,
    "OCEAN/XBT": 148,
    "OMG/USD": 573,
    "SC/EUR": 818,
    "WAVES/EUR": 576,
    "XBT/CHF": 289,
    "XMR/USD": 846,
}
EXPECTED_SNAPSHOT_DEPTH = {  # (asks, bids)
    "ADA/XBT": (841, 707),
    "XBT/CHF": (316, 502),
    "OMG/USD": (300, 225),
    "OCEAN/XBT": (249, 153),
    "ETH/CHF": (151, 278),
    "SC/EUR": (588, 849),
    "GRT/ETH": (73, 60),
    "KSM/XBT": (243, 193),
    "XMR/USD": (429, 654),
    "WAVES/EUR": (273, 389),
}


# ----------------------------------------------------------------------------- unit tests


def test_known_value():
    # "5005" "500" then "5004" "1000"
    assert book_checksum([(5005, 500)], [(5004, 1000)]) == zlib.crc32(b"500550050041000")
    assert book_checksum([(5005, 500)], [(5004, 1000)]) == 0xB7DFCC2D


def test_empty_book():
    assert book_checksum([], []) == zlib.crc32(b"") == 0
    assert Book().checksum() == 0


def test_negative_price_keeps_its_sign():
    assert book_checksum([(-5, 3)], [(-7, 2)]) == zlib.crc32(b"-53-72")


def test_asks_before_bids():
    assert book_checksum([(1, 2)], [(3, 4)]) != book_checksum([(3, 4)], [(1, 2)])


@settings(max_examples=200, deadline=None, report_multiple_bugs=False)
@given(
    st.lists(st.tuples(st.integers(-(10**12), 10**12), st.integers(1, 10**12)), max_size=25),
    st.lists(st.tuples(st.integers(-(10**12), 10**12), st.integers(1, 10**12)), max_size=25),
)
def test_only_top_ten_count(asks, bids):
    text = "".join(f"{p}{s}" for p, s in asks[:10] + bids[:10])
    assert book_checksum(asks, bids) == zlib.crc32(text.encode())
    assert book_checksum(asks, bids) == book_checksum(iter(asks[:10]), iter(bids[:10]))
    assert 0 <= book_checksum(asks, bids) < 2**32
    assert CHECKSUM_DEPTH == 10


# ----------------------------------------------------------------------------- Kraken capture


def read_capture_file(path: Path, **kwargs) -> list[Record]:
    with path.open(encoding="utf-8") as f:
        return list(kraken.read(f, **kwargs))


def rebuild(records: Iterable[Record]) -> Verifier:
    """Feed records to the same Market the server uses; keep it for its books."""
    v = Verifier()
    for record in records:
        v.feed(record)
    return v


def updates(records: Iterable[Record], replace: bool) -> list[BookUpdate]:
    return [u for r in records for u in r.updates if u.replace == replace]


@pytest.fixture(scope="module")
def capture(shared_data: Path) -> Path:
    return shared_data / KRAKEN_DIR / "KRAKEN.ws.50.0"


@pytest.fixture(scope="module")
def records(capture: Path) -> list[Record]:
    return read_capture_file(capture)


@pytest.fixture(scope="module")
def rebuilt(records: list[Record]) -> Verifier:
    return rebuild(records)


def test_kraken_every_checksum_matches(rebuilt):
    report = rebuilt.report
    assert report.mismatches == [] and report.rejected == []
    assert report.by_kind() == {"checksum": (EXPECTED_UPDATES, EXPECTED_UPDATES)}
    assert {s: r.checks["checksum"] for s, r in report.symbols.items()} == EXPECTED_PER_PAIR
    assert report.ok


def test_kraken_capture_shape(capture, records, rebuilt):
    # Guards that the reader really read what the README describes.
    snapshots = {u.symbol: (len(u.asks), len(u.bids)) for u in updates(records, replace=True)}
    assert snapshots == EXPECTED_SNAPSHOT_DEPTH
    changes = [level for u in updates(records, replace=False) for level in (*u.bids, *u.asks)]
    assert len(changes) == EXPECTED_LEVEL_CHANGES
    assert sum(size == 0 for _, size in changes) == EXPECTED_DELETIONS
    assert Counter(u.symbol for u in updates(records, replace=False)) == EXPECTED_PER_PAIR
    # Heartbeats and control messages are in the file but yield no record.
    raw = capture.read_text(encoding="utf-8").splitlines()
    assert sum('"event":"heartbeat"' in line for line in raw) == 31
    assert len(records) == len(EXPECTED_SNAPSHOT_DEPTH) + EXPECTED_UPDATES
    # No republish entries and no depth trims here (both shown synthetically
    # below): no 4-element level, and the records do not depend on the depth.
    assert not any('"r"]' in line for line in raw)
    assert read_capture_file(capture, depth=10**6) == records
    # ADA/XBT: prices like "0.000022900" (9 dp), volumes like "13355.87450757" (8 dp).
    scales = {i.symbol: (i.price_scale, i.size_scale) for r in records for i in r.instruments}
    assert len(scales) == 10
    assert scales["ADA/XBT"] == (9, 8)
    assert scales["XBT/CHF"] == (5, 8)
    for symbol in scales:
        book = rebuilt.book(symbol)
        book.check()
        assert book.bid_count() <= KRAKEN_DEPTH and book.ask_count() <= KRAKEN_DEPTH
        assert not book.crossed()


def as_volume_deltas(records: Iterable[Record]) -> Iterator[Record]:
    """The plausible mistake of reading each volume as a change of size."""
    books: dict[str, Book] = {}
    for record in records:
        out = []
        for u in record.updates:
            book = books.setdefault(u.symbol, Book())
            if u.replace:
                book.replace(u.bids, u.asks)
                out.append(u)
                continue
            bids = tuple((p, book.bid_size(p) + s if s else 0) for p, s in u.bids)
            asks = tuple((p, book.ask_size(p) + s if s else 0) for p, s in u.asks)
            for p, s in bids:
                book.set_bid(p, s)
            for p, s in asks:
                book.set_ask(p, s)
            out.append(dataclasses.replace(u, bids=bids, asks=asks))
        yield dataclasses.replace(record, updates=tuple(out))


def test_kraken_checksum_is_sensitive(capture):
    # The mistake must be caught, which shows the match above is not vacuous.
    with capture.open(encoding="utf-8") as f:
        report = verify(as_volume_deltas(kraken.read(itertools.islice(f, 600))))
    assert report.checked > 100
    assert report.mismatch_count > report.checked // 2
    assert not report.ok


# ----------------------------------------------------------------------------- synthetic Kraken lines

SUBSCRIBED = (
    '1.0: {"channelID":7,"channelName":"book-1000","event":"subscriptionStatus","pair":"T/X","status":"subscribed"}'
)
SNAPSHOT = (
    '1.1: [7,{"as":[["1.50","2.000","1.0"],["1.60","1.000","1.0"]],"bs":[["1.40","1.000","1.0"]]},"book-1000","T/X"]'
)


def update_line(ts: str, side: str, entries: str, checksum: int) -> str:
    return f'{ts}: [7,{{"{side}":[{entries}],"c":"{checksum}"}},"book-1000","T/X"]'


def test_kraken_depth_trim():
    # The capture never exceeds 1000 levels, so the trim rule is shown here:
    # a better ask pushes the worst one out without any delete being sent.
    expected = Book()
    expected.replace([(140, 1000)], [(145, 7000), (150, 2000)])
    lines = [SUBSCRIBED, SNAPSHOT, update_line("1.2", "a", '["1.45","7.000","1.1"]', expected.checksum())]
    # The level that fell out stays out when a level below it is deleted.
    expected_after = expected.copy()
    expected_after.set_ask(150, 0)
    lines.append(update_line("1.3", "a", '["1.50","0.000","1.2"]', expected_after.checksum()))
    records = list(kraken.read(lines, depth=2))
    # The removal Kraken never sends travels in the same update as its cause.
    assert records[1].updates[0].asks == ((145, 7000), (160, 0))
    v = rebuild(records)
    assert v.report.mismatch_count == 0 and v.report.by_kind() == {"checksum": (2, 2)}
    assert v.book("T/X").asks() == [(145, 7000)]
    # Without the trim (depth 1000) the pushed-out level stays and both checksums fail.
    assert verify(kraken.read(lines)).mismatch_count == 2


def test_kraken_republish_entry_is_applied():
    # The capture has no "r" entries; feed one through the same reader.
    book = Book()
    book.replace([(140, 3500)], [(150, 2000), (160, 1000)])
    lines = [SUBSCRIBED, SNAPSHOT, update_line("1.2", "b", '["1.40","3.500","1.1","r"]', book.checksum())]
    records = list(kraken.read(lines))
    assert records[1].updates[0].bids == ((140, 3500),)
    v = rebuild(records)
    assert v.report.by_kind() == {"checksum": (1, 1)} and v.report.ok
    assert v.book("T/X") == book
