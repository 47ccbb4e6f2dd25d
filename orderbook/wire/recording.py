"""The recording file format (proto/orderbook/v1/recording.proto): encoding,
a writer, and a streaming decoder.

A file is a sequence of `RecordingEntry` messages, each preceded by its
length as a varint (protobuf's standard delimited framing), optionally
gzip-compressed as a whole. The first entry is a header naming the format.
Messages received from a server are stored as the exact bytes received, so
the writer never re-encodes them.

The decoder is pure: it takes an iterable of byte chunks, in any sizes, and
holds at most one entry (plus one inflated block) in memory. Gzip is
recognised by its magic bytes 1f 8b; a plain file cannot start with them,
since the first byte after the length prefix of a header entry is a field
tag (0x08 or 0x12).
"""

from __future__ import annotations

import gzip as _gzip
import io
import itertools
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from google.protobuf.message import DecodeError

from orderbook import __version__
from orderbook.core.errors import InvalidInput
from orderbook.v1 import recording_pb2, stream_pb2

FORMAT_NAME = "orderbook.v1.recording"
FORMAT_VERSION = 1
SOFTWARE = f"orderbook {__version__}"
GZIP_MAGIC = b"\x1f\x8b"
# Larger than any message a recorder accepts from a server (64 MiB): a length
# beyond it is corruption, and refusing it keeps a bad prefix from making the
# decoder buffer the rest of the file.
MAX_ENTRY_BYTES = 1 << 27
# Most bytes inflated per call, so a highly compressed block cannot expand
# into one huge buffer.
INFLATE_STEP = 1 << 20

# Field tags of RecordingEntry (field number << 3 | wire type).
_TAG_RECEIVE_TIME = (1 << 3) | 0  # varint
_TAG_MESSAGE = (3 << 3) | 2  # length-delimited
_UINT64 = (1 << 64) - 1

START_RESUMED = stream_pb2.START_RESUMED
START_SNAPSHOT = stream_pb2.START_SNAPSHOT

ServerMessage = stream_pb2.ServerMessage


class RecordingError(InvalidInput):
    """The bytes are not a (valid) recording; `offset` is where, in the
    uncompressed stream, the problem starts. A reader that knows the file
    names it as `source`: the error then reads "source:offset: message"."""

    def __init__(self, offset: int, message: str, *, source: str | None = None) -> None:
        self.offset = offset
        self.message = message
        self.source = source
        super().__init__(f"{self.where}: {message}" if source is not None else message)

    @property
    def where(self) -> str:
        return f"{self.source}:{self.offset}" if self.source is not None else str(self.offset)


class RecordingTruncated(RecordingError):
    """The recording ends inside an entry, or its gzip stream ends without
    its trailer (a recorder killed while writing). Every complete entry
    before `offset` has been delivered; `entries` counts them. The one
    error for this condition: readers above this layer re-raise it with
    the file named (`named`), so callers catch it to keep the complete part."""

    def __init__(self, offset: int, message: str, entries: int, *, source: str | None = None) -> None:
        super().__init__(offset, message, source=source)
        self.entries = entries

    def named(self, source: str) -> RecordingTruncated:
        return RecordingTruncated(self.offset, self.message, self.entries, source=source)


# ----------------------------------------------------------------------------- values


@dataclass(frozen=True, slots=True)
class RecordingInfo:
    """The header of a recording."""

    source_url: str
    symbols: tuple[str, ...]
    start_time_ns: int
    software: str = SOFTWARE
    version: int = FORMAT_VERSION


@dataclass(frozen=True, slots=True)
class ConnectionEvent:
    """The recorder's connection opened, or closed with `close_code`."""

    opened: bool
    close_code: int = 0
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Entry:
    """One decoded entry. Exactly one of `header`, `message`, `connection` is
    set, or none for an entry kind newer than this decoder (to be skipped)."""

    offset: int  # of its length prefix in the uncompressed stream
    receive_time_ns: int
    header: RecordingInfo | None = None
    message: stream_pb2.ServerMessage | None = None
    connection: ConnectionEvent | None = None


# ----------------------------------------------------------------------------- encoding


def varint(value: int) -> bytes:
    """Protobuf's base-128 varint of an unsigned value (< 2**64)."""
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def delimited(body: bytes) -> bytes:
    return varint(len(body)) + body


def message_entry(receive_time_ns: int, payload: bytes) -> bytes:
    """A delimited entry holding one ServerMessage given as its binary
    encoding; byte for byte what protobuf serialises for the same entry."""
    time_field = bytes((_TAG_RECEIVE_TIME,)) + varint(receive_time_ns & _UINT64) if receive_time_ns else b""
    body = time_field + bytes((_TAG_MESSAGE,)) + varint(len(payload)) + payload
    return varint(len(body)) + body


def header_entry(info: RecordingInfo) -> bytes:
    entry = recording_pb2.RecordingEntry(receive_time_ns=info.start_time_ns)
    h = entry.header
    h.format = FORMAT_NAME
    h.version = info.version
    h.source_url = info.source_url
    h.symbols.extend(info.symbols)
    h.start_time_ns = info.start_time_ns
    h.software = info.software
    return delimited(entry.SerializeToString())


def connection_entry(receive_time_ns: int, event: ConnectionEvent) -> bytes:
    entry = recording_pb2.RecordingEntry(receive_time_ns=receive_time_ns)
    c = entry.connection
    c.change = recording_pb2.CONNECTION_CHANGE_OPENED if event.opened else recording_pb2.CONNECTION_CHANGE_CLOSED
    c.close_code = event.close_code
    c.detail = event.detail
    return delimited(entry.SerializeToString())


class _CountingSink:
    """Counts the bytes that reach the file (compressed ones, with gzip)."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.count = 0

    def write(self, data: bytes) -> int:
        self.raw.write(data)
        self.count += len(data)
        return len(data)

    def flush(self) -> None:
        self.raw.flush()


class RecordingWriter:
    """Writes entries to a binary file object, gzip-compressed if asked.

    Synchronous (blocking) by design: an asynchronous recorder calls it from
    a worker thread. `flush()` pushes everything written so far to the file
    (for gzip, a sync flush: the file decodes up to there even if the
    process dies later); it also happens on its own after every
    `flush_bytes` of entries. `close()` ends the gzip stream and flushes;
    it does not close `out`.
    """

    def __init__(
        self, out: BinaryIO, *, gzip: bool = False, compresslevel: int = 6, flush_bytes: int | None = 1 << 20
    ) -> None:
        self._sink = _CountingSink(out)
        self._gzip = _gzip.GzipFile(fileobj=self._sink, mode="wb", compresslevel=compresslevel) if gzip else None
        self._stream: _gzip.GzipFile | _CountingSink = self._gzip or self._sink
        self.flush_bytes = flush_bytes
        self.entries = 0
        self.entry_bytes = 0  # uncompressed
        self._unflushed = 0
        self.closed = False

    @property
    def file_bytes(self) -> int:
        """Bytes written to `out` so far (compressed ones, with gzip)."""
        return self._sink.count

    def write(self, data: bytes, entries: int = 1) -> None:
        """Write already-encoded entries (see `message_entry` and friends)."""
        if self.closed:
            raise ValueError("the recording is closed")
        self._stream.write(data)
        self.entries += entries
        self.entry_bytes += len(data)
        self._unflushed += len(data)
        if self.flush_bytes is not None and self._unflushed >= self.flush_bytes:
            self.flush()

    def write_header(self, info: RecordingInfo) -> None:
        self.write(header_entry(info))
        self.flush()

    def write_message(self, receive_time_ns: int, message: bytes | stream_pb2.ServerMessage) -> None:
        payload = message if isinstance(message, bytes) else message.SerializeToString()
        self.write(message_entry(receive_time_ns, payload))

    def write_connection(self, receive_time_ns: int, event: ConnectionEvent) -> None:
        self.write(connection_entry(receive_time_ns, event))

    def flush(self) -> None:
        self._stream.flush()
        self._unflushed = 0

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._gzip is not None:
            self._gzip.close()  # writes the trailer; leaves `out` open
        self._sink.flush()

    def __enter__(self) -> RecordingWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ----------------------------------------------------------------------------- decoding


class _ChunkFile:
    """A read-only file over byte chunks, for GzipFile. `read(n)` returns at
    most n bytes: the gzip header parser counts on it."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._pending = b""

    def read(self, size: int = -1) -> bytes:
        data = self._pending or next(self._chunks, b"")
        if 0 <= size < len(data):
            self._pending = data[size:]
            return data[:size]
        self._pending = b""
        return data

    def seek(self, offset: int, /) -> int:
        # GzipFile seeks only to rewind, which this reader never asks for.
        raise io.UnsupportedOperation("a chunk stream cannot seek")


class _Source:
    """The uncompressed bytes of a chunk stream, inflating gzip when the
    stream starts with its magic. `complete` tells afterwards whether a gzip
    stream ended properly (always True for a plain one)."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self.complete = True
        self.produced = 0  # uncompressed bytes handed out

    def blocks(self) -> Iterator[bytes]:
        pulled = self._pull()
        head = b""
        for chunk in pulled:
            head += chunk
            if len(head) >= len(GZIP_MAGIC):
                break
        data = itertools.chain((head,) if head else (), pulled)
        for block in self._inflate(data) if head.startswith(GZIP_MAGIC) else data:
            self.produced += len(block)
            yield block

    def _pull(self) -> Iterator[bytes]:
        try:
            for chunk in self._chunks:
                if chunk:
                    yield bytes(chunk)
        except EOFError:
            # A chunk source that inflates gzip itself (gzip.open) reports a
            # stream cut short this way: treat it as the end of the data.
            self.complete = False

    def _inflate(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        # GzipFile reads member after member (`cat a.gz b.gz` is one file)
        # and checks each trailer; read1 inflates at most INFLATE_STEP bytes
        # per call, however far the input would expand.
        with _gzip.GzipFile(fileobj=_ChunkFile(chunks), mode="rb") as f:
            while True:
                try:
                    block = f.read1(INFLATE_STEP)
                except EOFError:  # the input ended inside a member
                    self.complete = False
                    return
                except (zlib.error, _gzip.BadGzipFile) as exc:
                    raise RecordingError(self.produced, f"corrupt gzip data: {exc}") from None
                if not block:
                    return
                yield block


def _read_varint(buf: bytearray, pos: int, end: int) -> tuple[int, int] | None:
    """(value, position after it), or None if the buffer ends inside it."""
    value = 0
    shift = 0
    while pos < end:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift >= 70:
            raise ValueError("varint longer than 10 bytes")
    return None


def decode(chunks: Iterable[bytes]) -> Iterator[Entry]:
    """The entries of a recording given as byte chunks of any size (plain or
    gzip). Raises `RecordingError` for anything that is not this format, and
    `RecordingTruncated` after the last complete entry of a cut-short file."""
    source = _Source(chunks)
    buf = bytearray()
    base = 0  # stream offset of buf[0]
    pos = 0
    count = 0
    for block in source.blocks():
        if pos:
            del buf[:pos]
            base += pos
            pos = 0
        buf += block
        end = len(buf)
        while pos < end:
            try:
                prefix = _read_varint(buf, pos, end)
            except ValueError:
                raise _not_recording(base + pos, count, "invalid entry length") from None
            if prefix is None:
                break
            length, start = prefix
            if length > MAX_ENTRY_BYTES:
                raise _not_recording(base + pos, count, f"entry length {length} is beyond any real entry")
            stop = start + length
            if stop > end:
                break
            yield _entry(bytes(buf[start:stop]), base + pos, count)
            count += 1
            pos = stop
    if count == 0 and (pos < len(buf) or not source.complete):
        # Cut short or not, without a header nothing says it is a recording.
        raise RecordingError(0, f"not an orderbook recording: {len(buf)} bytes that hold no complete header")
    if pos < len(buf):
        have = len(buf) - pos
        prefix = _read_varint(buf, pos, len(buf))
        want = f"{prefix[0]}-byte entry" if prefix else "entry length"
        raise RecordingTruncated(
            base + pos,
            f"the recording ends inside a {want} ({have} bytes present; "
            f"the recorder was probably stopped while writing)",
            count,
        )
    if not source.complete:
        raise RecordingTruncated(
            base + pos, "the gzip stream ends without its trailer (the recorder did not close the file)", count
        )
    if count == 0:
        raise RecordingError(0, "an empty file, not a recording (no header)")


def _not_recording(offset: int, count: int, detail: str) -> RecordingError:
    if count == 0:
        return RecordingError(offset, f"not an orderbook recording: {detail}")
    return RecordingError(offset, f"corrupt entry: {detail}")


def _entry(body: bytes, offset: int, index: int) -> Entry:
    pb = recording_pb2.RecordingEntry()
    try:
        pb.ParseFromString(body)
    except (DecodeError, RecursionError) as exc:
        raise _not_recording(offset, index, f"cannot decode the entry ({exc})") from None
    kind = pb.WhichOneof("entry")
    if index == 0 and (kind != "header" or pb.header.format != FORMAT_NAME):
        raise RecordingError(
            offset, f"not an orderbook recording: it does not start with a recording header ({FORMAT_NAME})"
        )
    t = pb.receive_time_ns
    if kind == "message":
        return Entry(offset, t, message=pb.message)
    if kind == "header":
        return Entry(offset, t, header=_header(pb.header, offset))
    if kind == "connection":
        c = pb.connection
        return Entry(
            offset,
            t,
            connection=ConnectionEvent(c.change == recording_pb2.CONNECTION_CHANGE_OPENED, c.close_code, c.detail),
        )
    return Entry(offset, t)  # written by a newer recorder: skipped


def _header(h: recording_pb2.RecordingHeader, offset: int) -> RecordingInfo:
    if h.format != FORMAT_NAME:
        raise RecordingError(offset, f"a header of another format ({h.format!r})")
    if not 1 <= h.version <= FORMAT_VERSION:
        raise RecordingError(
            offset, f"recording format version {h.version} is not supported (this reader knows 1..{FORMAT_VERSION})"
        )
    return RecordingInfo(h.source_url, tuple(h.symbols), h.start_time_ns, h.software, h.version)


def looks_like_recording(head: bytes) -> bool:
    """Whether the first bytes of a file (plain or gzip) start a recording."""
    try:
        for _ in decode([head]):
            return True
    except RecordingError:  # not a recording, or too few bytes to tell
        return False
    return False
