"""The project's own recording format and `record`: live streams recorded
from real servers over real sockets read back into the servers' books;
record -> replay -> record again gives the same books and changes; the file
format survives any chunking, truncation, garbage and newer writers."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import io
import random
import tracemalloc
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orderbook.client.backoff import Backoff
from orderbook.client.client import HandshakeRejected
from orderbook.core.book import Book
from orderbook.core.events import BookUpdate, FeedBatch
from orderbook.core.history import HistoryLimits
from orderbook.core.instrument import Instrument
from orderbook.core.market import Market
from orderbook.core.sequencer import SequencedBook
from orderbook.replay.formats import recording
from orderbook.replay.formats.recording import NOTE_GAP, NOTE_RECONNECT
from orderbook.replay.recorder import Recorder, record
from orderbook.replay.records import Checksum, FormatError, Record, TopLevels
from orderbook.replay.verify import verify
from orderbook.v1 import recording_pb2
from orderbook.wire import codec
from orderbook.wire import recording as wire
from orderbook.wire.recording import RecordingTruncated

from .harness import FixedDelay, Publisher, eventually, instrument, serve_in_process, test_settings, update

pytestmark = pytest.mark.timeout(120)

EPOCH = 77
T0 = 1_700_000_000_000_000_000


# ----------------------------------------------------------------------------- helpers


def chunks_of(path: Path, size: int = 4096) -> Iterator[bytes]:
    with path.open("rb") as f:
        while chunk := f.read(size):
            yield chunk


def read_path(path: Path, **kw) -> list[Record]:
    return list(recording.read(chunks_of(path), source=path.name, **kw))


def books_after(records) -> dict[str, Book]:
    market = Market(epoch=1)
    for i, rec in enumerate(records):
        market.apply(FeedBatch(i, rec.instruments, rec.updates))
    return {sb.instrument.symbol: sb.book for sb in market}


def server_book(srv, symbol: str) -> Book:
    return srv.hub.channels[symbol].seqbook.book


def server_seq(srv, symbol: str) -> int:
    return srv.hub.channels[symbol].seqbook.seq


def quick_backoff(seed: int = 0) -> Backoff:
    return Backoff(base=0.02, cap=0.1, rng=random.Random(seed))


@contextlib.asynccontextmanager
async def recorder(url: str, symbols, out, **kw):
    """A Recorder running in the background; stopped (and its file closed) on exit."""
    stop = asyncio.Event()
    options = {"backoff": quick_backoff(), "resubscribe_base": 0.02, "resubscribe_cap": 0.1, "flush_interval": 0.05}
    options.update(kw)
    rec = Recorder(url, symbols, out, stop=stop, **options)
    task = asyncio.create_task(rec.run())
    try:
        yield rec
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


def churn(rng: random.Random, symbol: str, n: int, event_time: bool = False) -> list[BookUpdate]:
    """Random changes: sets, removals (some of absent levels: no change) and
    now and then a whole-book replace, as a venue snapshot would be."""
    out = []
    for _ in range(n):
        t = T0 + rng.randrange(10**9) if event_time else 0
        if rng.random() < 0.04:
            bids = tuple((p, rng.randint(1, 50)) for p in rng.sample(range(900, 1000), 6))
            asks = tuple((p, rng.randint(1, 50)) for p in rng.sample(range(1001, 1100), 6))
            out.append(BookUpdate(symbol, bids, asks, replace=True, event_time_ns=t))
            continue
        bids = tuple((rng.randrange(960, 1000), rng.choice([0, 0, *range(1, 40)])) for _ in range(rng.randint(0, 3)))
        asks = tuple((rng.randrange(1001, 1040), rng.choice([0, 0, *range(1, 40)])) for _ in range(rng.randint(0, 3)))
        out.append(BookUpdate(symbol, bids, asks, event_time_ns=t))
    return out


async def publish(pub, updates, instruments=()) -> None:
    reply = await pub.send(instruments, updates)
    assert reply.WhichOneof("kind") == "ack", reply


def level_changes(records) -> list[tuple[str, tuple, tuple, int]]:
    """Every incremental change, in order: (symbol, bids, asks, event time)."""
    return [(u.symbol, u.bids, u.asks, u.event_time_ns) for rec in records for u in rec.updates if not u.replace]


# ----------------------------------------------------------------------------- a stream from a model server


class Model:
    """What a server sends for one symbol, built with the server's own
    sequencing (real checksums), written straight into a recording."""

    def __init__(self, writer: wire.RecordingWriter, symbol: str = "A", epoch: int = EPOCH) -> None:
        self.writer = writer
        self.inst = Instrument(symbol, 2, 4)
        self.sb = SequencedBook(self.inst, epoch)
        self.t = T0
        self.offsets: list[int] = []  # entry offset of each message written

    def send(self, msg) -> None:
        self.t += 1000
        self.offsets.append(self.writer.entry_bytes)
        self.writer.write_message(self.t, msg)

    def subscribed(self, resumed: bool = False, request_id: int = 1) -> None:
        reason = None if resumed else codec.SnapshotReason.NEW
        self.send(
            codec.subscribed_message(
                self.inst.symbol, request_id, resumed, reason, self.sb.epoch, self.sb.seq, 0, self.inst
            )
        )

    def snapshot(self) -> None:
        self.send(codec.snapshot_message(self.sb.snapshot(0, self.t)))

    def change(self, bids=(), asks=(), send: bool = True) -> None:
        delta = self.sb.apply(BookUpdate(self.inst.symbol, tuple(bids), tuple(asks)))
        assert delta is not None
        if send:
            self.send(codec.delta_message(delta))

    def heartbeat(self) -> None:
        self.send(codec.heartbeat_message(self.inst.symbol, self.sb.epoch, self.sb.seq, self.t))


def new_file(gz: bool = False, symbols=("A",)) -> tuple[io.BytesIO, wire.RecordingWriter]:
    buf = io.BytesIO()
    w = wire.RecordingWriter(buf, gzip=gz)
    w.write_header(wire.RecordingInfo("ws://127.0.0.1:1/ws", tuple(symbols), T0))
    return buf, w


def finish(buf: io.BytesIO, w: wire.RecordingWriter) -> bytes:
    w.close()
    return buf.getvalue()


def model_stream(changes: int = 30, gz: bool = False) -> tuple[bytes, Model]:
    buf, w = new_file(gz)
    m = Model(w)
    m.change(bids=[(100, 5)], asks=[(101, 7)], send=False)  # the book before recording
    m.subscribed()
    m.snapshot()
    for i in range(changes):
        # Sizes unique per step: every change really changes the book.
        m.change(bids=[(90 + i % 11, i + 10)], asks=[(101 + i % 7, i + 1)])
        if i % 10 == 4:
            m.heartbeat()
    return finish(buf, w), m


def entries_of(chunks) -> list[tuple[int, int, bytes]]:
    """(offset, receive time, content) of every entry, for comparisons."""
    out = []
    for e in wire.decode(chunks):
        content = e.message.SerializeToString() if e.message is not None else repr((e.header, e.connection)).encode()
        out.append((e.offset, e.receive_time_ns, content))
    return out


# ----------------------------------------------------------------------------- the file format


@settings(max_examples=200, deadline=None)
@given(t=st.integers(-(2**63), 2**63 - 1), seq=st.integers(0, 2**64 - 1), symbol=st.text(max_size=20))
def test_a_message_entry_is_byte_for_byte_what_protobuf_writes(t, seq, symbol):
    # The recorder frames the bytes it received without re-encoding them;
    # any protobuf implementation must read them as the schema says.
    payload = codec.heartbeat_message(symbol, 3, seq, 5).SerializeToString()
    entry = recording_pb2.RecordingEntry(receive_time_ns=t)
    entry.message.ParseFromString(payload)
    assert wire.message_entry(t, payload) == wire.delimited(entry.SerializeToString())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(gz=st.booleans(), cuts=st.lists(st.integers(0, 10**6), max_size=40), data=st.data())
def test_any_chunking_gives_the_same_entries(gz, cuts, data):
    raw, _ = model_stream(40, gz)
    points = sorted({c % (len(raw) + 1) for c in cuts})
    pieces = [raw[a:b] for a, b in zip([0, *points], [*points, len(raw)], strict=True)]
    # Empty chunks, one-byte chunks, entries split anywhere: all the same.
    assert entries_of(pieces) == entries_of([raw])
    tiny = data.draw(st.integers(1, 7))
    assert entries_of([raw[i : i + tiny] for i in range(0, len(raw), tiny)]) == entries_of([raw])


def test_the_reader_streams_instead_of_loading_the_file():
    raw, _ = model_stream(2000)
    pulled = 0

    def chunks():
        nonlocal pulled
        for i in range(0, len(raw), 256):
            pulled += 1
            yield raw[i : i + 256]

    first = list(zip(range(5), recording.read(chunks()), strict=False))
    assert len(first) == 5
    assert pulled <= 3, "the reader read ahead far beyond the records taken"
    assert len(raw) // 256 > 100


def test_gzip_and_plain_give_the_same_records():
    plain, _ = model_stream(50)
    packed, _ = model_stream(50, gz=True)
    assert packed[:2] == b"\x1f\x8b" and len(packed) < len(plain)
    assert list(recording.read([plain])) == list(recording.read([packed]))
    # Files a standard gzip tool made (and a reader that inflates itself) too.
    assert list(recording.read([gzip.compress(plain)])) == list(recording.read([plain]))


def test_a_large_snapshot_inflates_in_bounded_steps():
    # Over 1 MiB of entry from a far smaller gzip stream: the inflater hits
    # its output limit and must still deliver every byte.
    buf, w = new_file(gz=True)
    m = Model(w)
    m.change(bids=[(p, 1 + p % 3) for p in range(1, 150_001)], asks=[(200_000, 1)], send=False)
    m.subscribed()
    m.snapshot()
    packed = finish(buf, w)
    assert len(packed) < wire.INFLATE_STEP < w.entry_bytes
    definition, snap = recording.read([packed])
    assert len(snap.updates[0].bids) == 150_000
    assert books_after([definition, snap])["A"] == m.sb.book


def test_a_gzip_bomb_is_refused_without_inflating_it_whole():
    # 64 MiB of zeros in a few hundred KB, given as one chunk, behind an
    # entry length beyond any real entry: the length is refused as soon as
    # it is read, and the inflater never holds more than INFLATE_STEP of
    # output at once, so memory stays far below what the stream expands to.
    c = zlib.compressobj(1, zlib.DEFLATED, 31)
    head = wire.header_entry(wire.RecordingInfo("ws://x/ws", ("A",), T0)) + wire.varint(wire.MAX_ENTRY_BYTES + 1)
    bomb = c.compress(head) + b"".join(c.compress(bytes(1 << 20)) for _ in range(64)) + c.flush()
    assert len(bomb) < (1 << 20)
    tracemalloc.start()
    try:
        with pytest.raises(FormatError, match="beyond any real entry"):
            list(recording.read([bomb]))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * wire.INFLATE_STEP, f"{peak:,} bytes held"


def test_bytes_after_the_gzip_stream_are_an_error_but_zero_padding_is_not():
    packed, _ = model_stream(5, gz=True)
    whole = list(recording.read([packed]))
    # Zero padding after the last member is allowed, as gzip(1) allows it.
    assert list(recording.read([packed + bytes(20)])) == whole
    got = []
    with pytest.raises(FormatError, match="corrupt gzip data"):
        for rec in recording.read([packed + b"not gzip"]):
            got.append(rec)
    assert got == whole


def test_concatenated_recordings_read_as_one():
    # `cat a.gz b.gz` is a valid gzip file; the second header starts afresh.
    first, _ = model_stream(10, gz=True)
    second, m2 = model_stream(20, gz=True)
    records = list(recording.read([first + second]))
    report = verify(records)
    assert report.ok, report.lines()
    assert books_after(records)["A"] == m2.sb.book
    assert sum(1 for r in records for u in r.updates if u.replace) == 2


def test_records_of_a_model_stream():
    raw, m = model_stream(30)
    records = list(recording.read([raw], source="model.rec"))
    definition, snap, *deltas = records
    assert definition.instruments == (m.inst,) and not definition.updates
    (u,) = snap.updates
    assert u.replace and u.bids == ((100, 5),) and u.asks == ((101, 7),)
    assert snap.checks == (
        Checksum("A", Book.checksum(_book([(100, 5)], [(101, 7)]))),
        TopLevels("A", ((100, 5),), ((101, 7),), 0),
    )
    assert len(deltas) == 30  # heartbeats give no record
    assert all(r.checks and isinstance(r.checks[0], Checksum) for r in deltas)
    # time_ns is the receive time; a delta with no event time gets that too.
    assert [r.time_ns for r in records] == sorted(r.time_ns for r in records)
    assert all(r.updates[0].event_time_ns == r.time_ns for r in deltas)
    report = verify(records)
    assert report.ok and report.by_kind() == {"checksum": (31, 31), "book": (1, 1)}, report.lines()
    assert books_after(records)["A"] == m.sb.book


def _book(bids, asks) -> Book:
    b = Book()
    b.replace(bids, asks)
    return b


def test_a_wrong_checksum_in_a_recording_fails_verification():
    # The checks are real: a recording whose delta disagrees with its own
    # checksum does not verify.
    buf, w = new_file()
    m = Model(w)
    m.subscribed()
    m.snapshot()
    m.change(bids=[(100, 5)])
    delta = m.sb.apply(BookUpdate("A", ((100, 6),)))
    m.send(codec.delta_message(delta._replace(checksum=delta.checksum ^ 1)))
    report = verify(recording.read([finish(buf, w)]))
    assert not report.ok and report.mismatch_count == 1 and report.mismatches[0].record == 3


def test_a_resync_snapshot_mid_recording_is_a_replace():
    # A slow recorder gets a fresh Snapshot (no Subscribed) at a later seq;
    # the seqs in between were never sent, which is no gap.
    buf, w = new_file()
    m = Model(w)
    m.subscribed()
    m.snapshot()
    m.change(bids=[(100, 5)])
    m.change(bids=[(99, 1)], send=False)
    m.change(asks=[(105, 3)], send=False)
    m.snapshot()
    m.change(bids=[(100, 0)])
    records = list(recording.read([finish(buf, w)]))
    replaces = [r for r in records if r.updates and r.updates[0].replace]
    assert len(replaces) == 2
    assert verify(records).ok
    assert books_after(records)["A"] == m.sb.book == _book([(99, 1)], [(105, 3)])


def gap_stream() -> tuple[bytes, Model]:
    buf, w = new_file()
    m = Model(w)
    m.subscribed()
    m.snapshot()
    m.change(bids=[(100, 5)])
    m.change(bids=[(101, 5)], send=False)  # lost
    m.change(bids=[(102, 5)])  # the gap: continues from seq 2, the file holds 1
    m.change(bids=[(103, 5)])
    m.snapshot()  # a resync
    m.change(asks=[(110, 1)])
    return finish(buf, w), m


def test_a_gap_is_an_error_naming_its_byte_offset():
    raw, m = gap_stream()
    got = []
    with pytest.raises(FormatError) as ei:
        for rec in recording.read([raw], source="g.rec"):
            got.append(rec)
    gap_offset = m.offsets[3]  # the fourth message written: delta 3
    assert ei.value.where == f"g.rec:{gap_offset}"
    assert "continues from seq 2" in str(ei.value) and "holds seq 1" in str(ei.value)
    assert len(got) == 3  # definition, snapshot, delta 1: all before the gap


def test_a_gap_noted_then_skipped_until_the_next_snapshot():
    raw, m = gap_stream()
    records = list(recording.read([raw], gaps="resync"))
    assert [r.note for r in records if r.note] == [NOTE_GAP]
    report = verify(records)
    assert report.ok and report.notes == {NOTE_GAP: 1}, report.lines()
    assert books_after(records)["A"] == m.sb.book
    # Deltas after the gap were skipped: 1 before, 1 after the resync.
    assert sum(1 for r in records for u in r.updates if not u.replace) == 2
    with pytest.raises(ValueError):
        recording.read([raw], gaps="ignore")


def test_a_heartbeat_ahead_of_the_recording_is_a_gap():
    buf, w = new_file()
    m = Model(w)
    m.subscribed()
    m.snapshot()
    m.change(bids=[(100, 5)], send=False)
    m.heartbeat()  # says seq 1; the recording holds 0
    with pytest.raises(FormatError, match="heartbeat at seq 1"):
        list(recording.read([finish(buf, w)]))


def test_a_resume_that_does_not_continue_the_recording_is_a_gap():
    buf, w = new_file()
    m = Model(w)
    m.subscribed()
    m.snapshot()
    m.change(bids=[(100, 5)], send=False)
    w.write_connection(m.t, wire.ConnectionEvent(False, 1006))
    w.write_connection(m.t, wire.ConnectionEvent(True))
    m.subscribed(resumed=True, request_id=2)  # resumed at seq 1; the file holds 0
    with pytest.raises(FormatError, match="resumed at seq 1"):
        list(recording.read([finish(buf, w)]))


def test_unknown_fields_and_newer_entry_kinds_are_ignored():
    raw, _ = model_stream(5)
    entries = []
    for e in wire.decode([raw]):
        body = raw[e.offset :]
        length, start = _varint(body)
        entries.append(body[start : start + length])
    # Field 15 (unknown) added to every entry; a new entry kind (field 20) between each.
    unknown_field = bytes([15 << 3 | 0]) + wire.varint(12345)
    new_kind = wire.varint(20 << 3 | 2) + wire.delimited(b"\x08\x01")
    extended = b"".join(
        wire.delimited(body + unknown_field) + (wire.delimited(new_kind) if i else b"")
        for i, body in enumerate(entries)
    )
    assert list(recording.read([extended])) == list(recording.read([raw]))


def _varint(data: bytes) -> tuple[int, int]:
    value = shift = pos = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def test_a_newer_format_version_is_refused():
    entry = recording_pb2.RecordingEntry(receive_time_ns=T0)
    entry.header.format = wire.FORMAT_NAME
    entry.header.version = wire.FORMAT_VERSION + 1
    with pytest.raises(FormatError, match="version 2 is not supported"):
        list(recording.read([wire.delimited(entry.SerializeToString())]))


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_a_truncated_file_yields_every_complete_entry_then_names_the_offset(gz):
    plain, _ = model_stream(20)
    whole = list(recording.read([plain]))
    offsets = [e.offset for e in wire.decode([plain])]
    last = offsets[-1]
    for cut in range(last + 1, len(plain)):
        data = gzip.compress(plain[:cut]) if gz else plain[:cut]
        got = []
        with pytest.raises(RecordingTruncated) as ei:
            for rec in recording.read([data], source="t.rec"):
                got.append(rec)
        assert ei.value.offset == last and ei.value.where == f"t.rec:{last}"
        assert ei.value.entries == len(offsets) - 1
        assert got == whole[:-1]  # the last entry was the last delta
    assert "stopped while writing" in str(ei.value)


@settings(max_examples=60, deadline=None)
@given(cut=st.integers(0, 10**6))
def test_a_gzip_file_cut_anywhere_yields_a_prefix_then_a_truncation_error(cut):
    plain, _ = model_stream(60)
    packed, _ = model_stream(60, gz=True)
    whole = list(recording.read([plain]))
    header_end = len(wire.header_entry(wire.RecordingInfo("ws://127.0.0.1:1/ws", ("A",), T0)))
    cut = 40 + cut % (len(packed) - 40)  # past the gzip header
    got = []
    with pytest.raises((RecordingTruncated, FormatError)) as ei:
        for rec in recording.read([packed[:cut]]):
            got.append(rec)
    # Either truncated, or so early that not even the header came through.
    assert isinstance(ei.value, RecordingTruncated) or "no complete header" in str(ei.value)
    assert got == whole[: len(got)]
    if isinstance(ei.value, RecordingTruncated):
        assert ei.value.offset >= header_end
    # A chunk source that inflates itself (gzip.open) reports the cut the same way.
    got2 = []
    with pytest.raises((RecordingTruncated, FormatError)):
        source = gzip.GzipFile(fileobj=io.BytesIO(packed[:cut]))
        for rec in recording.read(iter(lambda: source.read(1000), b"")):
            got2.append(rec)
    assert got2 == whole[: len(got2)]


@pytest.mark.parametrize(
    "data, why",
    [
        (b"", "empty file"),
        (b'1618678132.8413: {"event":"heartbeat"}\n', "not an orderbook recording"),
        (gzip.compress(b"a,b,c\n1,2,3\n" * 50), "not an orderbook recording"),
        (wire.delimited(codec.feed_message(FeedBatch(1)).SerializeToString()), "not an orderbook recording"),
        (b"\xff" * 12, "not an orderbook recording"),
        (b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + b"\xff" * 20, "corrupt gzip data"),
    ],
    ids=["empty", "a capture log", "gzip csv", "other protobuf", "bad length", "bad gzip"],
)
def test_a_file_in_another_format_is_a_clear_error(data, why):
    with pytest.raises(FormatError, match=why) as ei:
        list(recording.read([data], source="x.bin"))
    assert ei.value.where.startswith("x.bin:")
    assert not recording.sniff(data)


def test_a_corrupt_gzip_stream_is_an_error_after_a_prefix_of_the_records():
    plain, _ = model_stream(10)
    whole = list(recording.read([plain]))
    bad = bytearray(gzip.compress(plain))
    bad[-6] ^= 0xFF  # the CRC-32 in the trailer
    got = []
    with pytest.raises(FormatError, match="corrupt gzip data"):
        for rec in recording.read([bytes(bad[i : i + 64]) for i in range(0, len(bad), 64)]):
            got.append(rec)
    assert got == whole[: len(got)]


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_are_a_format_error_and_nothing_else(data):
    with pytest.raises(FormatError):
        list(recording.read([data]))


def test_sniff_recognises_recordings_from_their_first_bytes():
    plain, _ = model_stream(10)
    packed, _ = model_stream(10, gz=True)
    assert recording.sniff(plain[:4096]) and recording.sniff(packed[:4096])


# ----------------------------------------------------------------------------- recording live servers


async def test_a_recorded_stream_reads_back_into_the_servers_books(tmp_path):
    symbols = ["A", "B"]
    rng = random.Random(1)
    path = tmp_path / "live.rec"
    async with serve_in_process() as srv, Publisher.connect(srv.feed_url) as pub:
        await publish(
            pub, [update(s, bids=[(990, 5)], asks=[(1010, 7)]) for s in symbols], [instrument(s) for s in symbols]
        )
        async with recorder(srv.url, symbols, path) as rec:
            await eventually(lambda: rec.live == set(symbols), what="subscribed")
            before = {s: server_seq(srv, s) for s in symbols}
            for _ in range(40):
                await publish(pub, [u for s in symbols for u in churn(rng, s, 2, event_time=True)])
            await eventually(lambda: all(rec.positions[s].seq == server_seq(srv, s) for s in symbols))
        summary = rec.summary
        records = read_path(path)
        books = books_after(records)
        for s in symbols:
            assert books[s] == server_book(srv, s)
        report = verify(records)
        assert report.ok, report.lines()
        deltas = {s: server_seq(srv, s) - before[s] for s in symbols}
        for s in symbols:
            # One snapshot, then every change sequenced while recording.
            assert report.symbols[s].checks == {"checksum": deltas[s] + 1, "book": 1}
        assert summary.stopped_by == "stop" and summary.connects == 1
        assert summary.bytes == path.stat().st_size
        assert summary.messages == sum(summary.per_symbol.values())
        # Event times given by the publisher travel through the recording.
        # (the receive times are years later than these).
        event_times = [c[3] for c in level_changes(records)]
        assert event_times and all(T0 <= t < T0 + 10**9 for t in event_times)


async def test_record_then_replay_then_record_again_gives_the_same_books_and_changes(tmp_path):
    symbols = ["A", "B", "C"]
    rng = random.Random(7)
    file1, file2 = tmp_path / "first.rec", tmp_path / "second.rec.gz"
    # Server A: a live market recorded into file1.
    async with serve_in_process() as a, Publisher.connect(a.feed_url) as pub:
        await publish(pub, [u for s in symbols for u in churn(rng, s, 10)], [instrument(s) for s in symbols])
        async with recorder(a.url, symbols, file1) as rec1:
            await eventually(lambda: rec1.live == set(symbols), what="subscribed to A")
            for _ in range(60):
                await publish(pub, [u for s in symbols for u in churn(rng, s, 1)])
            await eventually(lambda: all(rec1.positions[s].seq == server_seq(a, s) for s in symbols))
        books_a = {s: server_book(a, s).copy() for s in symbols}
    first = read_path(file1)
    assert books_after(first) == books_a
    # Server B starts empty: the recorder asks for symbols it does not know
    # yet, then file1 is replayed into it through /feed.
    async with serve_in_process() as b, Publisher.connect(b.feed_url) as pub:
        async with recorder(b.url, symbols, file2) as rec2:
            await eventually(lambda: all(rec2.summary.per_symbol.get(s, 0) >= 2 for s in symbols), what="refusals")
            assert not rec2.live
            await publish(pub, [], [i for r in first for i in r.instruments])
            await eventually(lambda: rec2.live == set(symbols), what="subscribed to B")
            for r in first:
                if r.instruments or r.updates:
                    await publish(pub, r.updates, r.instruments)
            await eventually(lambda: all(rec2.positions[s].seq == server_seq(b, s) for s in symbols))
            books_b = {s: server_book(b, s).copy() for s in symbols}
        assert rec2.summary.connects == 1
    assert file2.read_bytes()[:2] == b"\x1f\x8b"
    second = read_path(file2)
    assert books_after(second) == books_b == books_a
    assert verify(first).ok and verify(second).ok
    # Normalise the start: file1 opens with A's books as snapshots; file2 with
    # B's empty books, then one change per symbol replaying those snapshots.
    first_changes = level_changes(first)
    replayed, rest = [], []
    for change in level_changes(second):
        (replayed if change[0] not in {c[0] for c in replayed} else rest).append(change)
    assert sorted(c[0] for c in replayed) == symbols
    for symbol, bids, asks, _ in replayed:
        start = next(r for r in first if r.updates and r.updates[0].symbol == symbol)
        assert _book(bids, asks) == _book(start.updates[0].bids, start.updates[0].asks)
    assert rest == first_changes
    assert len(rest) >= 60


@pytest.mark.parametrize("resumed", [True, False], ids=["resumed", "fresh-snapshot"])
async def test_a_dropped_connection_is_resumed_and_recorded_without_a_gap(tmp_path, resumed):
    # With a history of 2 changes the server cannot resume the recorder and
    # sends a fresh snapshot instead: a replace in the middle of the file.
    settings_ = test_settings() if resumed else test_settings(history=HistoryLimits(max_entries=2, max_bytes=1 << 20))
    rng = random.Random(3)
    path = tmp_path / "drop.rec.gz"
    async with serve_in_process(settings_) as srv, Publisher.connect(srv.feed_url) as pub:
        await publish(pub, churn(rng, "A", 5), [instrument("A")])
        start = server_seq(srv, "A")
        async with recorder(srv.url, ["A"], path, backoff=FixedDelay(0.3)) as rec:
            await eventually(lambda: "A" in rec.live, what="subscribed")
            await publish(pub, churn(rng, "A", 5))
            await eventually(lambda: rec.positions["A"].seq == server_seq(srv, "A"))
            held = rec.positions["A"].seq
            for conn in list(srv.hub.connections):
                conn.transport.abort()  # no close frame: the TCP connection just ends
            # Published while the recorder waits out its reconnect delay.
            while server_seq(srv, "A") < held + 8:
                await publish(pub, churn(rng, "A", 1))
            await eventually(lambda: rec.summary.connects == 2, what="reconnected")
            await eventually(lambda: rec.positions["A"].seq == server_seq(srv, "A"))
        final = server_seq(srv, "A")
        records = read_path(path)
        assert [r.note for r in records if r.note] == [NOTE_RECONNECT]
        snapshots = sum(1 for r in records for u in r.updates if u.replace)
        deltas = len(level_changes(records))
        if resumed:
            # Every change since the first snapshot, the missed ones included.
            assert (snapshots, deltas) == (1, final - start)
        else:
            assert snapshots == 2 and deltas < final - start
        report = verify(records)
        assert report.ok and report.checked == deltas + 2 * snapshots, report.lines()
        assert books_after(records)["A"] == server_book(srv, "A")


async def test_an_unknown_symbol_is_asked_for_until_it_exists(tmp_path):
    path = tmp_path / "later.rec"
    async with serve_in_process() as srv, Publisher.connect(srv.feed_url) as pub:
        await publish(pub, [update("A", bids=[(990, 5)])], [instrument("A")])
        async with recorder(srv.url, ["A", "LATER"], path, resubscribe_base=0.005, resubscribe_cap=0.01) as rec:
            # More refusals than the server tolerates in a row (20): the
            # pings in between keep the connection open.
            await eventually(lambda: rec.summary.per_symbol.get("LATER", 0) >= 30, what="refusals")
            assert rec.live == {"A"}
            await publish(pub, [update("LATER", bids=[(100, 1)], asks=[(102, 2)])], [instrument("LATER")])
            await eventually(lambda: "LATER" in rec.live, what="LATER picked up")
            await publish(pub, [update("LATER", bids=[(101, 4)])])
            await eventually(lambda: rec.positions["LATER"].seq == server_seq(srv, "LATER"))
        assert rec.summary.connects == 1 and not rec.summary.refused
        records = read_path(path)
        assert books_after(records)["LATER"] == server_book(srv, "LATER")
        assert verify(records).ok


async def test_a_refused_symbol_is_reported_and_the_others_recorded(tmp_path):
    settings_ = test_settings(max_subscriptions=1)
    async with serve_in_process(settings_) as srv, Publisher.connect(srv.feed_url) as pub:
        await publish(pub, [update(s, bids=[(990, 5)]) for s in "AB"], [instrument(s) for s in "AB"])
        async with recorder(srv.url, ["A", "B"], tmp_path / "r.rec") as rec:
            await eventually(lambda: rec.summary.refused, what="refusal")
            await eventually(lambda: rec.live == {"A"}, what="A live")
        assert set(rec.summary.refused) == {"B"}
        assert "TOO_MANY_SUBSCRIPTIONS" in rec.summary.refused["B"] and "refused: B" in str(rec.summary)


async def test_the_recorder_stops_on_duration_and_closes_the_gzip_stream(tmp_path):
    path = tmp_path / "timed.rec.gz"
    async with serve_in_process() as srv, Publisher.connect(srv.feed_url) as pub:
        await publish(pub, [update("A", bids=[(990, 5)], asks=[(1010, 1)])], [instrument("A")])
        loop = asyncio.get_running_loop()
        started = loop.time()
        summary = await asyncio.wait_for(record(srv.url, ["A"], path, duration=0.4), 10)
        assert loop.time() - started >= 0.4
        assert summary.stopped_by == "duration" and summary.connects == 1
        assert summary.bytes == path.stat().st_size
        gzip.decompress(path.read_bytes())  # a complete gzip stream, trailer included
        records = read_path(path)  # and no RecordingTruncated
        assert books_after(records)["A"] == server_book(srv, "A")
        await eventually(lambda: not srv.hub.connections, what="the recorder's connection closed")


async def test_the_recorder_stops_after_max_messages(tmp_path):
    path = tmp_path / "counted.rec"
    async with serve_in_process() as srv, Publisher.connect(srv.feed_url) as pub:
        await publish(pub, [update("A", bids=[(990, 5)])], [instrument("A")])
        rec = Recorder(srv.url, ["A"], path, max_messages=5, flush_interval=0.05)
        task = asyncio.create_task(rec.run())
        try:
            await eventually(lambda: "A" in rec.live, what="subscribed")  # Subscribed and Snapshot: 2 messages
            for i in range(10):
                await publish(pub, [update("A", bids=[(990, 6 + i)])])
            summary = await asyncio.wait_for(task, 10)
        finally:
            task.cancel()
        assert summary.stopped_by == "count" and summary.messages == 5
        assert sum(1 for e in wire.decode(chunks_of(path)) if e.message is not None) == 5


async def test_a_cancelled_recorder_still_leaves_a_readable_file(tmp_path):
    path = tmp_path / "cancelled.rec.gz"
    async with serve_in_process() as srv, Publisher.connect(srv.feed_url) as pub:
        await publish(pub, [update("A", bids=[(990, 5)])], [instrument("A")])
        rec = Recorder(srv.url, ["A"], path, flush_interval=0.05)
        task = asyncio.create_task(rec.run())
        await eventually(lambda: "A" in rec.live, what="subscribed")
        task.cancel()  # as Ctrl-C does to `orderbook record`
        with pytest.raises(asyncio.CancelledError):
            await task
        assert rec.summary.stopped_by == "cancelled"
        records = read_path(path)
        assert books_after(records)["A"] == server_book(srv, "A")


@pytest.mark.parametrize("token", ["s3cret", "not a subprotocol"], ids=["subprotocol", "query"])
async def test_a_subscriber_token_is_sent_and_a_wrong_one_fails_at_once(tmp_path, token):
    # A token that is no HTTP token cannot be a subprotocol: it goes in the query.
    async with serve_in_process(test_settings(subscriber_token=token)) as srv, Publisher.connect(srv.feed_url) as pub:
        await publish(pub, [update("A", bids=[(990, 5)])], [instrument("A")])
        with pytest.raises(HandshakeRejected) as ei:
            await asyncio.wait_for(record(srv.url, ["A"], tmp_path / "bad.rec", token="wrong"), 10)
        assert ei.value.status == 401
        assert read_path(tmp_path / "bad.rec") == []  # the header alone: a valid, empty recording
        path = tmp_path / "good.rec"
        summary = await asyncio.wait_for(record(srv.url, ["A"], path, token=token, max_messages=2), 10)
        assert summary.messages == 2
        header = next(wire.decode(chunks_of(path))).header
        assert header is not None and header.source_url == srv.url and header.symbols == ("A",)
