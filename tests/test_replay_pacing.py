"""Pacing, windows and loops of the player, driven by an injected clock:
nobody sleeps through a recording."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orderbook.core.events import BookUpdate, FeedBatch
from orderbook.core.instrument import Instrument
from orderbook.replay.pacing import Pacer, parse_speed
from orderbook.replay.player import play
from orderbook.replay.records import Record
from orderbook.replay.verify import Verifier, verify
from orderbook.replay.window import TimePoint, parse_time, within

pytestmark = pytest.mark.timeout(60)

S = 1_000_000_000
T0 = 1_618_678_132 * S
INST = Instrument("X", 2, 0)


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.sleeps.append(seconds)
        self.t += seconds


class Collect:
    """Stands for the server's ingest: records what went out, and when."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.sent: list[tuple[float, FeedBatch, list[Record]]] = []
        self.drained = False

    async def send(self, batch, records) -> None:
        self.sent.append((self.clock.t, batch, list(records)))

    async def drain(self) -> None:
        self.drained = True


def recording(offsets_s: list[float], symbol: str = "X") -> list[Record]:
    out = [Record(T0, (INST,), (BookUpdate(symbol, ((100, 1),), ((101, 1),), replace=True),))]
    for i, off in enumerate(offsets_s):
        out.append(Record(T0 + int(off * S), (), (BookUpdate(symbol, ((100, i + 2),)),)))
    return out


async def run(records, **kw):
    clock = FakeClock()
    sink = Collect(clock)
    stats = await play(lambda: iter(records), sink, clock=clock, **kw)
    return clock, sink, stats


async def test_recorded_pace():
    clock, sink, stats = await run(recording([0.5, 0.5, 2.0, 3.0]))
    # Records due at the same instant share a batch; each goes out when due.
    assert [round(t - 100.0, 6) for t, _, _ in sink.sent] == [0.0, 0.5, 2.0, 3.0]
    assert [len(recs) for _, _, recs in sink.sent] == [1, 2, 1, 1]
    assert stats.records == 5 and stats.laps == 1 and sink.drained
    assert sum(clock.sleeps) == pytest.approx(3.0)


async def test_speed_factor():
    clock, sink, _ = await run(recording([1.0, 10.0]), speed=10)
    assert [round(t - 100.0, 6) for t, _, _ in sink.sent] == [0.0, 0.1, 1.0]
    assert sum(clock.sleeps) == pytest.approx(1.0)


async def test_max_speed_never_sleeps_and_batches():
    clock, sink, stats = await run(recording([i * 0.01 for i in range(2000)]), speed=0, max_batch=500)
    assert clock.sleeps == []
    assert stats.records == 2001 and stats.updates == 2001
    assert all(len(b.updates) <= 500 for _, b, _ in sink.sent)
    # Only the first batch carries the definition.
    assert [len(b.instruments) for _, b, _ in sink.sent].count(1) == 1


async def test_time_going_backwards_keeps_file_order():
    # Rounded or merged timestamps can step back; the record waits for none.
    _, sink, _ = await run(recording([1.0, 0.5, 2.0]))
    assert [round(t - 100.0, 6) for t, _, _ in sink.sent] == [0.0, 1.0, 2.0]
    assert [r.updates[0].bids[0][1] for _, _, recs in sink.sent for r in recs[-1:]][1:] == [3, 4]


async def test_loop_restarts_from_the_recorded_start():
    _, sink, stats = await run(recording([1.0]), loop=True, laps=3)
    assert stats.laps == 3
    times = [round(t - 100.0, 6) for t, _, _ in sink.sent]
    # Each lap lasts 1 s, and the next starts 1 s (the default gap) after it.
    assert times == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    # A lap opens with the recording's own snapshot (replace), so books restart.
    assert [b.updates[0].replace for _, b, _ in sink.sent] == [True, False] * 3


async def test_window_opens_with_the_books_as_they_were():
    records = recording([1.0, 2.0, 3.0, 4.0])
    clock, sink, _ = await run(records, start=parse_time("+2.5s"), end=parse_time("+3.5"))
    first_batch = sink.sent[0][1]
    assert first_batch.updates[0].replace
    # The book at +2.5 s: bid 100 had size 3 (set by the record at +2 s).
    assert first_batch.updates[0].bids == ((100, 3),)
    assert [r.updates[0].bids for _, _, recs in sink.sent[1:] for r in recs] == [((100, 4),)]
    # The window starts at once: nothing before it is waited for.
    assert clock.sleeps and clock.sleeps[0] == pytest.approx(0.5)


def test_window_after_the_end_is_empty():
    assert list(within(recording([1.0]), parse_time("+5s"))) == []


def test_window_absolute_times():
    records = recording([1.0, 2.0])
    start = parse_time("2021-04-17T16:48:53Z")  # T0 + 1 s
    assert start.ns == T0 + S and not start.relative
    got = list(within(records, start))
    assert got[0].note == "window opens" and got[0].updates[0].bids == ((100, 1),)
    assert got[1].time_ns == T0 + S


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 10**10), min_size=1, max_size=40), st.integers(1, 10**10))
def test_window_keeps_the_books_exact(steps, cut_ns):
    """Books after a windowed play equal books after the whole recording."""
    records = [recording([])[0]] + [
        Record(T0 + t, (), (BookUpdate("X", ((100 + i % 7, i % 3),), ((200 + i % 5, (i + 1) % 4),)),))
        for i, t in enumerate(sorted(steps))
    ]
    windowed = verify(within(iter(records), TimePoint(cut_ns, relative=True)))
    whole = verify(iter(records))
    assert windowed.rejected == [] and whole.rejected == []
    if records[-1].time_ns >= T0 + cut_ns:
        v, w = Verifier(), Verifier()
        for r in within(iter(records), TimePoint(cut_ns, relative=True)):
            v.feed(r)
        for r in records:
            w.feed(r)
        assert v.book("X") == w.book("X")
    else:
        assert windowed.records == 0


def test_parse_speed_and_time():
    assert parse_speed("10x") == 10 and parse_speed("max") == 0 and parse_speed("0.5") == 0.5
    for bad in ("-1", "fast-ish", "nan", "0.0.1"):
        with pytest.raises(ValueError):
            parse_speed(bad)
    assert parse_time("+1.5m").ns == 90 * S and parse_time("250ms").ns == S // 4
    with pytest.raises(ValueError, match="not a time"):
        parse_time("yesterday")
    with pytest.raises(ValueError):
        Pacer(-1)
