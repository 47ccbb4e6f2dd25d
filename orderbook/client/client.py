"""An asyncio subscriber for the /ws book stream.

`OrderbookClient` keeps one `BookFollower` per symbol, verifies every message
through it (prev_seq continuity, checksums, heartbeat positions) and repairs
what goes wrong at the narrowest scope:

* a broken stream for one symbol (gap, checksum mismatch, duplicate, epoch
  change) is resynchronised in-band: Unsubscribe, then Subscribe without a
  resume point; the connection and the other symbols are left alone;
* a dropped connection is re-established after a jittered backoff, and every
  symbol resumes from the last (epoch, seq) it applied, so the server sends
  only the missed deltas (or a snapshot when it cannot);
* a 4xx rejection of the upgrade (bad token, forbidden Origin) ends `run()`
  with `HandshakeRejected` instead of retrying forever; 429/503 are retried,
  no sooner than the server's Retry-After.

Messages are handled inline in the reading task: nothing is queued beyond the
WebSocket library's own bounded receive buffer, so a slow consumer
back-pressures the server (which then resynchronises it or closes it with
1013) instead of growing memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import enum
import itertools
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass
from datetime import UTC
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.typing import Origin, Subprotocol

from orderbook.core.errors import (
    ChecksumMismatch,
    DuplicateDelta,
    EpochMismatch,
    OrderbookError,
    SequenceGap,
    StreamError,
)
from orderbook.core.follower import BookFollower
from orderbook.core.resume import ResumePoint
from orderbook.wire.codec import (
    SUBPROTOCOL_JSON,
    ClientMessage,
    Encoding,
    ErrorCode,
    MalformedMessage,
    ServerMessage,
    instrument_from_pb,
    levels_from_pb,
    parse_server_message,
    ping_message,
    subscribe_message,
    to_json,
    unsubscribe_message,
)

from .backoff import Backoff

if TYPE_CHECKING:  # annotations only: the codec is the module that imports generated code
    from orderbook.v1 import stream_pb2

log = logging.getLogger("orderbook.client")

UpdateKind = Literal["snapshot", "delta", "resumed"]
OnUpdate = Callable[[str, BookFollower, UpdateKind], None]

# How many recent problems `OrderbookClient.last_errors` keeps.
LAST_ERRORS = 32
# A Retry-After beyond this is treated as this: a misconfigured server must not
# park a client for days.
MAX_RETRY_AFTER = 3600.0
# Bound on waiting for the closing handshake; the reader keeps draining
# meanwhile, so a responsive server finishes far sooner.
CLOSE_TIMEOUT = 5.0
# Retry delays for a subscription the server refused with a transient error
# (ERROR_CODE_INTERNAL and unknown codes), on the same connection.
SUBSCRIBE_RETRY_BASE = 0.5
SUBSCRIBE_RETRY_CAP = 10.0

# Subscription refusals that retrying cannot fix.
_PERMANENT_REFUSALS = frozenset(
    {
        ErrorCode.ERROR_CODE_UNKNOWN_SYMBOL,
        ErrorCode.ERROR_CODE_INVALID_ARGUMENT,
        ErrorCode.ERROR_CODE_TOO_MANY_SUBSCRIPTIONS,
    }
)

# The Start enum, read from the message descriptor (the codec is the only
# module importing generated code; values are never renumbered).
_START_ENUM = ServerMessage.DESCRIPTOR.fields_by_name["subscribed"].message_type.fields_by_name["start"].enum_type
_START_RESUMED = _START_ENUM.values_by_name["START_RESUMED"].number
_REASON_ENUM = ServerMessage.DESCRIPTOR.fields_by_name["subscribed"].message_type.fields_by_name["reason"].enum_type


# ----------------------------------------------------------------------------- errors


class ClientError(OrderbookError):
    """Base of the errors `OrderbookClient` raises."""


class HandshakeRejected(ClientError):
    """The server refused the WebSocket upgrade with a status that retrying
    will not fix (401 bad token, 403 Origin not allowed, 426, other 4xx)."""

    def __init__(self, status: int, reason: str = "", body: bytes = b"") -> None:
        text = body.decode("utf-8", "replace").strip()[:200]
        detail = f": {text}" if text else (f" {reason}" if reason else "")
        super().__init__(f"server rejected the WebSocket upgrade: HTTP {status}{detail}")
        self.status, self.reason, self.body = status, reason, body


class ServerError(ClientError):
    """An Error message the server sent (kept in `stats.last_error` and
    `last_errors`; raised only through `SubscriptionRejected`)."""

    def __init__(self, code: int, message: str, symbol: str = "", request_id: int = 0) -> None:
        try:
            name = ErrorCode.Name(code)
        except ValueError:
            name = str(code)
        where = f" ({symbol})" if symbol else ""
        super().__init__(f"{name}{where}: {message}")
        self.code, self.code_name, self.message = code, name, message
        self.symbol, self.request_id = symbol, request_id


class SubscriptionRejected(ServerError):
    """The server refused a subscription for good (unknown symbol, invalid
    depth, too many subscriptions). The symbol is dropped from the client;
    `wait_synced` raises this for it."""


class ClientClosed(ClientError):
    """The client was closed (or `run()` ended) while something waited on it."""


class ResumeMismatch(StreamError):
    """The server's START_RESUMED does not match the point the client sent."""


# ----------------------------------------------------------------------------- state


@dataclass(slots=True)
class ClientStats:
    """Counters since the client was created."""

    connects: int = 0  # successful WebSocket handshakes
    reconnects: int = 0  # successful handshakes after the first
    connect_failures: int = 0  # failed connection attempts (refused, timeout, HTTP status)
    snapshots: int = 0  # snapshots applied
    deltas: int = 0  # deltas applied
    resumes: int = 0  # START_RESUMED acknowledgements honoured
    resyncs: int = 0  # in-band resynchronisations started
    gaps: int = 0  # prev_seq gaps, heartbeat seq mismatches
    checksum_failures: int = 0
    duplicates: int = 0
    epoch_changes: int = 0  # a delta or heartbeat from another epoch
    errors: int = 0  # Error messages received
    heartbeats: int = 0
    malformed: int = 0  # server messages that could not be decoded
    last_error: ServerError | None = None  # the last Error message received


class SubState(enum.Enum):
    """Where one symbol's subscription stands on the current connection."""

    SUBSCRIBING = "subscribing"  # Subscribe sent; waiting for Subscribed
    SNAPSHOT_WAIT = "snapshot-wait"  # START_SNAPSHOT acknowledged; waiting for the Snapshot
    LIVE = "live"  # the book is current; deltas and heartbeats are applied
    UNSUBSCRIBING = "unsubscribing"  # Unsubscribe sent; waiting for Unsubscribed


@dataclass(slots=True)
class _Sub:
    symbol: str
    depth: int  # as requested, then as granted by Subscribed
    state: SubState
    request_id: int  # of the Subscribe or Unsubscribe in flight
    resume: ResumePoint | None = None  # sent with the Subscribe


@dataclass(slots=True)
class _Waiter:
    ready: Callable[[], bool]  # may raise to fail the wait
    future: asyncio.Future[None]


def _encoding(value: str | Encoding) -> Encoding:
    if isinstance(value, Encoding):
        return value
    v = value.lower()
    if v in ("proto", "protobuf", "binary", Encoding.PROTOBUF.value):
        return Encoding.PROTOBUF
    if v in ("json", Encoding.JSON.value):
        return Encoding.JSON
    raise ValueError(f"unknown encoding {value!r} (use 'proto' or 'json')")


def _with_token(url: str, token: str | None) -> str:
    if not token:
        return url
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "token"]
    query.append(("token", token))
    return urlunsplit(parts._replace(query=urlencode(query)))


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if not parts.query:
        return url
    query = [(k, "***" if k == "token" else v) for k, v in parse_qsl(parts.query, keep_blank_values=True)]
    return urlunsplit(parts._replace(query=urlencode(query)))


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date),
    clamped to [0, MAX_RETRY_AFTER]; None when absent or unparsable."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return min(max(seconds, 0.0), MAX_RETRY_AFTER) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    delay = when.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(delay):
        return None
    return min(max(delay, 0.0), MAX_RETRY_AFTER)


# ----------------------------------------------------------------------------- client


async def open_unless_stopped(
    open_ws: Callable[[], Awaitable[ClientConnection]], stop: asyncio.Event
) -> asyncio.Future[ClientConnection] | None:
    """Open a connection unless `stop` is set first: the finished opening
    (its result or its exception), or None if stopping won the race."""
    opening = asyncio.ensure_future(open_ws())
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait((opening, stopping), return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        if not opening.done():
            opening.cancel()
            await asyncio.gather(opening, return_exceptions=True)
    return None if opening.cancelled() else opening


class OrderbookClient:
    """Subscribe to books over one WebSocket connection and keep them current.

    ``books[symbol]`` is the `BookFollower` for each subscribed symbol; its
    book, epoch and seq are exact and verified. Use `is_live(symbol)` to know
    whether it is current: after a disconnection a follower keeps its last
    verified state (that is what it resumes from) until the connection is
    back.

    ``on_update(symbol, follower, kind)`` is called in the reading task after
    each applied message, kind being "snapshot", "delta" or "resumed"; it must
    not block, and an exception it raises ends `run()`.

    With ``record=True`` the client keeps, per symbol, the (epoch, seq) of
    every delta applied (`seen_seqs`) and of every snapshot applied
    (`snapshot_seqs`, counted in `snapshot_counts`); meant for tests.

    Use either ``await client.run()`` in a task of your own and
    ``await client.close()`` to stop it, or ``async with client:`` which runs
    it in the background and closes it on exit. A closed client stays closed.
    """

    def __init__(
        self,
        url: str,
        symbols: Iterable[str] = (),
        *,
        depth: int = 0,
        interval_ms: int = 0,
        encoding: str | Encoding = "proto",
        token: str | None = None,
        origin: str | None = None,
        backoff: Backoff | None = None,
        open_timeout: float = 10,
        ping_interval: float | None = 20,
        on_update: OnUpdate | None = None,
        record: bool = False,
        max_size: int | None = 2**24,
    ) -> None:
        if depth < 0:
            raise ValueError("depth must be >= 0")
        if interval_ms < 0:
            raise ValueError("interval_ms must be >= 0")
        self.url = url
        self.depth = depth
        # Conflation asked for every subscription: at most one delta per interval.
        self.interval_ms = interval_ms
        self.encoding = _encoding(encoding)
        self.token = token
        self.origin = origin
        self.backoff = backoff if backoff is not None else Backoff()
        self.open_timeout = open_timeout
        self.ping_interval = ping_interval
        self.on_update = on_update
        self.record = record
        self.max_size = max_size

        self.books: dict[str, BookFollower] = {}
        self.stats = ClientStats()
        self.last_errors: deque[BaseException] = deque(maxlen=LAST_ERRORS)
        self.failed: dict[str, SubscriptionRejected] = {}
        self.seen_seqs: dict[str, list[tuple[int, int]]] = {}
        self.snapshot_seqs: dict[str, list[tuple[int, int]]] = {}
        self.snapshot_counts: dict[str, int] = {}
        self.last_close_code: int | None = None
        self.last_close_reason: str = ""

        # What the user wants (symbol -> depth); survives reconnections.
        self._wanted: dict[str, int] = {}
        for symbol in symbols:
            self._want(symbol, depth)
        # Per connection.
        self._ws: ClientConnection | None = None
        self._json = False
        self._subs: dict[str, _Sub] = {}
        self._outbox: list[ClientMessage] = []  # sends decided while handling one message
        self._delivered = False
        self._timers: set[asyncio.Task[None]] = set()
        self._pings: dict[int, tuple[float, asyncio.Future[float]]] = {}
        self._sub_retry: dict[str, Backoff] = {}
        # Lifecycle.
        self._ids = itertools.count(1)
        self._waiters: list[_Waiter] = []
        self._stop = asyncio.Event()
        self._done = asyncio.Event()
        self._closing = False
        self._closer: asyncio.Task[None] | None = None
        self._running = False
        self._run_task: asyncio.Task[object] | None = None  # the task inside run()
        self._ended = False
        self._end_exc: BaseException | None = None
        self._background: asyncio.Task[None] | None = None  # from __aenter__

    # ------------------------------------------------------------------ introspection

    @property
    def symbols(self) -> tuple[str, ...]:
        """The symbols the client is subscribed to (or will be on connect)."""
        return tuple(self._wanted)

    @property
    def connected(self) -> bool:
        return self._ws is not None

    @property
    def closed(self) -> bool:
        return self._closing

    def state(self, symbol: str) -> SubState | None:
        """The subscription state of `symbol` on the current connection."""
        sub = self._subs.get(symbol)
        return sub.state if sub is not None else None

    def is_live(self, symbol: str) -> bool:
        """True if `symbol`'s book is current on the open connection."""
        sub = self._subs.get(symbol)
        return sub is not None and sub.state is SubState.LIVE

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        """Connect, subscribe and keep every book current until `close()`.

        Reconnects with backoff after any connection failure. Raises
        `HandshakeRejected` when the server refuses the upgrade for good (4xx
        other than 429), and whatever `on_update` raises.
        """
        if self._running:
            raise RuntimeError("run() is already running")
        self._running = True
        self._run_task = asyncio.current_task()
        self._ended, self._end_exc = False, None
        self._done.clear()
        outcome: BaseException | None = None
        try:
            while not self._closing:
                delay = await self._connect_once()
                if self._closing:
                    break
                log.debug("reconnecting in %.3f s", delay)
                await self._sleep(delay)
        except BaseException as exc:
            outcome = exc
            raise
        finally:
            self._running = False
            self._run_task = None
            self._ended = True
            if isinstance(outcome, Exception):
                self._end_exc = outcome
                self._fail_waiters(outcome)
            else:
                self._fail_waiters(ClientClosed("the client is closed" if self._closing else "run() ended"))
            self._done.set()

    async def close(self) -> None:
        """Close the connection cleanly (code 1000) and make `run()` return.

        Safe to call from any task, including from `on_update`; outside the
        reading task it returns once `run()` has returned."""
        if not self._closing:
            self._closing = True
            self._stop.set()
            ws = self._ws
            if ws is not None:
                # The reading task keeps draining until the server's close
                # frame arrives, so the handshake completes promptly.
                self._closer = asyncio.ensure_future(ws.close(1000, "client closing"))
        if self._running and asyncio.current_task() is not self._run_task:
            await self._done.wait()

    async def __aenter__(self) -> OrderbookClient:
        self._background = asyncio.create_task(self._run_in_background(), name="orderbook-client")
        return self

    async def __aexit__(self, exc_type: object, exc: object, tb: object) -> None:
        await self.close()
        task, self._background = self._background, None
        if task is not None:
            await task
        # A failure of run() surfaces here unless the body already failed.
        if exc is None and self._end_exc is not None:
            raise self._end_exc

    async def _run_in_background(self) -> None:
        # The exception is kept in _end_exc and re-raised by __aexit__ and the
        # waits; swallowing it here avoids "exception never retrieved" noise.
        with contextlib.suppress(Exception):
            await self.run()

    # ------------------------------------------------------------------ public requests

    async def subscribe(self, symbol: str, depth: int | None = None) -> None:
        """Subscribe to `symbol` (at `depth`, default the client's). Returns
        once the request is sent (or queued for the next connection); use
        `wait_synced` to wait for the book. Subscribing again with another
        depth resubscribes."""
        d = self.depth if depth is None else depth
        if d < 0:
            raise ValueError("depth must be >= 0")
        previous = self._wanted.get(symbol)
        self._want(symbol, d)
        ws = self._ws
        if ws is None:
            return
        sub = self._subs.get(symbol)
        if sub is None:
            if symbol not in self._sub_retry:  # else a retry timer subscribes it
                self._queue_subscribe(symbol, d)
        elif sub.state is not SubState.UNSUBSCRIBING and previous != d:
            # New depth: leave and come back (resubscribes on the ack).
            self._queue_unsubscribe(sub)
        # UNSUBSCRIBING: the ack resubscribes it, since it is wanted again.
        await self._flush_quietly()

    async def unsubscribe(self, symbol: str) -> None:
        """Stop receiving `symbol` and forget its book."""
        self._wanted.pop(symbol, None)
        self.books.pop(symbol, None)
        self.failed.pop(symbol, None)
        self._sub_retry.pop(symbol, None)
        sub = self._subs.get(symbol)
        if self._ws is None or sub is None or sub.state is SubState.UNSUBSCRIBING:
            return
        self._queue_unsubscribe(sub)
        await self._flush_quietly()

    async def ping(self, timeout: float = 5.0) -> float:
        """Send an application Ping and return the round trip in seconds.
        Raises ConnectionError when not connected (or the connection drops)."""
        if self._ws is None:
            raise ConnectionError("not connected")
        rid = next(self._ids)
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._pings[rid] = (time.perf_counter(), fut)
        try:
            self._outbox.append(ping_message(rid))
            await self._flush_quietly()
            return await asyncio.wait_for(fut, timeout)
        finally:
            self._pings.pop(rid, None)

    # ------------------------------------------------------------------ waits

    async def wait_synced(self, symbols: Iterable[str] | None = None, timeout: float | None = 10.0) -> None:
        """Wait until every given symbol (default: all subscribed) has a live,
        verified book. Raises TimeoutError, `SubscriptionRejected` for a
        symbol the server refused, or the error that ended `run()`."""
        wanted = tuple(self._wanted) if symbols is None else tuple(symbols)
        for s in wanted:
            if s not in self._wanted and s not in self.failed:
                raise ValueError(f"{s!r} is not subscribed")

        def ready() -> bool:
            for s in wanted:
                if s in self.failed:
                    raise self.failed[s]
            return all(self.is_live(s) for s in wanted)

        await self._wait(ready, timeout)

    async def wait_seq(
        self, symbol: str, seq: int, timeout: float | None = 10.0, *, epoch: int | None = None
    ) -> BookFollower:
        """Wait until `symbol`'s live book has reached `seq` (in `epoch`, if
        given) and return its follower."""

        def ready() -> bool:
            if symbol in self.failed:
                raise self.failed[symbol]
            if not self.is_live(symbol):
                return False
            f = self.books[symbol]
            return f.seq is not None and f.seq >= seq and (epoch is None or f.epoch == epoch)

        await self._wait(ready, timeout)
        return self.books[symbol]

    async def _wait(self, ready: Callable[[], bool], timeout: float | None) -> None:
        if ready():
            return
        if self._ended or (self._closing and not self._running):
            raise self._end_exc or ClientClosed("the client is closed")
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiter = _Waiter(ready, fut)
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(fut, timeout)
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)

    def _notify(self) -> None:
        if not self._waiters:
            return
        for w in tuple(self._waiters):
            if w.future.done():
                continue
            try:
                if w.ready():
                    w.future.set_result(None)
            except Exception as exc:
                w.future.set_exception(exc)

    def _fail_waiters(self, exc: BaseException) -> None:
        for w in self._waiters:
            if not w.future.done():
                w.future.set_exception(exc)
        self._waiters.clear()

    # ------------------------------------------------------------------ connection loop

    def _want(self, symbol: str, depth: int) -> None:
        if not symbol:
            raise ValueError("empty symbol")
        self._wanted[symbol] = depth
        self.failed.pop(symbol, None)
        if symbol not in self.books:
            self.books[symbol] = BookFollower(symbol)

    async def _sleep(self, delay: float) -> None:
        """Sleep `delay` seconds, or less if `close()` is called."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), delay)

    async def _open(self) -> ClientConnection:
        return await connect(
            _with_token(self.url, self.token),
            origin=Origin(self.origin) if self.origin else None,
            subprotocols=[Subprotocol(self.encoding.value)],
            open_timeout=self.open_timeout,
            ping_interval=self.ping_interval,
            close_timeout=CLOSE_TIMEOUT,
            max_size=self.max_size,
        )

    async def _connect_once(self) -> float:
        """One connection attempt and, if it opens, its whole session. Returns
        the delay before the next attempt."""
        url = _redact(_with_token(self.url, self.token))
        opening = await open_unless_stopped(self._open, self._stop)
        if opening is None:
            return 0.0
        try:
            ws = opening.result()
        except InvalidStatus as exc:
            self.stats.connect_failures += 1
            self.last_errors.append(exc)
            response = exc.response
            status = response.status_code
            if status in (429, 503):
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
                delay = max(retry_after or 0.0, self.backoff.next_delay())
                log.warning("%s answered HTTP %d; retrying in %.2f s", url, status, delay)
                return delay
            if 400 <= status < 500:
                raise HandshakeRejected(status, response.reason_phrase, response.body or b"") from exc
            delay = self.backoff.next_delay()
            log.warning("%s answered HTTP %d; retrying in %.2f s", url, status, delay)
            return delay
        except (OSError, TimeoutError, InvalidHandshake, ConnectionClosed, EOFError) as exc:
            self.stats.connect_failures += 1
            self.last_errors.append(exc)
            delay = self.backoff.next_delay()
            log.warning("cannot connect to %s (%s); retrying in %.2f s", url, str(exc) or type(exc).__name__, delay)
            return delay
        if self._closing:
            await ws.close(1000, "client closing")
            return 0.0
        log.info("connected to %s (%s)", url, ws.subprotocol or "default encoding")
        delivered = await self._session(ws)
        if delivered:
            self.backoff.reset()
        delay = self.backoff.next_delay()
        if not self._closing:
            log.warning(
                "connection to %s closed (code %s %s); reconnecting in %.2f s",
                url, self.last_close_code, self.last_close_reason, delay,
            )  # fmt: skip
        return delay

    async def _session(self, ws: ClientConnection) -> bool:
        """Subscribe everything wanted and handle messages until the
        connection ends. Returns whether it delivered book data."""
        self.stats.connects += 1
        if self.stats.connects > 1:
            self.stats.reconnects += 1
        self._ws = ws
        # Without an agreed subprotocol the server speaks its default, binary.
        self._json = ws.subprotocol == SUBPROTOCOL_JSON
        self._subs = {}
        self._outbox = []
        self._delivered = False
        clean = False
        try:
            for symbol, depth in tuple(self._wanted.items()):
                if symbol not in self._subs:
                    self._queue_subscribe(symbol, depth)
            await self._flush()
            async for data in ws:
                if self._closing:
                    continue  # drain until the close handshake completes
                self._dispatch(data)
                if self._outbox:
                    await self._flush()
            clean = True
        except ConnectionClosed as exc:
            self.last_errors.append(exc)
            clean = True
        finally:
            self._end_session(ws)
            if self._closer is not None:
                with contextlib.suppress(Exception):
                    await self._closer
            elif not clean:
                # Leaving on an exception (on_update raised, cancellation):
                # still close properly, draining so the close frame is read.
                await _shutdown(ws)
            self.last_close_code = ws.close_code
            self.last_close_reason = ws.close_reason or ""
        return self._delivered

    def _end_session(self, ws: ClientConnection) -> None:
        self._ws = None
        self._subs = {}
        self._outbox = []
        self._sub_retry.clear()
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        for _, fut in self._pings.values():
            if not fut.done():
                fut.set_exception(ConnectionError("connection closed"))
        self._pings.clear()

    # ------------------------------------------------------------------ sending

    def _queue_subscribe(self, symbol: str, depth: int) -> None:
        follower = self.books.get(symbol)
        if follower is None:
            follower = self.books[symbol] = BookFollower(symbol)
        # Resume only a book of the same shape: a depth-limited book cannot
        # continue as a full one (the server refuses depth-limited resumes).
        resume = follower.resume_point() if follower.depth == depth else None
        rid = next(self._ids)
        self._subs[symbol] = _Sub(symbol, depth, SubState.SUBSCRIBING, rid, resume)
        self._outbox.append(subscribe_message(symbol, depth, resume, rid, self.interval_ms))

    def _queue_unsubscribe(self, sub: _Sub) -> None:
        sub.state = SubState.UNSUBSCRIBING
        sub.request_id = next(self._ids)
        self._outbox.append(unsubscribe_message(sub.symbol, sub.request_id))

    async def _flush(self) -> None:
        ws = self._ws
        outbox, self._outbox = self._outbox, []
        if ws is None:
            return
        for msg in outbox:
            await ws.send(to_json(msg) if self._json else msg.SerializeToString())

    async def _flush_quietly(self) -> None:
        # From a caller's task: a closed connection is the reading task's
        # business (it reconnects and subscribes everything wanted).
        with contextlib.suppress(ConnectionClosed):
            await self._flush()

    # ------------------------------------------------------------------ receiving

    def _dispatch(self, data: bytes | str) -> None:
        try:
            msg = parse_server_message(data)
        except MalformedMessage as exc:
            self.stats.malformed += 1
            self.last_errors.append(exc)
            log.warning("ignoring an undecodable server message: %s", exc)
            return
        kind = msg.WhichOneof("kind")
        if kind == "delta":
            self._on_delta(msg.delta)
        elif kind == "heartbeat":
            self._on_heartbeat(msg.heartbeat)
        elif kind == "snapshot":
            self._on_snapshot(msg.snapshot)
        elif kind == "subscribed":
            self._on_subscribed(msg.subscribed)
        elif kind == "unsubscribed":
            self._on_unsubscribed(msg.unsubscribed)
        elif kind == "error":
            self._on_error(msg.error)
        elif kind == "pong":
            self._on_pong(msg.pong)
        # Unknown kinds (newer servers) are ignored, as the contract asks.

    def _live(self, symbol: str) -> _Sub | None:
        sub = self._subs.get(symbol)
        # Data for a symbol we are leaving or resynchronising was in flight
        # before our request reached the server: ignore it.
        return sub if sub is not None and sub.state is SubState.LIVE else None

    def _on_delta(self, pd: stream_pb2.Delta) -> None:
        sub = self._live(pd.symbol)
        if sub is None:
            return
        follower = self.books[sub.symbol]
        try:
            follower.apply_delta(
                pd.epoch, pd.seq, pd.prev_seq, levels_from_pb(pd.bids), levels_from_pb(pd.asks), pd.checksum
            )
        except StreamError as exc:
            self._resync(sub, exc)
            return
        self.stats.deltas += 1
        self._delivered = True
        if self.record:
            self.seen_seqs.setdefault(sub.symbol, []).append((pd.epoch, pd.seq))
        self._updated(sub.symbol, follower, "delta")

    def _on_heartbeat(self, hb: stream_pb2.Heartbeat) -> None:
        sub = self._live(hb.symbol)
        if sub is None:
            return
        self.stats.heartbeats += 1
        follower = self.books[sub.symbol]
        if sub.depth and hb.epoch == follower.epoch and hb.seq >= (follower.seq or 0):
            # A depth-limited stream skips changes outside its top levels, so
            # the symbol's seq may be ahead of the last delta sent to us.
            return
        try:
            follower.check_heartbeat(hb.epoch, hb.seq)
        except StreamError as exc:
            self._resync(sub, exc)

    def _on_snapshot(self, ps: stream_pb2.Snapshot) -> None:
        sub = self._subs.get(ps.symbol)
        # Accepted after START_SNAPSHOT and at any later time (the server
        # resynchronising a client that fell behind).
        if sub is None or sub.state not in (SubState.SNAPSHOT_WAIT, SubState.LIVE):
            return
        follower = self.books[sub.symbol]
        instrument = instrument_from_pb(ps.instrument) if ps.HasField("instrument") else None
        try:
            follower.apply_snapshot(
                ps.epoch,
                ps.seq,
                levels_from_pb(ps.bids),
                levels_from_pb(ps.asks),
                ps.checksum,
                instrument,
                ps.depth,
            )
        except StreamError as exc:
            self._resync(sub, exc)
            return
        sub.state = SubState.LIVE
        self._sub_retry.pop(sub.symbol, None)
        self.stats.snapshots += 1
        self._delivered = True
        if self.record:
            self.snapshot_seqs.setdefault(sub.symbol, []).append((ps.epoch, ps.seq))
            self.snapshot_counts[sub.symbol] = self.snapshot_counts.get(sub.symbol, 0) + 1
        self._updated(sub.symbol, follower, "snapshot")

    def _on_subscribed(self, m: stream_pb2.Subscribed) -> None:
        sub = self._subs.get(m.symbol)
        if sub is None or sub.state is not SubState.SUBSCRIBING or m.request_id != sub.request_id:
            return
        follower = self.books[sub.symbol]
        sub.depth = m.depth
        instrument = instrument_from_pb(m.instrument) if m.HasField("instrument") else None
        if m.start == _START_RESUMED:
            r = sub.resume
            problem = None
            if r is None or not follower.synced or (follower.epoch, follower.seq) != (r.epoch, r.seq):
                problem = "resumed without a matching resume point"
            elif (m.epoch, m.seq) != (r.epoch, r.seq):
                problem = f"resumed at ({m.epoch}, {m.seq}), asked ({r.epoch}, {r.seq})"
            elif (
                instrument is not None
                and follower.instrument is not None
                and not (follower.instrument.same_terms(instrument))
            ):
                problem = "instrument scales changed"
            if problem is not None:
                self._resync(sub, ResumeMismatch(f"{sub.symbol}: {problem}"))
                return
            if instrument is not None:
                follower.instrument = instrument
            sub.state = SubState.LIVE
            self._sub_retry.pop(sub.symbol, None)
            self.stats.resumes += 1
            self._delivered = True
            self._updated(sub.symbol, follower, "resumed")
            return
        # A snapshot follows and replaces the book; until then it is not
        # current, and it must not be offered for resuming either (the server
        # just refused it, possibly as AHEAD: "cannot be trusted").
        if sub.resume is not None:
            reason = _REASON_ENUM.values_by_number.get(m.reason)
            why = reason.name if reason is not None else m.reason
            log.info("%s: resume refused (%s), taking a snapshot", sub.symbol, why)
        follower.desync()
        if instrument is not None:
            follower.instrument = instrument
        sub.state = SubState.SNAPSHOT_WAIT

    def _on_unsubscribed(self, m: stream_pb2.Unsubscribed) -> None:
        sub = self._subs.get(m.symbol)
        if sub is None or sub.state is not SubState.UNSUBSCRIBING or m.request_id != sub.request_id:
            return
        self._left(sub)

    def _left(self, sub: _Sub) -> None:
        """The server no longer holds `sub`: subscribe afresh if the symbol is
        still wanted (a resync or a depth change), else forget it."""
        del self._subs[sub.symbol]
        depth = self._wanted.get(sub.symbol)
        if depth is not None:
            self._queue_subscribe(sub.symbol, depth)

    def _on_error(self, e: stream_pb2.Error) -> None:
        err = ServerError(e.code, e.message, e.symbol, e.request_id)
        self.stats.errors += 1
        self.stats.last_error = err
        self.last_errors.append(err)
        sub = self._sub_for_request(e.symbol, e.request_id)
        if sub is None:
            log.warning("server error: %s", err)
            return
        if sub.state is SubState.UNSUBSCRIBING:
            # NOT_SUBSCRIBED or a failure: either way the server does not
            # hold it for us any more; move on.
            self._left(sub)
            return
        if sub.state is not SubState.SUBSCRIBING:
            return
        symbol = sub.symbol
        if e.code == ErrorCode.ERROR_CODE_ALREADY_SUBSCRIBED:
            # The server still holds an older subscription: leave it, then
            # subscribe again on the acknowledgement.
            self._queue_unsubscribe(sub)
        elif e.code in _PERMANENT_REFUSALS and not (
            e.code == ErrorCode.ERROR_CODE_UNKNOWN_SYMBOL
            and symbol in self.books
            and self.books[symbol].epoch is not None
        ):
            # A symbol we already held a book for is unknown only while a
            # restarted node waits for its feed: that one is retried below.
            log.error("subscription refused: %s", err)
            del self._subs[symbol]
            self._wanted.pop(symbol, None)
            self.failed[symbol] = SubscriptionRejected(e.code, e.message, symbol or e.symbol, e.request_id)
            self._notify()
        else:
            del self._subs[symbol]
            retry = self._sub_retry.setdefault(symbol, Backoff(SUBSCRIBE_RETRY_BASE, SUBSCRIBE_RETRY_CAP))
            delay = max(retry.next_delay(), SUBSCRIBE_RETRY_BASE / 2)
            log.warning("subscription failed (%s); retrying in %.2f s", err, delay)
            self._spawn_timer(self._retry_subscribe(symbol, delay))

    def _sub_for_request(self, symbol: str, request_id: int) -> _Sub | None:
        if not request_id:
            return None
        sub = self._subs.get(symbol) if symbol else None
        if sub is not None and sub.request_id == request_id:
            return sub
        for sub in self._subs.values():
            if sub.request_id == request_id:
                return sub
        return None

    def _on_pong(self, p: stream_pb2.Pong) -> None:
        entry = self._pings.get(p.request_id)
        if entry is not None and not entry[1].done():
            entry[1].set_result(time.perf_counter() - entry[0])

    def _resync(self, sub: _Sub, exc: StreamError) -> None:
        """Resynchronise one symbol in-band after its stream broke."""
        if isinstance(exc, SequenceGap):
            self.stats.gaps += 1
        elif isinstance(exc, ChecksumMismatch):
            self.stats.checksum_failures += 1
        elif isinstance(exc, DuplicateDelta):
            self.stats.duplicates += 1
        elif isinstance(exc, EpochMismatch):
            self.stats.epoch_changes += 1
        self.stats.resyncs += 1
        self.last_errors.append(exc)
        log.warning("resynchronising %s: %s", sub.symbol, exc)
        self.books[sub.symbol].desync()
        self._queue_unsubscribe(sub)

    def _updated(self, symbol: str, follower: BookFollower, kind: UpdateKind) -> None:
        if self.on_update is not None:
            self.on_update(symbol, follower, kind)
        self._notify()

    # ------------------------------------------------------------------ timers

    def _spawn_timer(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._timers.add(task)
        task.add_done_callback(self._timers.discard)

    async def _retry_subscribe(self, symbol: str, delay: float) -> None:
        await asyncio.sleep(delay)
        if self._ws is None or symbol not in self._wanted or symbol in self._subs:
            return
        self._queue_subscribe(symbol, self._wanted[symbol])
        await self._flush_quietly()


async def _shutdown(ws: ClientConnection) -> None:
    """Close `ws`, reading and dropping what still arrives so the peer's close
    frame is seen even if the receive buffer was full."""
    closer = asyncio.ensure_future(ws.close(1000, "client closing"))
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
