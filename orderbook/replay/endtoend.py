"""The end-to-end check: replay a recording through a server's `/feed` and
compare what a subscriber receives with the venue's own references after
every record, plus the server's own checksum against the venue's.

Each record goes out as one batch, so its ack tells the seq the record
produced for each symbol (or that it changed nothing). The subscriber holds
back every delta until its seq has been acknowledged, so each reference is
checked against exactly the book that followed its record: not earlier, not
later. A new symbol is defined first and subscribed before its first update,
so nothing is ever checked against a snapshot that skipped steps.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from orderbook.core.errors import StreamError
from orderbook.core.events import Delta, FeedBatch, Snapshot
from orderbook.core.follower import BookFollower
from orderbook.wire import codec

from .player import FeedSink, pull
from .records import Checksum, Record, Reference
from .verify import Report, check_reference

if TYPE_CHECKING:
    from websockets.asyncio.client import ClientConnection

SERVER_CHECKSUM = "server checksum"


def stream_url(url: str) -> str:
    """ws(s)://host:port/ws from http(s)://host:port or ws://host:port[/feed]."""
    parts = urlsplit(url if "://" in url else f"ws://{url}")
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, parts.netloc, "/ws", "", ""))


@dataclass(slots=True)
class _Expected:
    seq: int
    index: int
    time_ns: int
    ref: Reference


class _Watcher:
    """The subscriber side: one socket, a follower per symbol."""

    def __init__(self, ws: ClientConnection, report: Report) -> None:
        self.ws = ws
        self.report = report
        self.followers: dict[str, BookFollower] = {}
        self.server_checksum: dict[str, int] = {}
        self.held: dict[str, deque[Delta]] = {}
        self.expected: dict[str, deque[_Expected]] = {}
        self.acked: dict[str, int] = {}
        self.broken: dict[str, str] = {}
        self.changed = asyncio.Event()
        self.failure: BaseException | None = None
        self._reader = asyncio.ensure_future(self._read())

    async def subscribe(self, symbol: str, timeout: float) -> None:
        self.followers[symbol] = BookFollower(symbol)
        self.held[symbol] = deque()
        self.expected[symbol] = deque()
        await self.ws.send(codec.subscribe_message(symbol).SerializeToString())
        await self.wait(lambda: self.followers[symbol].synced, timeout, f"no snapshot of {symbol}")
        self.acked[symbol] = self.followers[symbol].seq or 0

    async def wait(self, done: Callable[[], bool], timeout: float, what: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not done():
            if self.failure is not None:
                raise self.failure
            self.changed.clear()
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(what)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), remaining)

    def expect(self, index: int, record: Record, positions: dict[str, int]) -> None:
        for symbol, seq in positions.items():
            if symbol in self.acked:
                self.acked[symbol] = max(self.acked[symbol], seq)
        for ref in record.checks:
            if ref.symbol not in self.followers:
                self.report.note_check(index, record.time_ns, ref, "the symbol was never defined")
                continue
            seq = positions.get(ref.symbol, self.acked[ref.symbol])
            self.expected[ref.symbol].append(_Expected(seq, index, record.time_ns, ref))
        for symbol in positions:
            self._advance(symbol)

    def settled(self) -> bool:
        return all(
            not self.expected[s] and (s in self.broken or (self.followers[s].seq or 0) >= self.acked[s])
            for s in self.followers
        )

    def give_up(self) -> None:
        for symbol, queue in self.expected.items():
            for e in queue:
                self.report.note_check(
                    e.index, e.time_ns, e.ref, self.broken.get(symbol, "the subscriber never got there")
                )
            queue.clear()

    async def close(self) -> None:
        self._reader.cancel()
        await self.ws.close()

    async def _read(self) -> None:
        try:
            while True:
                msg = codec.parse_server_message(await self.ws.recv())
                kind = msg.WhichOneof("kind")
                if kind == "delta":
                    d = codec.delta_from_pb(msg.delta)
                    if d.symbol in self.held:
                        self.held[d.symbol].append(d)
                        self._advance(d.symbol)
                elif kind == "snapshot":
                    self._snapshot(codec.snapshot_from_pb(msg.snapshot))
                elif kind == "error":
                    raise RuntimeError(f"the server refused a subscription: {msg.error.message}")
                self.changed.set()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self.failure = exc
            self.changed.set()

    def _snapshot(self, s: Snapshot) -> None:
        f = self.followers.get(s.symbol)
        if f is None:
            return
        resync = f.synced
        f.apply_snapshot(s.epoch, s.seq, s.bids, s.asks, s.checksum, s.instrument, s.depth)
        self.server_checksum[s.symbol] = s.checksum
        if resync:
            # Steps inside the jump can no longer be checked one by one: say so.
            queue = self.expected[s.symbol]
            while queue and queue[0].seq < s.seq:
                e = queue.popleft()
                self.report.note_check(e.index, e.time_ns, e.ref, f"not checked: resynced by a snapshot at {s.seq}")
            while self.held[s.symbol] and self.held[s.symbol][0].seq <= s.seq:
                self.held[s.symbol].popleft()
        self._advance(s.symbol)

    def _advance(self, symbol: str) -> None:
        f = self.followers[symbol]
        queue = self.expected[symbol]
        held = self.held[symbol]
        while symbol not in self.broken:
            while queue and queue[0].seq <= (f.seq or 0):
                e = queue.popleft()
                if e.seq < (f.seq or 0):
                    self.report.note_check(e.index, e.time_ns, e.ref, f"book moved past seq {e.seq} unchecked")
                    continue
                self.report.note_check(e.index, e.time_ns, e.ref, check_reference(f.book, e.ref))
                if isinstance(e.ref, Checksum):
                    got = self.server_checksum.get(symbol)
                    problem = None if got == e.ref.value else f"server sent checksum {got}, venue {e.ref.value}"
                    self.report.note_check(e.index, e.time_ns, e.ref, problem, kind=SERVER_CHECKSUM)
            if not held or held[0].seq > self.acked.get(symbol, 0):
                return
            d = held.popleft()
            try:
                f.apply_delta(d.epoch, d.seq, d.prev_seq, d.bids, d.asks, d.checksum)
            except StreamError as exc:
                self.broken[symbol] = f"stream broken: {exc}"
                return
            self.server_checksum[symbol] = d.checksum
            self.report.symbol(symbol).level_changes += len(d.bids) + len(d.asks)


async def verify_through_server(
    records: Iterator[Record],
    url: str,
    *,
    feed_token: str | None,
    token: str | None = None,
    timeout: float = 30.0,
) -> Report:
    """Replay `records` through the server at `url` as fast as acks allow; return the report."""
    import websockets

    report = Report()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    ws = await websockets.connect(stream_url(url), additional_headers=headers, max_size=None)
    watcher = _Watcher(ws, report)
    indices: deque[int] = deque()
    definitions: dict[int, asyncio.Future[None]] = {}

    def on_ack(batch: FeedBatch, recs: list[Record], ack: codec.FeedAck) -> None:
        fut = definitions.pop(batch.batch_id, None)
        if fut is not None:
            fut.set_result(None)
            return
        positions = {p.symbol: p.seq for p in ack.positions}
        for rec in recs:
            watcher.expect(indices.popleft(), rec, positions)
        watcher.changed.set()

    sink = await FeedSink.connect(url, feed_token, on_ack)
    ids = itertools.count(1)
    index = 0
    try:
        while chunk := await pull(records):
            for rec in chunk:
                new = tuple(i for i in rec.instruments if i.symbol not in watcher.followers)
                if new:
                    batch_id = next(ids)
                    fut = definitions[batch_id] = asyncio.get_running_loop().create_future()
                    await sink.send(FeedBatch(batch_id, new, ()), [])
                    await asyncio.wait_for(fut, timeout)
                    for inst in new:
                        await watcher.subscribe(inst.symbol, timeout)
                report.records += 1
                if rec.note:
                    report.notes[rec.note] = report.notes.get(rec.note, 0) + 1
                for update in rec.updates:
                    report.symbol(update.symbol).records += 1
                indices.append(index)
                index += 1
                await sink.send(FeedBatch(next(ids), rec.instruments, rec.updates), [rec])
        await sink.drain()
        with contextlib.suppress(TimeoutError):
            await watcher.wait(watcher.settled, timeout, "the subscriber did not receive every change")
        watcher.give_up()
        for symbol, why in watcher.broken.items():
            report.rejected.append(f"{symbol}: {why}")
    finally:
        close = getattr(records, "close", None)
        if close is not None:  # a generator: let it close its files now
            close()
        await sink.close()
        await watcher.close()
    return report
