"""Bounded history and the resume decision."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orderbook.core.errors import InvariantViolation
from orderbook.core.events import BookUpdate
from orderbook.core.follower import BookFollower
from orderbook.core.history import History, HistoryLimits
from orderbook.core.instrument import Instrument
from orderbook.core.resume import Decision, ResumePoint, SnapshotReason, decide
from orderbook.core.sequencer import SequencedBook

pytestmark = pytest.mark.timeout(120)

EPOCH = 5
INST = Instrument("X", 0, 0)

levels = st.lists(st.tuples(st.integers(-6, 6), st.integers(0, 3)), max_size=4)
stream = st.lists(
    st.tuples(levels, levels, st.sampled_from([False] * 5 + [True]), st.integers(0, 60)),
    max_size=25,
)
limits = st.builds(
    HistoryLimits,
    max_entries=st.one_of(st.just(0), st.integers(0, 10), st.just(10_000)),
    max_bytes=st.one_of(st.just(0), st.integers(0, 250), st.just(8 * 1024 * 1024)),
)


def longest_fitting_suffix(sizes: list[int], lim: HistoryLimits) -> int:
    """How many newest entries fit both limits (the oldest are dropped first)."""
    n, total = 0, 0
    for size in reversed(sizes):
        if n + 1 > lim.max_entries or total + size > lim.max_bytes:
            break
        n, total = n + 1, total + size
    return n


@settings(max_examples=150, deadline=None, report_multiple_bugs=False)
@given(stream, limits, st.integers(0, 3))
def test_resume_from_every_seq(steps, lim, start_seq):
    sb = SequencedBook(INST, EPOCH, seq=start_seq)
    hist: History = History(lim, start_seq)
    books = {start_seq: sb.book.copy()}
    sizes: list[int] = []
    for bids, asks, replace, nbytes in steps:
        d = sb.apply(BookUpdate("X", tuple(bids), tuple(asks), replace))
        if d is None:
            continue
        hist.append(d.seq, d.prev_seq, d, nbytes)
        sizes.append(nbytes)
        books[d.seq] = sb.book.copy()
        # The limits hold after every append, and nothing more is dropped than needed.
        assert len(hist) <= lim.max_entries and hist.nbytes <= lim.max_bytes
        kept = longest_fitting_suffix(sizes, lim)
        assert len(hist) == kept
        assert hist.nbytes == sum(sizes[len(sizes) - kept :])
        assert hist.head_seq == sb.seq
        assert hist.base_seq == sb.seq - kept

    head = sb.seq
    for r in range(head + 3):
        dec = decide(EPOCH, head, hist, ResumePoint(EPOCH, r))
        if r > head:
            assert dec == Decision(False, reason=SnapshotReason.AHEAD)
        elif r < hist.base_seq:
            assert dec == Decision(False, reason=SnapshotReason.HISTORY_EXHAUSTED)
        else:
            assert dec.resumed and dec.reason is None
            # Exactly the deltas after r: no gap, no duplicate; the follower
            # checks prev_seq and every checksum on the way.
            assert [d.seq for d in dec.replay] == list(range(r + 1, head + 1))
            f = BookFollower("X")
            at = books[r]
            f.apply_snapshot(EPOCH, r, at.bids(), at.asks(), at.checksum())
            for d in dec.replay:
                f.apply_delta(d.epoch, d.seq, d.prev_seq, d.bids, d.asks, d.checksum)
            assert f.book == sb.book and f.seq == head and f.synced
        # The reasons that do not depend on the history.
        assert decide(EPOCH, head, hist, None) == Decision(False, reason=SnapshotReason.NEW)
        assert decide(EPOCH, head, hist, ResumePoint(EPOCH + 1, r)).reason is SnapshotReason.STALE_EPOCH
        for depth in (1, 10):
            assert decide(EPOCH, head, hist, ResumePoint(EPOCH, r), depth=depth) == Decision(
                False, reason=SnapshotReason.UNSUPPORTED
            )


@settings(max_examples=150, deadline=None, report_multiple_bugs=False)
@given(
    st.lists(st.tuples(st.integers(1, 4), st.integers(0, 30)), max_size=20),
    limits,
    st.integers(0, 100),
)
def test_merged_entries(jumps, lim, start):
    # Entries that span several seqs: resume works only at entry boundaries.
    hist: History = History(lim, start)
    chain = []  # (seq, prev, nbytes)
    seq = start
    for jump, nbytes in jumps:
        chain.append((seq + jump, seq, nbytes))
        hist.append(seq + jump, seq, (seq, seq + jump), nbytes)
        seq += jump
    kept = longest_fitting_suffix([n for _, _, n in chain], lim)
    retained = chain[len(chain) - kept :]
    assert len(hist) == kept and hist.nbytes == sum(n for _, _, n in retained)
    assert hist.head_seq == seq
    assert hist.base_seq == (retained[0][1] if retained else seq)
    boundaries = {prev for _, prev, _ in retained} | {seq}
    for r in range(start - 2, seq + 3):
        got = hist.since(r)
        if r in boundaries:
            assert got is not None
            assert got == [(p, s) for s, p, _ in retained if p >= r]
        else:
            assert got is None
            if 0 <= r <= seq:
                dec = decide(EPOCH, seq, hist, ResumePoint(EPOCH, r))
                assert dec.reason is SnapshotReason.HISTORY_EXHAUSTED


def test_history_docstring_example_and_chain():
    h: History = History(HistoryLimits(max_entries=2, max_bytes=100), start_seq=0)
    for seq in (1, 2, 3):
        h.append(seq, seq - 1, f"d{seq}", 10)
    assert (h.since(1), h.since(0), h.since(3), h.since(4)) == (["d2", "d3"], None, [], None)
    assert (h.base_seq, h.head_seq, len(h), h.nbytes) == (1, 3, 2, 20)
    with pytest.raises(InvariantViolation):
        h.append(5, 4, "gap", 1)  # prev_seq must be the head
    with pytest.raises(InvariantViolation):
        h.append(3, 3, "not after", 1)
    assert (h.head_seq, len(h)) == (3, 2)  # a refused append changes nothing
    h.reset(50)
    assert (h.base_seq, h.head_seq, len(h), h.nbytes) == (50, 50, 0, 0)
    assert (h.since(50), h.since(49)) == ([], None)
    h.append(51, 50, "d51", 1)
    assert h.since(50) == ["d51"]


def test_zero_limits_keep_nothing_but_resume_at_head():
    for lim in (HistoryLimits(0, 100), HistoryLimits(100, 0)):
        h: History = History(lim, start_seq=0)
        h.append(1, 0, "a", 1)
        h.append(2, 1, "b", 1)
        assert (len(h), h.nbytes, h.base_seq, h.head_seq) == (0, 0, 2, 2)
        assert h.since(2) == [] and h.since(1) is None
        assert decide(EPOCH, 2, h, ResumePoint(EPOCH, 2)) == Decision(True, replay=())


def test_entry_larger_than_limit_is_dropped():
    h: History = History(HistoryLimits(10, 50), start_seq=0)
    h.append(1, 0, "small", 20)
    h.append(2, 1, "huge", 51)
    assert (len(h), h.nbytes, h.base_seq) == (0, 0, 2)
    h.append(3, 2, "next", 50)
    assert h.since(2) == ["next"] and h.nbytes == 50


def test_limits_must_be_non_negative():
    HistoryLimits(0, 0)
    with pytest.raises(ValueError):
        HistoryLimits(max_entries=-1)
    with pytest.raises(ValueError):
        HistoryLimits(max_bytes=-1)


def test_decision_precedence():
    h: History = History(HistoryLimits(), start_seq=0)
    # Epoch is judged before depth, depth before ahead.
    assert decide(1, 0, h, ResumePoint(2, 99), depth=5).reason is SnapshotReason.STALE_EPOCH
    assert decide(1, 0, h, ResumePoint(1, 99), depth=5).reason is SnapshotReason.UNSUPPORTED
    assert decide(1, 0, h, ResumePoint(1, 99)).reason is SnapshotReason.AHEAD
    assert decide(1, 0, h, None, depth=5).reason is SnapshotReason.NEW
    assert decide(1, 0, h, ResumePoint(1, 0)) == Decision(True, replay=())
