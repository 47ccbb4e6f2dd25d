"""The book checksum, proven equal to Kraken's on a real capture."""

from __future__ import annotations

import json
import zlib
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orderbook.core.book import Book
from orderbook.core.checksum import CHECKSUM_DEPTH, book_checksum

pytestmark = pytest.mark.timeout(120)

KRAKEN_DIR = "kraken-book-2021-04-17"
KRAKEN_DEPTH = 1000  # subscribed depth; Kraken trims silently beyond it

# From the capture's README.
EXPECTED_UPDATES = 4269
EXPECTED_LEVEL_CHANGES = 4272
EXPECTED_DELETIONS = 1615
EXPECTED_PER_PAIR = {
    "ADA/XBT": 347, "ETH/CHF": 317, "GRT/ETH": 20, "KSM/XBT": 335, "OCEAN/XBT": 148,
    "OMG/USD": 573, "SC/EUR": 818, "WAVES/EUR": 576, "XBT/CHF": 289, "XMR/USD": 846,
}
EXPECTED_SNAPSHOT_DEPTH = {  # (asks, bids)
    "ADA/XBT": (841, 707), "XBT/CHF": (316, 502), "OMG/USD": (300, 225),
    "OCEAN/XBT": (249, 153), "ETH/CHF": (151, 278), "SC/EUR": (588, 849),
    "GRT/ETH": (73, 60), "KSM/XBT": (243, 193), "XMR/USD": (429, 654),
    "WAVES/EUR": (273, 389),
}


# ----------------------------------------------------------------------------- unit tests


def test_known_value():
    # "5005" "500" then "5004" "1000"
    assert book_checksum([(5005, 500)], [(5004, 1000)]) == zlib.crc32(b"50055005004" b"1000")
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


def _decimals(text: str) -> int:
    return len(text.partition(".")[2])


def _units(text: str) -> int:
    # Kraken's rule: drop the '.' and leading zeros; int() does the latter.
    return int(text.replace(".", ""))


class KrakenReplay:
    """Rebuilds every pair's book from the raw capture, checking each checksum."""

    def __init__(self, depth: int = KRAKEN_DEPTH) -> None:
        self.depth = depth
        self.trimmed = 0
        self.books: dict[str, Book] = {}
        self.scales: dict[str, tuple[int, int]] = {}  # pair -> (price dp, size dp)
        self.channels: dict[int, str] = {}
        self.snapshots: dict[str, tuple[int, int]] = {}
        self.updates = Counter()
        self.level_changes = 0
        self.deletions = 0
        self.republished = 0
        self.heartbeats = 0
        self.mismatches: list[tuple[str, int, int, int]] = []
        self.checked = 0

    def _scale_check(self, pair: str, price: str, size: str) -> None:
        # Kraken writes a fixed number of decimals per pair: the scales are those.
        got = (_decimals(price), _decimals(size))
        want = self.scales.setdefault(pair, got)
        assert got == want, f"{pair}: {price} {size} breaks the fixed decimals {want}"

    def _levels(self, pair: str, entries: list[list[str]]) -> list[tuple[int, int]]:
        out = []
        for entry in entries:
            price, size = entry[0], entry[1]
            if len(entry) > 3:
                assert entry[3] == "r", entry  # republish: applied like any update
                self.republished += 1
            self._scale_check(pair, price, size)
            out.append((_units(price), _units(size)))
        return out

    def feed_line(self, line: str) -> None:
        line = line.rstrip("\r\n")
        if not line or line.startswith("wss://") or line.startswith("configuration:"):
            return
        _, sep, body = line.partition(": ")
        assert sep, line[:80]
        msg = json.loads(body)
        if isinstance(msg, dict):
            if msg.get("event") == "subscriptionStatus":
                self.channels[msg["channelID"]] = msg["pair"]
            elif msg.get("event") == "heartbeat":
                self.heartbeats += 1
            return
        pair = msg[-1]
        assert msg[-2] == "book-1000"
        assert self.channels[msg[0]] == pair
        payloads = msg[1:-2]
        if "as" in payloads[0] or "bs" in payloads[0]:
            self._snapshot(pair, payloads[0])
        else:
            self._update(pair, payloads)

    def _snapshot(self, pair: str, snap: dict) -> None:
        asks = self._levels(pair, snap.get("as", []))
        bids = self._levels(pair, snap.get("bs", []))
        assert asks == sorted(asks) and bids == sorted(bids, reverse=True)
        book = Book()
        book.replace(bids, asks)
        book.check()
        self.books[pair] = book
        self.snapshots[pair] = (len(asks), len(bids))

    def _update(self, pair: str, payloads: list[dict]) -> None:
        book = self.books[pair]
        checksum = None
        for part in payloads:
            for price, size in self._levels(pair, part.get("a", [])):
                book.set_ask(price, size)
                self.level_changes += 1
                self.deletions += size == 0
            for price, size in self._levels(pair, part.get("b", [])):
                book.set_bid(price, size)
                self.level_changes += 1
                self.deletions += size == 0
            if "c" in part:
                checksum = int(part["c"])
        # Kraken trims each side to the subscribed depth after every message.
        while book.ask_count() > self.depth:
            book.set_ask(book.asks()[-1][0], 0)
            self.trimmed += 1
        while book.bid_count() > self.depth:
            book.set_bid(book.bids()[-1][0], 0)
            self.trimmed += 1
        assert checksum is not None, f"{pair}: update without checksum"
        self.updates[pair] += 1
        computed = book.checksum()
        self.checked += 1
        if computed != checksum:
            self.mismatches.append((pair, self.updates[pair], checksum, computed))


def replay(path: Path) -> KrakenReplay:
    r = KrakenReplay()
    with path.open(encoding="utf-8") as f:
        for line in f:
            r.feed_line(line)
    return r


@pytest.fixture(scope="module")
def kraken(shared_data: Path) -> KrakenReplay:
    return replay(shared_data / KRAKEN_DIR / "KRAKEN.ws.50.0")


def test_kraken_every_checksum_matches(kraken):
    assert kraken.mismatches == []
    assert kraken.checked == EXPECTED_UPDATES
    assert sum(kraken.updates.values()) == EXPECTED_UPDATES
    assert dict(kraken.updates) == EXPECTED_PER_PAIR


def test_kraken_capture_shape(kraken):
    # Guards that the parser really read what the README describes.
    assert kraken.snapshots == EXPECTED_SNAPSHOT_DEPTH
    assert kraken.level_changes == EXPECTED_LEVEL_CHANGES
    assert kraken.deletions == EXPECTED_DELETIONS
    assert kraken.heartbeats == 31
    assert kraken.republished == 0 and kraken.trimmed == 0  # both shown synthetically below
    assert len(kraken.channels) == 10
    # ADA/XBT: prices like "0.000022900" (9 dp), volumes like "13355.87450757" (8 dp).
    assert kraken.scales["ADA/XBT"] == (9, 8)
    assert kraken.scales["XBT/CHF"] == (5, 8)
    for book in kraken.books.values():
        book.check()
        assert book.bid_count() <= KRAKEN_DEPTH and book.ask_count() <= KRAKEN_DEPTH
        assert not book.crossed()


def test_kraken_checksum_is_sensitive(shared_data: Path):
    # A plausible mistake (treating the volume as a delta) must be caught,
    # which shows the match above is not vacuous.
    path = shared_data / KRAKEN_DIR / "KRAKEN.ws.50.0"

    class DeltaVolume(KrakenReplay):
        def _update(self, pair, payloads):
            book = self.books[pair]
            for part in payloads:
                for price, size in self._levels(pair, part.get("a", [])):
                    book.set_ask(price, book.ask_size(price) + size if size else 0)
                for price, size in self._levels(pair, part.get("b", [])):
                    book.set_bid(price, book.bid_size(price) + size if size else 0)
                if "c" in part:
                    self.checked += 1
                    if book.checksum() != int(part["c"]):
                        self.mismatches.append((pair, 0, 0, 0))

    wrong = DeltaVolume()
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f):
            wrong.feed_line(line)
            if n > 600:
                break
    assert wrong.checked > 100
    assert len(wrong.mismatches) > wrong.checked // 2


def _synthetic(depth: int) -> KrakenReplay:
    r = KrakenReplay(depth)
    r.feed_line('1.0: {"channelID":7,"channelName":"book-1000","event":"subscriptionStatus",'
                '"pair":"T/X","status":"subscribed"}')
    r.feed_line('1.1: [7,{"as":[["1.50","2.000","1.0"],["1.60","1.000","1.0"]],'
                '"bs":[["1.40","1.000","1.0"]]},"book-1000","T/X"]')
    return r


def test_kraken_depth_trim():
    # The capture never exceeds 1000 levels, so the trim rule is shown here:
    # a better ask pushes the worst one out without any delete being sent.
    r = _synthetic(depth=2)
    expected = Book()
    expected.replace([(140, 1000)], [(145, 7000), (150, 2000)])
    r.feed_line(f'1.2: [7,{{"a":[["1.45","7.000","1.1"]],"c":"{expected.checksum()}"}},'
                '"book-1000","T/X"]')
    assert r.trimmed == 1
    assert r.mismatches == []
    assert r.books["T/X"] == expected
    # The level that fell out stays out when a level below it is deleted.
    expected.set_ask(150, 0)
    r.feed_line(f'1.3: [7,{{"a":[["1.50","0.000","1.2"]],"c":"{expected.checksum()}"}},'
                '"book-1000","T/X"]')
    assert r.mismatches == []
    assert r.books["T/X"].asks() == [(145, 7000)]


def test_kraken_republish_entry_is_applied():
    # The capture has no "r" entries; feed one through the same parser.
    r = _synthetic(depth=KRAKEN_DEPTH)
    book = Book()
    book.replace([(140, 3500)], [(150, 2000), (160, 1000)])
    c = book.checksum()
    r.feed_line(f'1.2: [7,{{"b":[["1.40","3.500","1.1","r"]],"c":"{c}"}},"book-1000","T/X"]')
    assert r.republished == 1
    assert r.mismatches == []
    assert r.books["T/X"] == book
