"""The project's own recording format, written by `orderbook record`.

A file is a sequence of length-delimited protobuf `RecordingEntry` messages
(proto/orderbook/v1/recording.proto), optionally gzip-compressed as a whole
(recognised by its magic bytes 1f 8b): a header first, then every
`ServerMessage` the recorder received from /ws with its receive time, and
markers where its connection opened or closed. The reader takes byte chunks
of any size and turns them into records:

* `Subscribed` with an instrument -> a definition (when new or changed);
  `START_SNAPSHOT` means a snapshot follows, `START_RESUMED` must continue
  exactly the seq the recording holds;
* `Snapshot` -> a replace with its levels, checked against the snapshot's
  checksum and levels (a snapshot mid-recording, after a reconnection or
  for a slow recorder, is a replace like the first);
* `Delta` -> its levels (size 0 removes) with its checksum; its `prev_seq`
  must equal the seq held for the symbol;
* `Heartbeat` -> no record, but its (epoch, seq) must equal the one held
  (it says where the stream stands, so a mismatch means deltas are missing);
* a reconnection -> a record noted "reconnect"; `Error`, `Pong`,
  `Unsubscribed` and entry kinds newer than this reader -> nothing.

`time_ns` is the recorder's receive time; a delta's `event_time_ns` (the
source's time) travels in its update, the receive time where it is 0.

A break in a symbol's sequence is a FormatError by default (`gaps="error"`):
the server never sends one, so it means data was lost. With
`gaps="resync"` it is noted "gap" instead, the symbol's deltas are skipped
until its next snapshot, and the rest of the file is still read.

A file cut short (a recorder killed while writing) yields every complete
entry and then raises `RecordingTruncated` (orderbook.wire.recording, an
InvalidInput like FormatError) naming the file and the byte offset (in the
uncompressed stream) where the complete part ends; callers that want the
records before it catch that error. Anything not in this format is a
FormatError at the first entry.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

from orderbook.core.events import BookUpdate
from orderbook.core.instrument import Instrument
from orderbook.wire.codec import delta_from_pb, instrument_from_pb, snapshot_from_pb
from orderbook.wire.recording import (
    START_RESUMED,
    Entry,
    RecordingError,
    RecordingTruncated,
    decode,
    looks_like_recording,
)

from ..records import Checksum, FormatError, Record, TopLevels

Gaps = Literal["error", "resync"]

NOTE_GAP = "gap"
NOTE_RECONNECT = "reconnect"


def sniff(head: bytes) -> bool:
    """Whether a file's first bytes (a few KiB, plain or gzip) start a recording."""
    return looks_like_recording(head)


@dataclass(slots=True)
class _Symbol:
    """What the reader holds for one symbol."""

    instrument: Instrument | None = None  # the last definition yielded
    epoch: int = 0
    seq: int | None = None  # None: no book to continue (none yet, or waiting for a snapshot)
    depth: int = 0  # of the subscription
    noted: bool = False  # a gap was noted and no snapshot has come since


class _Reader:
    def __init__(self, source: str, gaps: Gaps) -> None:
        if gaps not in ("error", "resync"):
            raise ValueError(f"gaps must be 'error' or 'resync', not {gaps!r}")
        self.source = source
        self.gaps = gaps
        self.symbols: dict[str, _Symbol] = {}
        self.connections = 0

    def symbol(self, name: str) -> _Symbol:
        s = self.symbols.get(name)
        if s is None:
            s = self.symbols[name] = _Symbol()
        return s

    def records(self, entries: Iterable[Entry]) -> Iterator[Record]:
        for entry in entries:
            if entry.header is not None:
                # A later header starts another recording: nothing continues.
                for s in self.symbols.values():
                    s.seq = None
                self.connections = 0
            elif entry.connection is not None:
                if entry.connection.opened:
                    self.connections += 1
                    if self.connections > 1:
                        yield Record(entry.receive_time_ns, note=NOTE_RECONNECT)
            elif entry.message is not None:
                yield from self.message(entry)

    def message(self, entry: Entry) -> Iterator[Record]:
        msg = entry.message
        assert msg is not None
        kind = msg.WhichOneof("kind")
        if kind == "delta":
            yield from self.delta(entry)
        elif kind == "snapshot":
            yield self.snapshot(entry)
        elif kind == "subscribed":
            yield from self.subscribed(entry)
        elif kind == "heartbeat":
            yield from self.heartbeat(entry)
        elif kind == "unsubscribed":
            self.symbol(msg.unsubscribed.symbol).seq = None

    def where(self, entry: Entry) -> str:
        return f"{self.source}:{entry.offset}"

    def broken(self, entry: Entry, name: str, problem: str) -> Iterator[Record]:
        """The symbol's sequence does not continue: an error, or a noted gap."""
        if self.gaps == "error":
            raise FormatError(self.where(entry), f"{name}: {problem}; the recording lost data here")
        s = self.symbol(name)
        s.seq = None
        if not s.noted:
            s.noted = True
            yield Record(entry.receive_time_ns, note=NOTE_GAP)

    def subscribed(self, entry: Entry) -> Iterator[Record]:
        m = entry.message.subscribed  # type: ignore[union-attr]
        s = self.symbol(m.symbol)
        s.depth = m.depth
        if m.HasField("instrument"):
            inst = instrument_from_pb(m.instrument)
            if inst != s.instrument:
                s.instrument = inst
                yield Record(entry.receive_time_ns, instruments=(inst,))
        if m.start != START_RESUMED:
            s.seq = None  # a snapshot follows
        elif s.seq is None or (m.epoch, m.seq) != (s.epoch, s.seq):
            held = "no book" if s.seq is None else f"seq {s.seq} of epoch {s.epoch}"
            problem = f"resumed at seq {m.seq} of epoch {m.epoch}, but the recording holds {held}"
            yield from self.broken(entry, m.symbol, problem)

    def snapshot(self, entry: Entry) -> Record:
        ps = entry.message.snapshot  # type: ignore[union-attr]
        snap = snapshot_from_pb(ps)
        s = self.symbol(snap.symbol)
        instruments: tuple[Instrument, ...] = ()
        if ps.HasField("instrument") and snap.instrument != s.instrument:
            s.instrument = snap.instrument
            instruments = (snap.instrument,)
        elif s.instrument is None:
            raise FormatError(self.where(entry), f"{snap.symbol}: a snapshot without an instrument, none known before")
        s.epoch, s.seq, s.noted = snap.epoch, snap.seq, False
        t = entry.receive_time_ns
        return Record(
            t,
            instruments,
            (BookUpdate(snap.symbol, snap.bids, snap.asks, replace=True, event_time_ns=snap.time_ns or t),),
            (Checksum(snap.symbol, snap.checksum), TopLevels(snap.symbol, snap.bids, snap.asks, snap.depth)),
        )

    def delta(self, entry: Entry) -> Iterator[Record]:
        d = delta_from_pb(entry.message.delta)  # type: ignore[union-attr]
        s = self.symbol(d.symbol)
        if s.seq is None:
            if not s.noted:
                yield from self.broken(entry, d.symbol, f"delta {d.seq} with no book to apply it to (no snapshot)")
            return
        if d.epoch != s.epoch or d.prev_seq != s.seq or d.seq <= s.seq:
            yield from self.broken(
                entry,
                d.symbol,
                f"delta {d.seq} of epoch {d.epoch} continues from seq {d.prev_seq}, "
                f"but the recording holds seq {s.seq} of epoch {s.epoch}",
            )
            return
        s.seq = d.seq
        t = entry.receive_time_ns
        yield Record(
            t,
            updates=(BookUpdate(d.symbol, d.bids, d.asks, event_time_ns=d.event_time_ns or t),),
            checks=(Checksum(d.symbol, d.checksum),),
        )

    def heartbeat(self, entry: Entry) -> Iterator[Record]:
        hb = entry.message.heartbeat  # type: ignore[union-attr]
        s = self.symbols.get(hb.symbol)
        # A depth-limited stream's seq may run ahead of its last delta.
        if s is None or s.seq is None or s.depth:
            return
        if (hb.epoch, hb.seq) != (s.epoch, s.seq):
            yield from self.broken(
                entry,
                hb.symbol,
                f"heartbeat at seq {hb.seq} of epoch {hb.epoch}, "
                f"but the recording holds seq {s.seq} of epoch {s.epoch}",
            )


def read(chunks: Iterable[bytes], *, source: str = "recording", gaps: Gaps = "error") -> Iterator[Record]:
    """Records of a recording given as byte chunks (plain or gzip), lazily.

    `source` names the file in errors, as "source:byte offset"."""
    return _read(_Reader(source, gaps), chunks)  # the reader checks `gaps` now, not at the first record


def _read(reader: _Reader, chunks: Iterable[bytes]) -> Iterator[Record]:
    source = reader.source
    try:
        yield from reader.records(decode(chunks))
    except RecordingTruncated as exc:
        raise exc.named(source) from None
    except RecordingError as exc:
        raise FormatError(f"{source}:{exc.offset}", exc.message) from None
