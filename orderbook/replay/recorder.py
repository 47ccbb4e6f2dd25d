"""`orderbook record`: subscribe to a node's /ws stream (binary protobuf, full
depth) and write every message received, with its receive time, to a file in
the recording format (orderbook/wire/recording.py), which `replay` and
`verify` read back.

* A symbol the server does not know yet (ERROR_CODE_UNKNOWN_SYMBOL) is asked
  for again after a jittered backoff until it exists. Each retry is preceded
  by a Ping: a successful request resets the server's count of consecutive
  errors, which would otherwise close the connection (1008) after 20 refusals.
* A dropped connection is re-established with jittered backoff; every symbol
  is subscribed again with its last recorded (epoch, seq) as resume point, so
  the server sends exactly the missed deltas or a fresh snapshot, both
  recorded as they arrive. Connection changes are recorded too.
* Recording stops on `duration`, after `max_messages`, on the `stop` event
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
import itertools
import logging
import os
import string
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import BinaryIO
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.typing import Origin, Subprotocol

from orderbook.client.backoff import Backoff
from orderbook.client.client import HandshakeRejected, open_unless_stopped, parse_retry_after
from orderbook.core.resume import ResumePoint
from orderbook.wire.codec import (
    SUBPROTOCOL_PROTO,
    ErrorCode,
    MalformedMessage,
    parse_server_message,
    ping_message,
    subscribe_message,
)
from orderbook.wire.recording import (
    START_RESUMED,
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
CLOSE_TIMEOUT = 5.0
# Refusals that retrying cannot fix; anything else (UNKNOWN_SYMBOL above all)
# is asked again later.
_PERMANENT = frozenset({ErrorCode.ERROR_CODE_INVALID_ARGUMENT, ErrorCode.ERROR_CODE_TOO_MANY_SUBSCRIPTIONS})
# The server already holds the subscription: its data flows, nothing to do.
_HARMLESS = frozenset({ErrorCode.ERROR_CODE_ALREADY_SUBSCRIBED})
_SYMBOL_KINDS = frozenset({"subscribed", "unsubscribed", "snapshot", "delta", "heartbeat", "error"})
# A subprotocol is an HTTP token; a token with other characters goes in the query.
_TOKEN_CHARS = frozenset(string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~")


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
    gzip-compressed, as is any `out` with `gzip=True`.

    `positions` holds the last recorded (epoch, seq) of each symbol and
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

        self.positions: dict[str, ResumePoint] = {}
        self.live: set[str] = set()
        name = out if isinstance(out, (str, os.PathLike)) else getattr(out, "name", "a file object")
        self.summary = RecordingSummary(str(name))
        self._wanted = list(self.symbols)
        self._requests: dict[int, str] = {}  # Subscribe in flight: request id -> symbol
        self._retry: dict[str, Backoff] = {}
        self._timers: set[asyncio.Task[None]] = set()
        self._ids = itertools.count(1)
        self._ws: ClientConnection | None = None
        self._closer: asyncio.Future[None] | None = None
        self._spool: _Spool | None = None
        self._stop = asyncio.Event()
        self._stopping = False
        self._started = False

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
            info = RecordingInfo(_without_token(self.url), self.symbols, start)
            await asyncio.to_thread(writer.write_header, info)
            self._spool = _Spool(writer, self.flush_interval)
            if self.duration is not None:
                deadline = loop.call_later(self.duration, self.request_stop, "duration")
            if self._external_stop is not None:
                watcher = asyncio.create_task(self._watch(self._external_stop))
            while not self._stopping:
                delay = await self._connect_once()
                if self._stopping:
                    break
                await self._sleep(delay)
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
            for timer in tuple(self._timers):
                timer.cancel()
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
        if self._stopping:
            return
        self._stopped(reason)
        ws = self._ws
        if ws is not None and self._closer is None:
            self._closer = asyncio.ensure_future(ws.close(1000, "recording stopped"))

    def _stopped(self, reason: str) -> None:
        if not self._stopping:
            self._stopping = True
            self.summary.stopped_by = reason
            self._stop.set()

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

    async def _sleep(self, delay: float) -> None:
        """Sleep `delay` seconds, or less if recording stops."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), delay)

    # ------------------------------------------------------------------ connection

    def _connect_args(self) -> tuple[str, list[Subprotocol]]:
        protocols = [Subprotocol(SUBPROTOCOL_PROTO)]
        url = self.url
        if self.token:
            if set(self.token) <= _TOKEN_CHARS:
                protocols.append(Subprotocol(f"bearer.{self.token}"))  # kept out of URLs and logs
            else:
                url = _with_query_token(url, self.token)
        return url, protocols

    async def _open_ws(self) -> ClientConnection:
        url, protocols = self._connect_args()
        return await connect(
            url,
            origin=Origin(self.origin) if self.origin else None,
            subprotocols=protocols,
            open_timeout=self.open_timeout,
            ping_interval=self.ping_interval,
            close_timeout=CLOSE_TIMEOUT,
            max_size=self.max_size,
        )

    async def _connect_once(self) -> float:
        """One connection attempt and, if it opens, its session. Returns the
        delay before the next attempt."""
        url = _without_token(self.url)
        opening = await open_unless_stopped(self._open_ws, self._stop)
        if opening is None:
            return 0.0
        try:
            ws = opening.result()
        except InvalidStatus as exc:
            response = exc.response
            status = response.status_code
            if 400 <= status < 500 and status != 429:
                raise HandshakeRejected(status, response.reason_phrase, response.body or b"") from exc
            delay = self.backoff.next_delay()
            if status in (429, 503):
                delay = max(parse_retry_after(response.headers.get("Retry-After")) or 0.0, delay)
            log.warning("%s answered HTTP %d; retrying in %.2f s", url, status, delay)
            return delay
        except (OSError, TimeoutError, InvalidHandshake, ConnectionClosed, EOFError) as exc:
            delay = self.backoff.next_delay()
            log.warning("cannot connect to %s (%s); retrying in %.2f s", url, str(exc) or type(exc).__name__, delay)
            return delay
        if self._stopping:
            await ws.close(1000, "recording stopped")
            return 0.0
        delivered = await self._session(ws)
        if delivered:
            self.backoff.reset()
        delay = self.backoff.next_delay()
        if not self._stopping:
            log.warning("connection to %s closed (code %s); reconnecting in %.2f s", url, ws.close_code, delay)
        return delay

    async def _session(self, ws: ClientConnection) -> bool:
        """Subscribe and record until the connection ends. Returns whether
        it delivered book data (a snapshot, a resume or a delta)."""
        spool = self._spool
        assert spool is not None
        self.summary.connects += 1
        self._ws = ws
        self._closer = None
        spool.add(connection_entry(time.time_ns(), ConnectionEvent(True, 0, ws.subprotocol or "")))
        delivered = False
        clean = False
        try:
            for symbol in tuple(self._wanted):
                await self._subscribe(ws, symbol)
            async for data in ws:
                if self._stopping:
                    continue  # drain until the closing handshake completes
                delivered = self._receive(data, time.time_ns()) or delivered
                if spool.full:
                    await spool.write_out()
            clean = True
        except ConnectionClosed:
            clean = True
        finally:
            self._ws = None
            self.live.clear()
            self._requests.clear()
            self._retry.clear()
            for timer in tuple(self._timers):
                timer.cancel()
            if self._closer is not None:
                with contextlib.suppress(Exception):
                    await self._closer
            elif not clean:
                await _shutdown(ws)
            code = ws.close_code if ws.close_code is not None else 1006
            spool.add(connection_entry(time.time_ns(), ConnectionEvent(False, code, ws.close_reason or "")))
        return delivered

    async def _subscribe(self, ws: ClientConnection, symbol: str) -> None:
        rid = next(self._ids)
        self._requests[rid] = symbol
        resume = self.positions.get(symbol)
        await ws.send(subscribe_message(symbol, 0, resume, rid).SerializeToString())

    # ------------------------------------------------------------------ messages

    def _receive(self, data: bytes | str, now_ns: int) -> bool:
        """Record one message and keep the positions; True for book data."""
        try:
            msg = parse_server_message(data)
        except MalformedMessage as exc:
            self.summary.malformed += 1
            log.warning("not recording an undecodable server message: %s", exc)
            return False
        payload = data if isinstance(data, bytes) else msg.SerializeToString()
        assert self._spool is not None
        self._spool.add(message_entry(now_ns, payload))
        summary = self.summary
        summary.messages += 1
        kind = msg.WhichOneof("kind")
        delivered = False
        if kind in _SYMBOL_KINDS:
            body = getattr(msg, kind)
            if body.symbol:
                summary.per_symbol[body.symbol] = summary.per_symbol.get(body.symbol, 0) + 1
            if kind == "delta" or kind == "snapshot":
                self.positions[body.symbol] = ResumePoint(body.epoch, body.seq)
                if kind == "snapshot":
                    self._streaming(body.symbol)
                delivered = True
            elif kind == "subscribed":
                delivered = self._on_subscribed(body)
            elif kind == "error":
                self._on_error(body)
        if self.max_messages is not None and summary.messages >= self.max_messages:
            self.request_stop("count")
        return delivered

    def _streaming(self, symbol: str) -> None:
        if symbol in self._retry:
            log.info("%s is available now; recording it", symbol)
            del self._retry[symbol]
        self.live.add(symbol)

    def _on_subscribed(self, m) -> bool:
        if self._requests.get(m.request_id) != m.symbol:
            return False
        del self._requests[m.request_id]
        if m.start == START_RESUMED:
            self._streaming(m.symbol)
            return True
        return False  # a snapshot follows

    def _on_error(self, e) -> None:
        symbol = self._requests.pop(e.request_id, None) if e.request_id else None
        if symbol is None:
            log.warning("server error: %s", e.message)
            return
        code_name = _code_name(e.code)
        if e.code in _HARMLESS:
            return
        if e.code in _PERMANENT:
            log.error("%s refused: %s %s", symbol, code_name, e.message)
            self.summary.refused[symbol] = f"{code_name}: {e.message}"
            self._wanted.remove(symbol)
            if not self._wanted:
                self.request_stop("refused")
            return
        retry = self._retry.setdefault(symbol, Backoff(self.resubscribe_base, self.resubscribe_cap))
        delay = max(retry.next_delay(), self.resubscribe_base / 2)
        # Said once; a symbol may take hours to appear.
        level = logging.INFO if retry.attempt == 1 else logging.DEBUG
        log.log(level, "%s: %s; asking again in %.2f s (and on, with backoff)", symbol, code_name, delay)
        task = asyncio.ensure_future(self._resubscribe(self._ws, symbol, delay))
        self._timers.add(task)
        task.add_done_callback(self._timers.discard)

    async def _resubscribe(self, ws: ClientConnection | None, symbol: str, delay: float) -> None:
        await asyncio.sleep(delay)
        if ws is None or ws is not self._ws or self._stopping:
            return
        with contextlib.suppress(ConnectionClosed):
            # The Ping's answer resets the server's count of consecutive errors.
            await ws.send(ping_message(next(self._ids)).SerializeToString())
            await self._subscribe(ws, symbol)


async def record(
    url: str, symbols: Iterable[str], out: str | os.PathLike[str] | BinaryIO, **options
) -> RecordingSummary:
    """Record `symbols` from `url` into `out` until the duration has passed,
    the message count is reached, `stop` is set or the task is cancelled;
    `options` are `Recorder`'s."""
    return await Recorder(url, symbols, out, **options).run()


def _code_name(code: int) -> str:
    try:
        return ErrorCode.Name(code)
    except ValueError:  # a code newer than this program
        return str(code)


def _without_token(url: str) -> str:
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "token"]
    return urlunsplit(parts._replace(query=urlencode(query)))


def _with_query_token(url: str, token: str) -> str:
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "token"]
    query.append(("token", token))
    return urlunsplit(parts._replace(query=urlencode(query)))


async def _shutdown(ws: ClientConnection) -> None:
    """Close `ws` after an error, reading and dropping what still arrives so
    the peer's close frame is seen."""
    closer = asyncio.ensure_future(ws.close(1000, "recording stopped"))
    try:
        async with asyncio.timeout(CLOSE_TIMEOUT):
            with contextlib.suppress(ConnectionClosed):
                async for _ in ws:
                    pass
            await closer
    except Exception:
        pass
    finally:
        if not closer.done():
            closer.cancel()
