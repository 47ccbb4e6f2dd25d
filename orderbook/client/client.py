"""An asyncio subscriber for the /ws book stream: a shell around the
subscriber session (orderbook/session/), which holds every protocol rule.

`OrderbookClient` runs the connection loop (connection.py), feeds each
message to its `SubscriberSession`, sends what the session asks for, wakes
the tasks waiting on books (waiting.py) and calls `on_update`. What the
session does about a broken stream, a resume or a refusal:

* a broken stream for one symbol (gap, checksum mismatch, duplicate, epoch
  change) is resynchronised in-band: Unsubscribe, then Subscribe without a
  resume point; the connection and the other symbols are left alone;
* a dropped connection is re-established after a jittered backoff, and every
  symbol resumes from the last (epoch, seq) it verified, so the server sends
  only the missed deltas (or a snapshot when it cannot);
* a 4xx rejection of the upgrade (bad token, forbidden Origin) ends `run()`
  with `HandshakeRejected` instead of retrying forever; 429/503 are retried,
  no sooner than the server's Retry-After.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine, Iterable
from ssl import SSLContext
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from orderbook.core.follower import BookFollower
from orderbook.session.outputs import (
    BookUpdated,
    ErrorOutcome,
    ErrorReceived,
    MalformedReceived,
    Output,
    PongReceived,
    Rejected,
    Resync,
    RetrySubscribe,
    Send,
    Started,
    UpdateKind,
)
from orderbook.session.session import SubscriberSession
from orderbook.session.states import Phase, ResyncReason
from orderbook.wire.codec import ClientMessage, Encoding

from .backoff import Backoff
from .connection import (
    CLOSE_TIMEOUT,
    ConnectionHooks,
    ConnectionLoop,
    Dialer,
    parse_retry_after,
    send_all,
)
from .errors import ClientClosed, ClientError, HandshakeRejected, ResumeMismatch, ServerError, SubscriptionRejected
from .stats import ClientStats
from .urls import redact
from .waiting import Waiters, reached, synced

__all__ = [
    "CLOSE_TIMEOUT",
    "LAST_ERRORS",
    "ClientClosed",
    "ClientError",
    "ClientStats",
    "HandshakeRejected",
    "OnUpdate",
    "OrderbookClient",
    "ResumeMismatch",
    "ServerError",
    "SubState",
    "SubscriptionRejected",
    "parse_retry_after",
]

log = logging.getLogger("orderbook.client")

OnUpdate = Callable[[str, BookFollower, UpdateKind], None]
# Where one symbol's subscription stands on the current connection.
SubState = Phase

# How many recent problems `OrderbookClient.last_errors` keeps.
LAST_ERRORS = 32


def _encoding(value: str | Encoding) -> Encoding:
    if isinstance(value, Encoding):
        return value
    v = value.lower()
    if v in ("proto", "protobuf", "binary", Encoding.PROTOBUF.value):
        return Encoding.PROTOBUF
    if v in ("json", Encoding.JSON.value):
        return Encoding.JSON
    raise ValueError(f"unknown encoding {value!r} (use 'proto' or 'json')")


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

    A ``wss://`` URL is verified against the system's CAs (or
    ``$SSL_CERT_FILE``), or against ``ssl``, an `ssl.SSLContext` such as
    ``ssl.create_default_context(cafile=...)``. A certificate that fails
    verification ends `run()` with `ssl.SSLCertVerificationError`.

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
        ssl: SSLContext | None = None,
    ) -> None:
        if ssl is not None and not url.lower().startswith("wss://"):
            raise ValueError(f"an ssl context needs a wss:// URL, not {redact(url)}")
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

        self.stats = ClientStats()
        self._session = SubscriberSession(symbols, depth=depth, interval_ms=interval_ms, stats=self.stats)
        self.last_errors: deque[BaseException] = deque(maxlen=LAST_ERRORS)
        self.seen_seqs: dict[str, list[tuple[int, int]]] = {}
        self.snapshot_seqs: dict[str, list[tuple[int, int]]] = {}
        self.snapshot_counts: dict[str, int] = {}
        self.last_close_code: int | None = None
        self.last_close_reason: str = ""

        dialer = Dialer(
            url,
            self.encoding.value,
            token=token,
            origin=origin,
            open_timeout=open_timeout,
            ping_interval=ping_interval,
            max_size=max_size,
            ssl=ssl,
        )
        self._loop = ConnectionLoop(dialer, self.backoff, log, "client closing")
        self._hooks = ConnectionHooks(self._opened, self._received, self._closed, self._failed)
        self._outbox: list[ClientMessage] = []  # sends decided while handling one message
        self._timers: set[asyncio.Task[None]] = set()
        self._pings: dict[int, tuple[float, asyncio.Future[float]]] = {}
        self._waiters = Waiters()
        # Lifecycle.
        self._done = asyncio.Event()
        self._running = False
        self._run_task: asyncio.Task[object] | None = None  # the task inside run()
        self._end_exc: BaseException | None = None
        self._background: asyncio.Task[None] | None = None  # from __aenter__

    # ------------------------------------------------------------------ introspection

    @property
    def books(self) -> dict[str, BookFollower]:
        """Every subscribed symbol's follower."""
        return self._session.books

    @property
    def failed(self) -> dict[str, SubscriptionRejected]:
        """The symbols the server refused for good, with why."""
        return self._session.failed

    @property
    def symbols(self) -> tuple[str, ...]:
        """The symbols the client is subscribed to (or will be on connect)."""
        return self._session.symbols

    @property
    def connected(self) -> bool:
        return self._loop.ws is not None

    @property
    def closed(self) -> bool:
        return self._loop.stopping

    def state(self, symbol: str) -> SubState | None:
        """The subscription state of `symbol` on the current connection."""
        phase = self._session.phase(symbol)
        return None if phase is None or phase is Phase.IDLE or phase is Phase.FAILED else phase

    def is_live(self, symbol: str) -> bool:
        """True if `symbol`'s book is current on the open connection."""
        return self._session.is_live(symbol)

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
        self._end_exc = None
        self._done.clear()
        self._waiters.reopen()
        outcome: BaseException | None = None
        try:
            await self._loop.run(self._hooks)
        except BaseException as exc:
            outcome = exc
            raise
        finally:
            self._running = False
            self._run_task = None
            if isinstance(outcome, Exception):
                self._end_exc = outcome
                self._waiters.end(outcome)
            else:
                self._waiters.end(ClientClosed("the client is closed" if self.closed else "run() ended"))
            self._done.set()

    async def close(self) -> None:
        """Close the connection cleanly (code 1000) and make `run()` return.

        Safe to call from any task, including from `on_update`; outside the
        reading task it returns once `run()` has returned."""
        if not self.closed:
            self._loop.stop()
            if not self._running:
                self._waiters.end(ClientClosed("the client is closed"))
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
        self._apply(self._session.subscribe(symbol, self.depth if depth is None else depth))
        await self._flush_quietly()

    async def unsubscribe(self, symbol: str) -> None:
        """Stop receiving `symbol` and forget its book."""
        self._apply(self._session.unsubscribe(symbol))
        await self._flush_quietly()

    async def ping(self, timeout: float = 5.0) -> float:
        """Send an application Ping and return the round trip in seconds.
        Raises ConnectionError when not connected (or the connection drops)."""
        if self._loop.ws is None:
            raise ConnectionError("not connected")
        rid, msg = self._session.ping()
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._pings[rid] = (time.perf_counter(), fut)
        try:
            self._outbox.append(msg)
            await self._flush_quietly()
            return await asyncio.wait_for(fut, timeout)
        finally:
            self._pings.pop(rid, None)

    # ------------------------------------------------------------------ waits

    async def wait_synced(self, symbols: Iterable[str] | None = None, timeout: float | None = 10.0) -> None:
        """Wait until every given symbol (default: all subscribed) has a live,
        verified book. Raises TimeoutError, `SubscriptionRejected` for a
        symbol the server refused, or the error that ended `run()`."""
        session = self._session
        subscribed = session.symbols
        wanted = subscribed if symbols is None else tuple(symbols)
        for s in set(wanted).difference(subscribed):
            if s not in session.failed:
                raise ValueError(f"{s!r} is not subscribed")
        await self._waiters.wait(synced(session, wanted), timeout)

    async def wait_seq(
        self, symbol: str, seq: int, timeout: float | None = 10.0, *, epoch: int | None = None
    ) -> BookFollower:
        """Wait until `symbol`'s live book has reached `seq` (in `epoch`, if
        given) and return its follower."""
        await self._waiters.wait(reached(self._session, symbol, seq, epoch), timeout)
        return self._session.books[symbol]

    # ------------------------------------------------------------------ connection hooks

    async def _opened(self, ws: ClientConnection) -> None:
        self.stats.connects += 1
        if self.stats.connects > 1:
            self.stats.reconnects += 1
        self._outbox = []
        self._apply(self._session.open())
        await self._flush()

    async def _received(self, data: bytes | str) -> None:
        self._apply(self._session.receive_frame(data))
        if self._outbox:
            await self._flush()

    def _closed(self, ws: ClientConnection, ended: ConnectionClosed | None) -> bool:
        if ended is not None:
            self.last_errors.append(ended)
        self._outbox = []
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        for _, fut in self._pings.values():
            if not fut.done():
                fut.set_exception(ConnectionError("connection closed"))
        self._pings.clear()
        self._apply(self._session.close())
        self.last_close_code = ws.close_code
        self.last_close_reason = ws.close_reason or ""
        return self._session.delivered

    def _failed(self, exc: BaseException) -> None:
        self.stats.connect_failures += 1
        self.last_errors.append(exc)

    # ------------------------------------------------------------------ the session's outputs

    def _apply(self, outputs: list[Output]) -> None:
        """Act on what the session decided: queue its messages, report its
        books, schedule its retries."""
        for o in outputs:
            if isinstance(o, Send):
                self._outbox.append(o.message)
            elif isinstance(o, BookUpdated):
                self._updated(o)
            elif isinstance(o, Resync):
                if o.reason is not ResyncReason.ALREADY_SUBSCRIBED:  # that error is kept as it arrived
                    self.last_errors.append(o.error)
                log.warning("resynchronising %s: %s", o.symbol, o.error)
            elif isinstance(o, Started):
                if not o.resumed and o.offered is not None:
                    log.info("%s: resume refused (%s), taking a snapshot", o.symbol, o.reason)
            elif isinstance(o, ErrorReceived):
                self.last_errors.append(o.error)
                if o.outcome is ErrorOutcome.UNRELATED:
                    log.warning("server error: %s", o.error)
            elif isinstance(o, RetrySubscribe):
                log.warning(
                    "subscription of %s failed (%s); retrying in %.2f s", o.symbol, self.stats.last_error, o.delay
                )
                self._spawn_timer(self._retry_later(o.symbol, o.delay))
            elif isinstance(o, Rejected):
                log.error("subscription refused: %s", o.error)
                self._waiters.notify()
            elif isinstance(o, PongReceived):
                entry = self._pings.get(o.request_id)
                if entry is not None and not entry[1].done():
                    entry[1].set_result(time.perf_counter() - entry[0])
            elif isinstance(o, MalformedReceived):
                self.last_errors.append(o.error)
                log.warning("ignoring an undecodable server message: %s", o.error)

    def _updated(self, o: BookUpdated) -> None:
        if self.record:
            if o.kind == "delta":
                self.seen_seqs.setdefault(o.symbol, []).append((o.epoch, o.seq))
            elif o.kind == "snapshot":
                self.snapshot_seqs.setdefault(o.symbol, []).append((o.epoch, o.seq))
                self.snapshot_counts[o.symbol] = self.snapshot_counts.get(o.symbol, 0) + 1
        if self.on_update is not None:
            self.on_update(o.symbol, o.follower, o.kind)
        self._waiters.notify()

    async def _flush(self) -> None:
        ws = self._loop.ws
        outbox, self._outbox = self._outbox, []
        if ws is not None:
            await send_all(ws, outbox)

    async def _flush_quietly(self) -> None:
        # From a caller's task: a closed connection is the reading task's
        # business (it reconnects and subscribes everything wanted).
        with contextlib.suppress(ConnectionClosed):
            await self._flush()

    # ------------------------------------------------------------------ retries

    def _spawn_timer(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._timers.add(task)
        task.add_done_callback(self._timers.discard)

    async def _retry_later(self, symbol: str, delay: float) -> None:
        await asyncio.sleep(delay)
        self._apply(self._session.retry(symbol))
        await self._flush_quietly()
