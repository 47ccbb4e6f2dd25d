"""`orderbook record`: subscribe to a node's /ws stream (binary protobuf, full
depth) and write every message received, with its receive time, to a file in
the recording format (orderbook/wire/recording.py), which `replay` and
`verify` read back.

The recorder is a shell around the subscriber session (orderbook/session/),
on the client's connection loop (orderbook/client/connection.py):

* every book is verified as it arrives, and a broken stream is
  resynchronised in-band like any subscriber's; the recording holds every
  message received, the resynchronisation included;
* a symbol the server does not know yet (ERROR_CODE_UNKNOWN_SYMBOL) is asked
  for again after a jittered backoff until it exists. Each retry is preceded
  by a Ping: a successful request resets the server's count of consecutive
  errors, which would otherwise close the connection (1008) after 20 refusals;
* a dropped connection is re-established with jittered backoff; every symbol
  is subscribed again with its last verified (epoch, seq) as resume point, so
  the server sends exactly the missed deltas or a fresh snapshot, both
  recorded as they arrive. Connection changes are recorded too;
* recording stops on `duration`, after `max_messages`, on the `stop` event
  or on cancellation; the gzip stream is always ended properly, so the file
  is readable whichever way it stopped.

The event loop only parses each message and appends its encoded entry to a
list; a writer task moves the list to the file in a worker thread every
`flush_interval` seconds or every 64 KiB. Should the disk fall behind by
more than 8 MiB, reading pauses until it catches up: the server then treats
the recorder as a slow consumer (and sends a snapshot once it reads again)
instead of the recorder growing without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass, field
from ssl import SSLContext
from typing import Any, BinaryIO

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from orderbook.client.connection import ConnectionHooks, ConnectionLoop, Dialer, send_all
from orderbook.client.urls import without_token
from orderbook.core.resume import ResumePoint
from orderbook.session.backoff import Backoff
from orderbook.session.outputs import (
    BookUpdated,
    ErrorOutcome,
    ErrorReceived,
    Output,
    Rejected,
    RetrySubscribe,
    messages,
)
from orderbook.session.policy import RefusalPolicy
from orderbook.session.session import SubscriberSession
from orderbook.wire.codec import (
    SUBPROTOCOL_PROTO,
    ClientMessage,
    ErrorCode,
    MalformedMessage,
    ServerMessage,
    parse_server_message,
)
from orderbook.wire.recording import (
    ConnectionEvent,
    RecordingInfo,
    RecordingWriter,
    connection_entry,
    message_entry,
)

log = logging.getLogger("orderbook.record")

# Largest server message accepted (a snapshot of a very deep book).
MAX_MESSAGE_BYTES = 1 << 26
# Pending entries are written once they reach this size, without waiting.
FLUSH_BYTES = 1 << 16
# Beyond this much unwritten data, reading waits for the disk.
MAX_PENDING_BYTES = 8 << 20
# Refusals that retrying cannot fix; anything else (UNKNOWN_SYMBOL above all)
# is asked again later.
_PERMANENT = frozenset({ErrorCode.ERROR_CODE_INVALID_ARGUMENT, ErrorCode.ERROR_CODE_TOO_MANY_SUBSCRIPTIONS})
_SYMBOL_KINDS = frozenset({"subscribed", "unsubscribed", "snapshot", "delta", "heartbeat", "error"})


@dataclass(slots=True)
class RecordingSummary:
    """What a recording run wrote."""

    out: str
    messages: int = 0  # ServerMessages recorded
    bytes: int = 0  # written to the file (compressed, with gzip)
    entry_bytes: int = 0  # of entries before compression
    per_symbol: dict[str, int] = field(default_factory=dict)  # messages about each symbol
    connects: int = 0
    malformed: int = 0  # server messages that could not be decoded (not recorded)
    refused: dict[str, str] = field(default_factory=dict)  # symbols the server refused for good
    stopped_by: str = ""  # "duration", "count", "stop", "refused", "cancelled" or "error"

    def __str__(self) -> str:
        counts = ", ".join(f"{s} {n}" for s, n in sorted(self.per_symbol.items())) or "no symbol"
        text = (
            f"{self.messages} messages ({counts}), {self.bytes} bytes to {self.out}, "
            f"{self.connects} connection(s), stopped by {self.stopped_by or 'nothing'}"
        )
        if self.refused:
            text += "; refused: " + "; ".join(f"{s} ({why})" for s, why in sorted(self.refused.items()))
        return text


class _Spool:
    """Entries on their way to the file. The event loop appends bytes; one
    write at a time moves them to the file in a worker thread, in order."""

    def __init__(self, writer: RecordingWriter, interval: float) -> None:
        self.writer = writer
        self.interval = interval
        self.size = 0
        self._parts: list[bytes] = []
        self._lock = asyncio.Lock()
        self._kick = asyncio.Event()
        self._closing = False
        self._task = asyncio.create_task(self._run(), name="recording-writer")

    @property
    def full(self) -> bool:
        return self.size >= MAX_PENDING_BYTES

    def add(self, data: bytes) -> None:
        if self._task.done():
            self._task.result()  # a failed write (disk full) ends the recording
        self._parts.append(data)
        self.size += len(data)
        if self.size >= FLUSH_BYTES:
            self._kick.set()

    async def write_out(self) -> None:
        async with self._lock:
            if not self._parts:
                return
            parts, self._parts, self.size = self._parts, [], 0
            await asyncio.to_thread(self._write, b"".join(parts), len(parts))

    def _write(self, data: bytes, entries: int) -> None:
        self.writer.write(data, entries)
        self.writer.flush()

    async def _run(self) -> None:
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), self.interval)
            self._kick.clear()
            await self.write_out()

    async def close(self) -> None:
        """Write what is left and end the stream (the gzip trailer)."""
        self._closing = True
        self._kick.set()
        try:
            await self._task
        finally:
            try:
                await self.write_out()
            finally:
                await asyncio.to_thread(self.writer.close)


class Recorder:
    """Records `symbols` from the /ws endpoint at `url` into `out` (a path,
    or a binary file object that is left open). A path ending in ".gz" is
    gzip-compressed, as is any `out` with `gzip=True`. `ssl` verifies a
    wss:// server (default: the system's CAs, or $SSL_CERT_FILE).

    `positions` holds the last verified (epoch, seq) of each symbol and
    `live` the symbols streaming on the current connection; `summary` is
    kept current and returned by `run()`.
    """

    def __init__(
        self,
        url: str,
        symbols: Iterable[str],
        out: str | os.PathLike[str] | BinaryIO,
        *,
        token: str | None = None,
        gzip: bool = False,
        duration: float | None = None,
        max_messages: int | None = None,
        stop: asyncio.Event | None = None,
        origin: str | None = None,
        backoff: Backoff | None = None,
        resubscribe_base: float = 0.5,
        resubscribe_cap: float = 10.0,
        open_timeout: float = 10.0,
        ping_interval: float | None = 20.0,
        flush_interval: float = 1.0,
        max_size: int = MAX_MESSAGE_BYTES,
        ssl: SSLContext | None = None,
    ) -> None:
        self.symbols = tuple(dict.fromkeys(symbols))
        if not self.symbols or not all(self.symbols):
            raise ValueError("give at least one symbol, none empty")
        if duration is not None and duration <= 0:
            raise ValueError("duration must be > 0 seconds")
        if max_messages is not None and max_messages < 1:
            raise ValueError("max_messages must be >= 1")
        self.url = url
        self.out = out
        self.token = token
        self.gzip = gzip
        self.duration = duration
        self.max_messages = max_messages
        self.origin = origin
        self.backoff = backoff if backoff is not None else Backoff()
        self.resubscribe_base = resubscribe_base
        self.resubscribe_cap = resubscribe_cap
        self.open_timeout = open_timeout
        self.ping_interval = ping_interval
        self.flush_interval = flush_interval
        self.max_size = max_size
        self._external_stop = stop

        name = out if isinstance(out, (str, os.PathLike)) else getattr(out, "name", "a file object")
        self.summary = RecordingSummary(str(name))
        # A symbol may take hours to appear: wait for any but the refusals
        # that will not pass, and keep the connection open while waiting.
        refusals = RefusalPolicy(
            give_up=_PERMANENT,
            wait_if_held=False,
            retry_base=resubscribe_base,
            retry_cap=resubscribe_cap,
            retry_floor=resubscribe_base / 2,
            ping_before_retry=True,
        )
        self._session = SubscriberSession(self.symbols, refusals=refusals)
        dialer = Dialer(
            url,
            SUBPROTOCOL_PROTO,
            token=token,
            token_as_subprotocol=True,
            origin=origin,
            open_timeout=open_timeout,
            ping_interval=ping_interval,
            max_size=max_size,
            ssl=ssl,
        )
        self._loop = ConnectionLoop(dialer, self.backoff, log, "recording stopped")
        self._hooks = ConnectionHooks(self._opened, self._received, self._closed, self._failed)
        self._waiting: set[str] = set()  # symbols asked for again until they exist
        self._timers: set[asyncio.Task[None]] = set()
        self._spool: _Spool | None = None
        self._stopping = False
        self._started = False

    @property
    def positions(self) -> dict[str, ResumePoint]:
        """The last verified (epoch, seq) of each symbol that had a book."""
        return {
            s: ResumePoint(f.epoch, f.seq)
            for s, f in self._session.books.items()
            if f.epoch is not None and f.seq is not None
        }

    @property
    def live(self) -> set[str]:
        """The symbols streaming on the current connection."""
        return {s for s in self.symbols if self._session.is_live(s)}

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> RecordingSummary:
        """Record until stopped; returns the summary once the file is closed.
        Raises `HandshakeRejected` when the server refuses the upgrade for
        good (bad token, forbidden origin), after closing the file."""
        if self._started:
            raise RuntimeError("a Recorder runs once")
        self._started = True
        file, owned = await self._open_out()
        writer = RecordingWriter(file, gzip=self.gzip, flush_bytes=None)
        loop = asyncio.get_running_loop()
        deadline = None
        watcher = None
        try:
            start = time.time_ns()
            info = RecordingInfo(without_token(self.url), self.symbols, start)
            await asyncio.to_thread(writer.write_header, info)
            self._spool = _Spool(writer, self.flush_interval)
            if self.duration is not None:
                deadline = loop.call_later(self.duration, self.request_stop, "duration")
            if self._external_stop is not None:
                watcher = asyncio.create_task(self._watch(self._external_stop))
            await self._loop.run(self._hooks)
        except asyncio.CancelledError:
            self._stopped("cancelled")
            raise
        except BaseException:
            self._stopped("error")
            raise
        finally:
            if deadline is not None:
                deadline.cancel()
            if watcher is not None:
                watcher.cancel()
            self._cancel_timers()
            try:
                if self._spool is not None:
                    await self._spool.close()
                else:
                    await asyncio.to_thread(writer.close)
            finally:
                if owned:
                    await asyncio.to_thread(file.close)
                self.summary.bytes = writer.file_bytes
                self.summary.entry_bytes = writer.entry_bytes
        return self.summary

    def request_stop(self, reason: str = "stop") -> None:
        """Stop recording: close the connection cleanly, then the file."""
        self._stopped(reason)

    def _stopped(self, reason: str) -> None:
        if not self._stopping:
            self._stopping = True
            self.summary.stopped_by = reason
            self._loop.stop()

    async def _watch(self, event: asyncio.Event) -> None:
        await event.wait()
        self.request_stop("stop")

    async def _open_out(self) -> tuple[BinaryIO, bool]:
        out = self.out
        if not isinstance(out, (str, os.PathLike)):
            return out, False
        path = os.fspath(out)
        self.gzip = self.gzip or path.endswith(".gz")
        return await asyncio.to_thread(open, path, "wb"), True

    # ------------------------------------------------------------------ connection hooks

    async def _opened(self, ws: ClientConnection) -> None:
        spool = self._spool
        assert spool is not None
        self.summary.connects += 1
        spool.add(connection_entry(time.time_ns(), ConnectionEvent(True, 0, ws.subprotocol or "")))
        await send_all(ws, self._act(self._session.open()))

    async def _received(self, data: bytes | str) -> None:
        spool = self._spool
        assert spool is not None
        sends = self._receive(data, time.time_ns())
        ws = self._loop.ws
        if sends and ws is not None:
            await send_all(ws, sends)
        if spool.full:
            await spool.write_out()

    def _closed(self, ws: ClientConnection, ended: ConnectionClosed | None) -> bool:
        self._cancel_timers()
        self._act(self._session.close())
        code = ws.close_code if ws.close_code is not None else 1006
        if self._spool is not None:
            self._spool.add(connection_entry(time.time_ns(), ConnectionEvent(False, code, ws.close_reason or "")))
        return self._session.delivered

    def _failed(self, exc: BaseException) -> None:
        pass  # the loop logs it and waits before the next attempt

    # ------------------------------------------------------------------ messages

    def _receive(self, data: bytes | str, now_ns: int) -> list[ClientMessage]:
        """Record one message and hand it to the session; what to send back."""
        try:
            msg = parse_server_message(data)
        except MalformedMessage as exc:
            self.summary.malformed += 1
            log.warning("not recording an undecodable server message: %s", exc)
            return []
        payload: bytes = data if isinstance(data, bytes) else msg.SerializeToString()
        assert self._spool is not None
        self._spool.add(message_entry(now_ns, payload))
        summary = self.summary
        summary.messages += 1
        symbol = _symbol_of(msg)
        if symbol:
            summary.per_symbol[symbol] = summary.per_symbol.get(symbol, 0) + 1
        sends = self._act(self._session.receive(msg))
        if self.max_messages is not None and summary.messages >= self.max_messages:
            self.request_stop("count")
        return sends

    def _act(self, outputs: list[Output]) -> list[ClientMessage]:
        """Act on the session's decisions; the messages to send."""
        for o in outputs:
            if isinstance(o, BookUpdated):
                if o.symbol in self._waiting:
                    self._waiting.discard(o.symbol)
                    log.info("%s is available now; recording it", o.symbol)
            elif isinstance(o, RetrySubscribe):
                self._waiting.add(o.symbol)
                # Said once; a symbol may take hours to appear.
                level = logging.INFO if o.attempt == 1 else logging.DEBUG
                error = self._session.stats.last_error
                why = error.code_name if error is not None else "refused"
                log.log(level, "%s: %s; asking again in %.2f s (and on, with backoff)", o.symbol, why, o.delay)
                self._spawn_timer(self._retry_later(o.symbol, o.delay))
            elif isinstance(o, Rejected):
                e = o.error
                log.error("%s refused: %s %s", o.symbol, e.code_name, e.message)
                self.summary.refused[o.symbol] = f"{e.code_name}: {e.message}"
                if not self._session.symbols:
                    self.request_stop("refused")
            elif isinstance(o, ErrorReceived) and o.outcome is ErrorOutcome.UNRELATED:
                log.warning("server error: %s", o.error)
        return messages(outputs)

    def _spawn_timer(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._timers.add(task)
        task.add_done_callback(self._timers.discard)

    def _cancel_timers(self) -> None:
        for timer in tuple(self._timers):
            timer.cancel()
        self._timers.clear()

    async def _retry_later(self, symbol: str, delay: float) -> None:
        await asyncio.sleep(delay)
        ws = self._loop.ws
        if ws is None or self._stopping:
            return
        with contextlib.suppress(ConnectionClosed):
            await send_all(ws, self._act(self._session.retry(symbol)))


async def record(
    url: str, symbols: Iterable[str], out: str | os.PathLike[str] | BinaryIO, **options: Any
) -> RecordingSummary:
    """Record `symbols` from `url` into `out` until the duration has passed,
    the message count is reached, `stop` is set or the task is cancelled;
    `options` are `Recorder`'s."""
    return await Recorder(url, symbols, out, **options).run()


def _symbol_of(msg: ServerMessage) -> str:
    """The symbol a server message is about ("" for none)."""
    kind = msg.WhichOneof("kind")
    if kind not in _SYMBOL_KINDS:
        return ""
    symbol: str = getattr(msg, kind).symbol
    return symbol
