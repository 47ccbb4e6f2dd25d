"""The local channel of `serve --workers N` without Redis: one process
sequences (`LocalSequencer`), the workers follow it (`LocalFollower`) over a
Unix socket, exactly as cluster nodes follow the Redis log.

What travels is the cluster's own encoding (orderbook/wire/codec.py): a
snapshot (`cluster_snapshot`), then log entries (`log_entry`) holding each
delta's exact bytes, so every worker serves the same epoch, seqs and bytes
and a client resumes on any of them. Publisher batches travel the other way
as the FeedMessage bytes received, answered by the exact FeedReply.

Frames: a 4-byte big-endian length (of what follows), one kind byte, the body.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import struct
import time
from collections.abc import Callable, Iterable

from orderbook.core.errors import InvalidInput, OrderbookError, UnknownSymbol
from orderbook.core.events import BatchResult, Delta, FeedBatch, Snapshot
from orderbook.core.instrument import Instrument
from orderbook.core.market import FEED, FeedLimits, Market
from orderbook.wire import codec

log = logging.getLogger("orderbook.local")

# Worker -> sequencer
HELLO = b"H"  # epoch, position the worker holds (0: none): 2 x 8 bytes
FEED_BATCH = b"F"  # a FeedMessage as a publisher sent it
# Sequencer -> worker
SNAPSHOT = b"S"  # cluster_snapshot(epoch, position, books)
ENTRY = b"L"  # log_entry(epoch, instruments, delta payloads), the next position
REPLY = b"R"  # the FeedReply to the oldest FEED_BATCH not yet answered

_HEADER = struct.Struct(">IB")
_HELLO = struct.Struct(">QQ")
# The largest frame either side reads: a snapshot of every book at full depth fits.
MAX_FRAME = 256 * 1024 * 1024
# Bytes queued to one worker before the sequencer drops it (it reconnects
# and catches up from the retained entries, or from a fresh snapshot):
# a slow worker never slows the sequencer or the others.
WORKER_BUFFER_LIMIT = 64 * 1024 * 1024
# Publisher batches a worker has forwarded and not yet had answered.
MAX_PENDING_FEEDS = 1024


def frame(kind: bytes, body: bytes) -> bytes:
    return _HEADER.pack(len(body) + 1, kind[0]) + body


async def read_frame(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    size, kind = _HEADER.unpack(await reader.readexactly(_HEADER.size))
    if not 1 <= size <= MAX_FRAME:
        raise ConnectionError(f"local channel frame of {size} bytes")
    return bytes((kind,)), await reader.readexactly(size - 1)


def feed_error_code(exc: InvalidInput) -> int:
    # feed.proto: an update for an unknown symbol is an invalid update.
    if isinstance(exc, UnknownSymbol):
        return codec.ErrorCode.ERROR_CODE_INVALID_UPDATE
    return codec.error_code_for(exc)


class LocalSequencer:
    """Owns the market: applies every batch (simulator, replay, /feed via a
    worker) and sends each change, encoded once, to every worker.

    `market` and `ingest` are what the simulator and replay duties feed
    (orderbook/server/background.py), as they feed a node's hub."""

    def __init__(
        self, epoch: int, limits: FeedLimits, retention: int, allow_takeover: bool = False, buffer_limit: int = 0
    ) -> None:
        self.market = Market(epoch, limits)
        self.position = 0
        # The newest entries, for a worker that reconnects holding an older position.
        self._retained: collections.deque[bytes] = collections.deque(maxlen=max(retention, 1))
        self._workers: set[asyncio.StreamWriter] = set()
        self._allow_takeover = allow_takeover
        self._buffer_limit = buffer_limit or WORKER_BUFFER_LIMIT
        self._server: asyncio.AbstractServer | None = None
        self.dropped = 0  # workers dropped for falling behind

    @property
    def epoch(self) -> int:
        return self.market.epoch

    @property
    def workers(self) -> int:
        return len(self._workers)

    async def serve(self, path: str) -> None:
        self._server = await asyncio.start_unix_server(self._worker, path)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for w in list(self._workers):
            w.close()
        self._workers.clear()

    def ingest(self, batch: FeedBatch, source: str = FEED, takeover: bool = False) -> BatchResult:
        market = self.market
        result = market.apply(batch, time.time_ns(), None, source, takeover)
        if result.deltas or result.new_instruments:
            payloads = [codec.delta_message(d).SerializeToString() for d in result.deltas]
            self._append(codec.log_entry(market.epoch, result.new_instruments, payloads))
        return result

    def _append(self, entry: bytes) -> None:
        self.position += 1
        self._retained.append(entry)
        data = frame(ENTRY, entry)
        for w in list(self._workers):
            self._send(w, data)

    def _send(self, w: asyncio.StreamWriter, data: bytes) -> None:
        if w.is_closing():
            self._workers.discard(w)
            return
        w.write(data)
        if w.transport.get_write_buffer_size() > self._buffer_limit:
            log.warning("dropping a worker over %d bytes behind; it resynchronises", self._buffer_limit)
            self.dropped += 1
            self._workers.discard(w)
            w.transport.abort()

    def feed(self, data: bytes) -> bytes:
        """A publisher's FeedMessage, applied as /feed is on a node: the reply."""
        batch_id = 0
        try:
            pb = codec.parse_feed(data)
            batch_id = pb.batch_id
            self.market.check_counts(pb)
            result = self.ingest(codec.feed_batch_from_pb(pb), FEED, self._allow_takeover)
        except InvalidInput as exc:
            return codec.feed_error(feed_error_code(exc), str(exc), getattr(exc, "symbol", ""), batch_id)
        return codec.feed_ack(batch_id, len(result.deltas), result.positions)

    def _catch_up(self, epoch: int, position: int) -> list[bytes]:
        """What a worker holding (epoch, position) is sent first."""
        behind = self.position - position
        if epoch == self.epoch and position > 0 and 0 <= behind <= len(self._retained):
            return [frame(ENTRY, e) for e in list(self._retained)[len(self._retained) - behind :]]
        snap = codec.cluster_snapshot(self.epoch, self.position, self.market.snapshot(time.time_ns()))
        return [frame(SNAPSHOT, snap)]

    async def _worker(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            kind, body = await read_frame(reader)
            if kind != HELLO or len(body) != _HELLO.size:
                raise ConnectionError("a worker must say hello first")
            epoch, position = _HELLO.unpack(body)
            # No await from here to registering: no entry falls between.
            for data in self._catch_up(epoch, position):
                writer.write(data)
            self._workers.add(writer)
            while True:
                kind, body = await read_frame(reader)
                if kind != FEED_BATCH:
                    raise ConnectionError(f"unexpected frame {kind!r} from a worker")
                reply = self.feed(body)
                if writer in self._workers:
                    self._send(writer, frame(REPLY, reply))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._workers.discard(writer)
            writer.close()


ApplyEntry = Callable[[Iterable[Instrument], list[tuple[Delta, bytes]]], object]
# The books of a snapshot, and whether this follower held books before it
# (then what it serves must start over: the changes in between are lost to it).
Restore = Callable[[list[Snapshot], bool], object]


class LocalFollower:
    """A worker's side of the channel: connects (again whenever the channel
    breaks), says what it holds, then applies what comes in order, and
    forwards publisher batches."""

    def __init__(self, path: str, epoch: int, apply: ApplyEntry, restore: Restore) -> None:
        self._path = path
        self.epoch = epoch
        self._apply = apply
        self._restore = restore
        self.position = 0
        self.caught_up = False  # has had a snapshot or its catch-up
        self.connected = False
        self.reconnects = 0
        self._writer: asyncio.StreamWriter | None = None
        self._pending: collections.deque[asyncio.Future[bytes]] = collections.deque()

    @property
    def stale(self) -> bool:
        return self.caught_up and not self.connected

    async def run(self) -> None:
        backoff = 0.02
        while True:
            try:
                reader, writer = await asyncio.open_unix_connection(self._path, limit=2**20)
            except OSError as exc:
                log.debug("sequencer not reachable: %s", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)
                continue
            backoff = 0.02
            try:
                writer.write(frame(HELLO, _HELLO.pack(self.epoch, self.position)))
                self._writer = writer
                self.connected = True
                await self._follow(reader)
            except (ConnectionError, asyncio.IncompleteReadError) as exc:
                log.warning("local channel to the sequencer broke (%s); reconnecting", exc or "closed")
            finally:
                self.connected = False
                self._writer = None
                writer.close()
                self._fail_pending("not accepted: the sequencer channel broke; the batch may or may not be applied")
                self.reconnects += 1

    async def _follow(self, reader: asyncio.StreamReader) -> None:
        while True:
            kind, body = await read_frame(reader)
            if kind == ENTRY:
                epoch, instruments, deltas = codec.parse_log_entry(body)
                if epoch != self.epoch:
                    raise ConnectionError(f"entry of epoch {epoch}, not {self.epoch}")
                try:
                    self._apply(instruments, deltas)
                except OrderbookError as exc:
                    failed = self.position + 1
                    # Start over from a snapshot rather than serve a book that drifted.
                    self.position = 0
                    raise ConnectionError(f"entry {failed} does not apply: {exc}") from exc
                self.position += 1
                self.caught_up = True
            elif kind == SNAPSHOT:
                epoch, position, books = codec.parse_cluster_snapshot(body)
                if epoch != self.epoch:
                    raise ConnectionError(f"snapshot of epoch {epoch}, not {self.epoch}")
                self._restore(books, self.position > 0 or self.caught_up)
                self.position = position
                self.caught_up = True
            elif kind == REPLY:
                if self._pending:
                    fut = self._pending.popleft()
                    if not fut.done():
                        fut.set_result(body)
            else:
                raise ConnectionError(f"unexpected frame {kind!r} from the sequencer")

    def _fail_pending(self, message: str) -> None:
        while self._pending:
            fut = self._pending.popleft()
            if not fut.done():
                fut.set_result(codec.feed_error(codec.ErrorCode.ERROR_CODE_INTERNAL, message))

    async def send(self, data: bytes) -> asyncio.Future[bytes]:
        """Forward a publisher's FeedMessage without waiting for its reply:
        the future of the sequencer's exact FeedReply (replies come in the
        order sent), so a publisher's batches stream to the sequencer rather
        than one round trip each."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[bytes] = loop.create_future()
        writer = self._writer
        if writer is None or writer.is_closing():
            fut.set_result(
                codec.feed_error(codec.ErrorCode.ERROR_CODE_INTERNAL, "not accepted: the sequencer is unreachable")
            )
            return fut
        if len(self._pending) >= MAX_PENDING_FEEDS:
            fut.set_result(
                codec.feed_error(
                    codec.ErrorCode.ERROR_CODE_INTERNAL, "not accepted: too many batches waiting for the sequencer"
                )
            )
            return fut
        self._pending.append(fut)
        writer.write(frame(FEED_BATCH, data))
        # Paced by the channel: what a publisher sends waits in its own socket, not here.
        with contextlib.suppress(ConnectionError):
            await writer.drain()  # a broken channel answers `fut` (run's `finally`)
        return fut
