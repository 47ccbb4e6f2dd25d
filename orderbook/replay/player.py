"""Play records into a service: paced by their recorded times (or as fast
as possible), optionally looping and within a time window.

Two sinks: `FeedSink` publishes through a server's `/feed` WebSocket,
pipelining batches and reading acks as they come; `HubSink` feeds a hub in
the same process (`orderbook serve --replay`). Records are read from disk in
a worker thread, a chunk at a time, so the event loop never waits on a file.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from orderbook.core.errors import InvalidInput
from orderbook.core.events import BookUpdate, FeedBatch
from orderbook.core.instrument import Instrument
from orderbook.wire import codec

from .files import Source
from .pacing import Clock, Pacer
from .records import Record
from .window import TimePoint, within

if TYPE_CHECKING:
    from websockets.asyncio.client import ClientConnection

log = logging.getLogger("orderbook.replay")

PULL_CHUNK = 1024  # records read per trip to the worker thread
MAX_BATCH_UPDATES = 512  # updates per FeedBatch at full speed
MAX_IN_FLIGHT = 32  # unacknowledged batches per publisher connection


@dataclass(frozen=True, slots=True)
class ReplayPlan:
    """What `serve --replay` plays and how."""

    source: Source
    speed: float = 1.0
    loop: bool = False
    start: TimePoint | None = None
    end: TimePoint | None = None


class ReplayRejected(InvalidInput):
    """The service refused a batch: the books would no longer be the venue's."""


class Sink(Protocol):
    async def send(self, batch: FeedBatch, records: list[Record]) -> None: ...

    async def drain(self) -> None: ...


class LoopClock:
    """The event loop's monotonic clock."""

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


@dataclass(slots=True)
class PlayStats:
    records: int = 0
    updates: int = 0
    batches: int = 0
    laps: int = 0
    notes: dict[str, int] = field(default_factory=dict)
    time_ns: int = 0  # recorded time of the last record sent


async def pull(it: Iterator[Record], n: int = PULL_CHUNK) -> list[Record]:
    """The next `n` records, read off the event loop."""
    return await asyncio.to_thread(lambda: list(itertools.islice(it, n)))


async def play(
    source: Callable[[], Iterator[Record]],
    sink: Sink,
    *,
    speed: float = 1.0,
    loop: bool = False,
    laps: int | None = None,
    start: TimePoint | None = None,
    end: TimePoint | None = None,
    clock: Clock | None = None,
    max_batch: int = MAX_BATCH_UPDATES,
    one_record_per_batch: bool = False,
    loop_gap_s: float = 1.0,
    stats: PlayStats | None = None,
) -> PlayStats:
    """Play `source()` into `sink`; with `loop`, again from its start (at most
    `laps` times). `stats`, if given, is kept current while playing (a
    progress display reads it) and returned."""
    clock = clock or LoopClock()
    pacer = Pacer(speed)
    stats = stats if stats is not None else PlayStats()
    ids = itertools.count(1)
    t0 = clock.now()
    defined: dict[str, Instrument] = {}
    while True:
        it = within(source(), start, end)
        batch: list[Record] = []
        size = 0
        try:
            while chunk := await pull(it):
                for rec in chunk:
                    due = pacer.due(rec.time_ns)
                    wait = t0 + due - clock.now()
                    if wait > 0 and batch:
                        await _flush(sink, batch, next(ids), defined, stats)
                        batch, size = [], 0
                        wait = t0 + due - clock.now()
                    if wait > 0:
                        await clock.sleep(wait)
                    batch.append(rec)
                    size += len(rec.updates)
                    if rec.note:
                        stats.notes[rec.note] = stats.notes.get(rec.note, 0) + 1
                    if one_record_per_batch or size >= max_batch:
                        await _flush(sink, batch, next(ids), defined, stats)
                        batch, size = [], 0
                if batch:  # a chunk's tail goes out before the next disk read
                    await _flush(sink, batch, next(ids), defined, stats)
                    batch, size = [], 0
        finally:
            it.close()
        stats.laps += 1
        if not loop or (laps is not None and stats.laps >= laps):
            break
        pacer.next_lap(loop_gap_s)
    await sink.drain()
    return stats


async def _flush(
    sink: Sink, records: list[Record], batch_id: int, defined: dict[str, Instrument], stats: PlayStats
) -> None:
    instruments: list[Instrument] = []
    updates: list[BookUpdate] = []
    for rec in records:
        for inst in rec.instruments:
            # A definition goes out once per connection; a loop repeats none.
            if defined.get(inst.symbol) != inst:
                defined[inst.symbol] = inst
                instruments.append(inst)
        updates.extend(rec.updates)
    stats.records += len(records)
    stats.updates += len(updates)
    stats.batches += 1
    if records:
        stats.time_ns = records[-1].time_ns
    await sink.send(FeedBatch(batch_id, tuple(instruments), tuple(updates)), records)


# ----------------------------------------------------------------------------- sinks


def feed_url(url: str) -> str:
    """ws(s)://host:port/feed from http(s)://host:port, ws://host:port or a full URL."""
    parts = urlsplit(url if "://" in url else f"ws://{url}")
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    path = parts.path if parts.path not in ("", "/") else "/feed"
    return urlunsplit((scheme, parts.netloc, path, parts.query, ""))


AckHandler = Callable[[FeedBatch, list[Record], codec.FeedAck], None]


class FeedSink:
    """Publishes through `/feed`: up to MAX_IN_FLIGHT batches ahead of their
    acks, in order (one connection: the server answers in order)."""

    def __init__(
        self, ws: ClientConnection, on_ack: AckHandler | None = None, max_in_flight: int = MAX_IN_FLIGHT
    ) -> None:
        self.ws = ws
        self.on_ack = on_ack
        self.changes = 0
        self._slots = asyncio.Semaphore(max_in_flight)
        self._waiting: asyncio.Queue[tuple[FeedBatch, list[Record]] | None] = asyncio.Queue()
        self._failure: BaseException | None = None
        self._reader = asyncio.ensure_future(self._read_acks())

    @classmethod
    async def connect(cls, url: str, token: str | None, on_ack: AckHandler | None = None, **kw: Any) -> FeedSink:
        # `kw`: more options of websockets.connect, passed through.
        import websockets
        from websockets.exceptions import InvalidStatus

        from orderbook.client.errors import HandshakeRejected

        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            ws = await websockets.connect(feed_url(url), additional_headers=headers, max_size=None, **kw)
        except InvalidStatus as exc:  # refused: the server's reason is in the body
            r = exc.response
            raise HandshakeRejected(r.status_code, r.reason_phrase, bytes(r.body or b"")) from exc
        return cls(ws, on_ack)

    async def send(self, batch: FeedBatch, records: list[Record]) -> None:
        self._raise_failure()
        await self._slots.acquire()
        self._raise_failure()
        self._waiting.put_nowait((batch, records))
        await self.ws.send(codec.feed_message(batch).SerializeToString())

    async def drain(self) -> None:
        """Wait for every ack; raise if any batch was refused."""
        self._waiting.put_nowait(None)
        await asyncio.shield(self._reader)
        self._raise_failure()

    async def close(self) -> None:
        if not self._reader.done():
            self._reader.cancel()
        await self.ws.close()

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    async def _read_acks(self) -> None:
        try:
            while True:
                item = await self._waiting.get()
                if item is None:
                    return
                batch, records = item
                data = await self.ws.recv()
                if isinstance(data, str):
                    raise codec.MalformedMessage("a text frame on /feed: its replies are binary protobuf")
                reply = codec.parse_feed_reply(data)
                self._slots.release()
                if reply.WhichOneof("kind") == "error":
                    first = records[0].time_ns if records else 0
                    err = reply.error
                    hint = ""
                    if err.code == codec.ErrorCode.ERROR_CODE_SOURCE_CONFLICT:
                        hint = (
                            f". Fix: replay it under another name (--rename {err.symbol}={err.symbol}.rec), "
                            "or into a node that does not serve it (orderbook serve --no-simulator "
                            "--feed-token T), or serve the file alone (orderbook serve --replay FILE)"
                        )
                    raise ReplayRejected(
                        f"the service refused batch {batch.batch_id} (records from time {first}): "
                        f"{err.message} [code {err.code}]{hint}"
                    )
                self.changes += reply.ack.changes
                if self.on_ack is not None:
                    self.on_ack(batch, records, reply.ack)
        except BaseException as exc:  # the sender sees it on its next send or drain
            self._failure = exc if isinstance(exc, Exception) else ReplayRejected("publisher stopped")
            # Wake a sender blocked on a slot so it can see the failure.
            self._slots.release()
            if not isinstance(exc, Exception):
                raise


class HubSink:
    """Ingests into a hub in this process, as `/feed` would."""

    def __init__(self, ingest: Callable[[FeedBatch], object]) -> None:
        self.ingest = ingest

    async def send(self, batch: FeedBatch, records: list[Record]) -> None:
        self.ingest(batch)
        await asyncio.sleep(0)  # let subscribers' writes go out between batches

    async def drain(self) -> None:
        return None
