"""The connection loop shared by the subscribers (the client, the recorder):
connect, hand the open WebSocket to the caller's hooks until it ends, wait a
jittered delay, connect again, until stopped.

* The delays and the give-up rule are the session's `ReconnectPolicy`: a 4xx
  answer to the upgrade other than 429 ends `run()` with `HandshakeRejected`;
  429 and 503 wait at least their Retry-After; a connection that delivered
  book data starts the delays over. A certificate that fails verification
  (wss://) ends `run()` with the `ssl.SSLCertVerificationError`.
* `stop()` closes the open connection cleanly (1000) while the loop keeps
  reading, so the server's close frame is seen and the closing handshake
  completes; a connection left on an exception is closed and drained too.
* Messages are handled inline in the reading task: nothing is queued beyond
  the WebSocket library's own bounded receive buffer, so a slow consumer
  back-pressures the server (which then resynchronises it or closes it with
  1013) instead of growing memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from ssl import SSLCertVerificationError, SSLContext

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.typing import Origin, Subprotocol

from orderbook.session.backoff import Backoff
from orderbook.session.reconnect import ReconnectPolicy, retry_after_seconds
from orderbook.wire.codec import SUBPROTOCOL_JSON, ClientMessage, to_json

from .errors import HandshakeRejected
from .urls import bearer_subprotocol, redact, with_token

# Bound on waiting for the closing handshake; the reader keeps draining
# meanwhile, so a responsive server finishes far sooner.
CLOSE_TIMEOUT = 5.0
# The server is stopping or draining ("draining: reconnect"): reconnect, with
# the usual jitter (a connection that delivered data starts the delays over).
CLOSE_GOING_AWAY = 1001


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date),
    clamped to [0, MAX_RETRY_AFTER]; None when absent or unparsable. `now`
    defaults to the wall clock."""
    return retry_after_seconds(value, time.time() if now is None else now)


@dataclass(frozen=True, slots=True)
class Dialer:
    """How to open one subscriber connection. The token goes in the query,
    or with `token_as_subprotocol` as `bearer.<token>` when it is an HTTP
    token (kept out of URLs and logs)."""

    url: str
    subprotocol: str
    token: str | None = None
    token_as_subprotocol: bool = False
    origin: str | None = None
    open_timeout: float = 10.0
    ping_interval: float | None = 20.0
    max_size: int | None = 2**24
    # For a wss:// URL: the context that verifies the server (None: the
    # system's CAs, or $SSL_CERT_FILE). Only with wss://.
    ssl: SSLContext | None = None

    def target(self) -> tuple[str, list[Subprotocol]]:
        """The URL to connect to and the subprotocols to offer."""
        protocols = [Subprotocol(self.subprotocol)]
        bearer = bearer_subprotocol(self.token) if self.token and self.token_as_subprotocol else None
        if bearer is not None:
            protocols.append(Subprotocol(bearer))
            return self.url, protocols
        return with_token(self.url, self.token), protocols

    @property
    def display(self) -> str:
        """The URL for logs, its token hidden."""
        return redact(self.target()[0])

    async def open(self) -> ClientConnection:
        url, protocols = self.target()
        # True: websockets' default context for wss://. A context with a ws://
        # URL is refused by websockets (ValueError): no silent plain text.
        tls = self.ssl if self.ssl is not None else (True if url.lower().startswith("wss:") else None)
        return await connect(
            url,
            ssl=tls,
            origin=Origin(self.origin) if self.origin else None,
            subprotocols=protocols,
            open_timeout=self.open_timeout,
            ping_interval=self.ping_interval,
            close_timeout=CLOSE_TIMEOUT,
            max_size=self.max_size,
        )


@dataclass(frozen=True, slots=True)
class ConnectionHooks:
    """What a subscriber does with each connection: `opened` once it is open
    (subscribe), `received` for every message while it lasts, `closed` once
    it has ended (with the ConnectionClosed that ended it, if any), returning
    whether it delivered book data; `failed` for each attempt that did not
    open."""

    opened: Callable[[ClientConnection], Awaitable[None]]
    received: Callable[[bytes | str], Awaitable[None]]
    closed: Callable[[ClientConnection, ConnectionClosed | None], bool]
    failed: Callable[[BaseException], None]


class ConnectionLoop:
    """Connects with `dialer` until `stop()`; see the module docstring."""

    def __init__(self, dialer: Dialer, backoff: Backoff, log: logging.Logger, close_reason: str) -> None:
        self.dialer = dialer
        self.policy = ReconnectPolicy(backoff)
        self.log = log
        self.close_reason = close_reason
        self.ws: ClientConnection | None = None  # the open connection
        self.stopping = False
        self._stop = asyncio.Event()
        self._closer: asyncio.Future[None] | None = None

    async def run(self, hooks: ConnectionHooks) -> None:
        """Connect, serve and reconnect until `stop()`. Raises
        `HandshakeRejected`, and whatever a hook raises."""
        while not self.stopping:
            delay = await self._connect_once(hooks)
            if self.stopping:
                break
            self.log.debug("reconnecting in %.3f s", delay)
            await self._sleep(delay)

    def stop(self) -> None:
        """Stop: close the open connection cleanly; `run()` returns once its
        closing handshake is over (the reader drains until then)."""
        if self.stopping:
            return
        self.stopping = True
        self._stop.set()
        ws = self.ws
        if ws is not None and self._closer is None:
            self._closer = asyncio.ensure_future(ws.close(1000, self.close_reason))

    async def _sleep(self, delay: float) -> None:
        """Sleep `delay` seconds, or less if stopped meanwhile."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), delay)

    async def _connect_once(self, hooks: ConnectionHooks) -> float:
        """One connection attempt and, if it opens, its whole life. Returns
        the delay before the next attempt."""
        url = self.dialer.display
        opening = await open_unless_stopped(self.dialer.open, self._stop)
        if opening is None:
            return 0.0
        try:
            ws = opening.result()
        except InvalidStatus as exc:
            hooks.failed(exc)
            response = exc.response
            status = response.status_code
            retry_after = parse_retry_after(response.headers.get("Retry-After")) if status in (429, 503) else None
            wait = self.policy.after_status(status, retry_after)
            if wait is None:
                raise HandshakeRejected(status, response.reason_phrase, bytes(response.body or b"")) from exc
            # The server's own words (server full, too many handshakes...) reach the user.
            said = HandshakeRejected(status, response.reason_phrase, bytes(response.body or b"")).text
            self.log.warning(
                "%s answered HTTP %d%s; retrying in %.2f s", url, status, f" ({said})" if said else "", wait
            )
            return wait
        except SSLCertVerificationError as exc:
            # An untrusted certificate (another CA, another name): retrying
            # will not change it, as for a 4xx. run() ends with it.
            hooks.failed(exc)
            raise
        except (OSError, TimeoutError, InvalidHandshake, ConnectionClosed, EOFError) as exc:
            hooks.failed(exc)
            wait = self.policy.after_failure()
            self.log.warning("cannot connect to %s (%s); retrying in %.2f s", url, str(exc) or type(exc).__name__, wait)
            return wait
        if self.stopping:
            await ws.close(1000, self.close_reason)
            return 0.0
        self.log.info("connected to %s (%s)", url, ws.subprotocol or "default encoding")
        delivered = await self._serve(ws, hooks)
        wait = self.policy.after_connection(delivered)
        if not self.stopping:
            # 1001: the server is going away (a restart, a drain); routine, not a fault.
            level = logging.INFO if ws.close_code == CLOSE_GOING_AWAY else logging.WARNING
            self.log.log(
                level, "connection to %s closed (code %s %s); reconnecting in %.2f s",
                url, ws.close_code, ws.close_reason or "", wait,
            )  # fmt: skip
        return wait

    async def _serve(self, ws: ClientConnection, hooks: ConnectionHooks) -> bool:
        """Hand `ws` to the hooks until it ends; whether it delivered book data."""
        self.ws = ws
        self._closer = None
        ended: ConnectionClosed | None = None
        clean = False
        try:
            await hooks.opened(ws)
            async for data in ws:
                if self.stopping:
                    continue  # drain until the closing handshake completes
                await hooks.received(data)
            clean = True
        except ConnectionClosed as exc:
            ended = exc
            clean = True
        finally:
            self.ws = None
            if self._closer is not None:
                with contextlib.suppress(Exception):
                    await self._closer
            elif not clean:
                # Leaving on an exception (a hook raised, cancellation): still
                # close properly, draining so the close frame is read.
                await shutdown(ws, self.close_reason)
            delivered = hooks.closed(ws, ended)
        return delivered


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


async def send_all(ws: ClientConnection, messages: Iterable[ClientMessage]) -> None:
    """Send `messages` in order, in the encoding the server agreed to.
    Without an agreed subprotocol the server speaks its default, binary."""
    as_json = ws.subprotocol == SUBPROTOCOL_JSON
    for msg in messages:
        if as_json:
            await ws.send(to_json(msg))
        else:
            data: bytes = msg.SerializeToString()
            await ws.send(data)


async def shutdown(ws: ClientConnection, reason: str) -> None:
    """Close `ws`, reading and dropping what still arrives so the peer's close
    frame is seen even if the receive buffer was full."""
    closer = asyncio.ensure_future(ws.close(1000, reason))
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
