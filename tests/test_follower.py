"""The receiving side: continuity, checksums, resynchronisation."""

from __future__ import annotations

import pytest

from orderbook.core.book import Book
from orderbook.core.errors import (
    ChecksumMismatch,
    DuplicateDelta,
    EpochMismatch,
    NotSynced,
    SequenceGap,
    StreamError,
)
from orderbook.core.events import BookUpdate
from orderbook.core.follower import BookFollower
from orderbook.core.instrument import Instrument
from orderbook.core.resume import ResumePoint
from orderbook.core.sequencer import SequencedBook

pytestmark = pytest.mark.timeout(60)

EPOCH = 11
INST = Instrument("F", 2, 3)


def checksum_of(bids, asks) -> int:
    b = Book()
    b.replace(bids, asks)
    return b.checksum()


@pytest.fixture
def pair():
    """A server-side book at seq 3 and a follower synced to it."""
    sb = SequencedBook(INST, EPOCH)
    sb.apply(BookUpdate("F", bids=((100, 1), (99, 2)), asks=((101, 3),)))
    sb.apply(BookUpdate("F", asks=((102, 4),)))
    sb.apply(BookUpdate("F", bids=((98, 5),)))
    snap = sb.snapshot()
    f = BookFollower("F")
    assert f.resume_point() is None and not f.synced
    f.apply_snapshot(snap.epoch, snap.seq, snap.bids, snap.asks, snap.checksum, snap.instrument)
    assert f.synced and f.instrument is INST
    assert f.resume_point() == ResumePoint(EPOCH, 3)
    return sb, f


def next_delta(sb):
    return sb.apply(BookUpdate("F", bids=((100, 7),), asks=((101, 0),)))


def send(f, d, **change):
    args = {
        "epoch": d.epoch,
        "seq": d.seq,
        "prev_seq": d.prev_seq,
        "bids": d.bids,
        "asks": d.asks,
        "checksum": d.checksum,
    }
    args.update(change)
    f.apply_delta(**args)


def assert_unsynced(f):
    assert not f.synced and f.resume_point() is None


def test_in_order_deltas_follow_the_book(pair):
    sb, f = pair
    for upd in (BookUpdate("F", bids=((100, 7),)), BookUpdate("F", asks=((101, 0), (103, 1)))):
        send(f, sb.apply(upd))
        assert f.book == sb.book and f.seq == sb.seq and f.synced
    assert f.resume_point() == ResumePoint(EPOCH, 5)


def test_gap(pair):
    sb, f = pair
    next_delta(sb)  # lost
    d = sb.apply(BookUpdate("F", bids=((97, 1),)))
    with pytest.raises(SequenceGap) as exc:
        send(f, d)
    assert (exc.value.expected, exc.value.got, exc.value.symbol) == (3, 4, "F")
    assert_unsynced(f)
    with pytest.raises(NotSynced):
        send(f, sb.apply(BookUpdate("F", bids=((96, 1),))))


@pytest.mark.parametrize("seq, prev", [(3, 2), (2, 1), (1, 0), (3, 3)])
def test_duplicate(pair, seq, prev):
    sb, f = pair
    book = f.book.copy()
    with pytest.raises(DuplicateDelta) as exc:
        send(f, next_delta(sb), seq=seq, prev_seq=prev)
    assert (exc.value.held, exc.value.got) == (3, seq)
    assert_unsynced(f)
    assert f.book == book  # nothing applied


def test_epoch_change(pair):
    sb, f = pair
    with pytest.raises(EpochMismatch) as exc:
        send(f, next_delta(sb), epoch=EPOCH + 1)
    assert (exc.value.held, exc.value.got) == (EPOCH, EPOCH + 1)
    assert_unsynced(f)


def test_checksum_mismatch(pair):
    sb, f = pair
    d = next_delta(sb)
    with pytest.raises(ChecksumMismatch) as exc:
        send(f, d, checksum=d.checksum ^ 1)
    assert (exc.value.seq, exc.value.expected, exc.value.computed) == (4, d.checksum ^ 1, d.checksum)
    assert_unsynced(f)


def test_delta_missing_a_level_is_caught_by_checksum(pair):
    sb, f = pair
    d = next_delta(sb)
    with pytest.raises(ChecksumMismatch):
        send(f, d, asks=())
    assert_unsynced(f)


def test_bad_snapshot_leaves_unsynced():
    f = BookFollower("F")
    bids, asks = ((5, 1),), ((6, 1),)
    with pytest.raises(ChecksumMismatch):
        f.apply_snapshot(EPOCH, 9, bids, asks, checksum_of(bids, asks) + 1)
    assert_unsynced(f)
    with pytest.raises(NotSynced):
        f.apply_delta(EPOCH, 10, 9, (), (), 0)
    # A correct snapshot resynchronises, also across an epoch change.
    f.apply_snapshot(EPOCH + 1, 2, bids, asks, checksum_of(bids, asks), depth=5)
    assert f.synced and f.depth == 5 and f.resume_point() == ResumePoint(EPOCH + 1, 2)


def test_snapshot_replaces_everything(pair):
    _, f = pair
    f.apply_snapshot(EPOCH, 50, ((1, 1),), (), checksum_of(((1, 1),), ()))
    assert f.book.bids() == [(1, 1)] and f.book.asks() == [] and f.seq == 50


def test_heartbeat(pair):
    sb, f = pair
    f.check_heartbeat(EPOCH, 3)
    assert f.synced
    next_delta(sb)  # the heartbeat says 4; we hold 3: we missed one
    with pytest.raises(SequenceGap):
        f.check_heartbeat(EPOCH, 4)
    assert_unsynced(f)
    f.check_heartbeat(EPOCH + 5, 99)  # ignored while unsynced


def test_heartbeat_epoch(pair):
    _, f = pair
    with pytest.raises(EpochMismatch):
        f.check_heartbeat(EPOCH + 1, 3)
    assert_unsynced(f)


def test_heartbeat_behind_is_a_gap(pair):
    _, f = pair
    with pytest.raises(SequenceGap):
        f.check_heartbeat(EPOCH, 2)
    assert_unsynced(f)


def test_desync_and_errors_are_stream_errors(pair):
    _, f = pair
    f.desync()
    assert_unsynced(f)
    for cls in (SequenceGap, DuplicateDelta, EpochMismatch, ChecksumMismatch, NotSynced):
        assert issubclass(cls, StreamError)
