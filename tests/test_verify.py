"""The reference checks themselves: each kind passes on the right book and
names what differs on a wrong one."""

from __future__ import annotations

import pytest

from orderbook.core.book import Book
from orderbook.core.events import BookUpdate
from orderbook.core.instrument import Instrument
from orderbook.replay.records import BestPrices, Checksum, Record, TopLevels
from orderbook.replay.verify import check_reference, verify

pytestmark = pytest.mark.timeout(30)


def book(bids, asks) -> Book:
    b = Book()
    b.replace(bids, asks)
    return b


B = book([(99, 5), (98, 1), (97, 2)], [(101, 3), (102, 4)])


def test_checksum():
    assert check_reference(B, Checksum("X", B.checksum())) is None
    assert "checksum" in check_reference(B, Checksum("X", B.checksum() ^ 1))


def test_best_prices_with_and_without_sizes():
    assert check_reference(B, BestPrices("X", (99, 5), (101, 3))) is None
    assert "best bid" in check_reference(B, BestPrices("X", (99, 4), (101, 3)))
    assert check_reference(B, BestPrices("X", (99, 0), (101, 0), False, False)) is None
    assert "best ask" in check_reference(B, BestPrices("X", (99, 0), (100, 0), False, False))
    assert "best ask" in check_reference(book([(1, 1)], []), BestPrices("X", (1, 1), (2, 1)))
    assert check_reference(book([(1, 1)], []), BestPrices("X", (1, 1), None)) is None


def test_top_levels():
    assert check_reference(B, TopLevels("X", ((99, 5), (98, 1)), ((101, 3), (102, 4)))) is None
    problem = check_reference(B, TopLevels("X", ((99, 5), (98, 2)), ()))
    assert problem == "bids differ at level 2: (98, 1) != venue's (98, 2)"
    # At most `depth` levels: a level the venue no longer shows must be gone.
    assert "at most 2" in check_reference(B, TopLevels("X", ((99, 5), (98, 1)), ((101, 3), (102, 4)), depth=2))


def test_a_short_side_must_be_the_whole_side():
    # The venue shows 2 asks of a 3-deep view: a third ask is one too many.
    ref = TopLevels("X", ((99, 5), (98, 1), (97, 2)), ((101, 3), (102, 4)), depth=3)
    assert check_reference(B, ref) is None
    extra = book([(99, 5), (98, 1), (97, 2)], [(101, 3), (102, 4), (103, 1)])
    assert check_reference(extra, ref) == "asks: 3 levels, venue shows only 2"
    # A side the venue shows empty must be empty.
    assert check_reference(B, TopLevels("X", ref.bids, (), depth=3)) == "asks: 2 levels, venue shows only 0"


def test_report_counts_and_rejections():
    inst = Instrument("X", 0, 0)
    records = [
        Record(
            1, (inst,), (BookUpdate("X", ((99, 5),), ((101, 3),), replace=True),), (BestPrices("X", (99, 5), (101, 3)),)
        ),
        Record(2, (), (BookUpdate("X", ((99, 0),)),), (BestPrices("X", (99, 5), (101, 3)),)),
        Record(3, (), (BookUpdate("X", ((98, -1),)),)),  # the server would refuse a negative size
    ]
    report = verify(records)
    assert report.by_kind() == {"best bid/ask": (1, 2)}
    assert report.mismatch_count == 1 and report.mismatches[0].record == 1
    assert report.rejected and "record 2" in report.rejected[0]
    assert not report.ok
    assert any(line.startswith("FAILED") for line in report.lines())
    assert not verify([]).ok  # nothing checked is not a pass
