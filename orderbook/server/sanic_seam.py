"""Everything this server takes from Sanic beyond its documented API, in one
place: the connection protocol the node is served with (its first request
paced by the accept pacer), the WebSocket upgrade of /feed on Sanic's own
WebSocket, and the takeover of a subscriber's transport after its 101.

`check()` runs when the app is created and names what a Sanic release lacks,
so an incompatible release fails at start-up with a clear message instead of
at the first connection; tests/test_sanic_seam.py drives each piece.

Why the internals: Sanic's websocket routes negotiate subprotocols from a
fixed list and refuse clients that offer none, while the subscriber endpoint
needs protobuf as the default and a token that may travel as a subprotocol,
and its own frame handling (orderbook/server/subscriber_socket.py) at a few
hundred bytes per idle subscriber instead of Sanic's several kilobytes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import sanic
from sanic import Request
from sanic.exceptions import SanicException
from sanic.server.protocols.websocket_protocol import WebSocketProtocol
from sanic.server.websockets.impl import WebsocketImplProtocol

from . import admission
from .accept_pacing import AcceptPacer

log = logging.getLogger("orderbook.server")

SUPPORTED = "sanic>=25.3"

# (owner, attribute): what the code below touches.
_NEEDED: tuple[tuple[type, str], ...] = (
    (WebSocketProtocol, "websocket_handshake"),  # the /feed upgrade
    (WebSocketProtocol, "websocket"),  # released on takeover
    (WebSocketProtocol, "connections"),  # the server's set, left on takeover
    (WebSocketProtocol, "_callback_check_timeouts"),  # its timer, cancelled on takeover
    (WebSocketProtocol, "transport"),
    (WebSocketProtocol, "app"),
    (WebSocketProtocol, "loop"),
    (WebSocketProtocol, "data_received"),  # paced first request
    (WebSocketProtocol, "connection_lost"),
    (WebsocketImplProtocol, "process_events"),  # 1007 on invalid UTF-8
    (WebsocketImplProtocol, "fail_connection"),
    (WebsocketImplProtocol, "end_connection"),
)


def check() -> None:
    """Raise RuntimeError naming what the installed Sanic lacks."""
    missing = [f"{owner.__name__}.{name}" for owner, name in _NEEDED if not _has(owner, name)]
    if not hasattr(sanic.Sanic, "websocket_tasks"):
        missing.append("Sanic.websocket_tasks")
    if missing:
        raise RuntimeError(
            f"Sanic {sanic.__version__} lacks what orderbook's server uses: {', '.join(missing)}. "
            f"Install a supported release ({SUPPORTED}, as tested), or see orderbook/server/sanic_seam.py."
        )


def _has(owner: type, name: str) -> bool:
    # Slots count: several of these are instance attributes declared in __slots__.
    return hasattr(owner, name) or any(name in getattr(k, "__slots__", ()) for k in owner.__mro__)


# ------------------------------------------------------------------ the protocol


class PacedProtocol(WebSocketProtocol):
    """Sanic's HTTP/WebSocket protocol whose first request is handed to Sanic
    when the app's AcceptPacer admits it (orderbook/server/accept_pacing.py).
    Pacing the accept is not enough: a storm's connections are accepted over
    several turns, then their requests arrive together and would all be
    parsed in one."""

    __slots__ = ("_address", "_paced")  # Sanic's protocols have slots

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._paced: bytearray | None = None  # the first bytes, while parked
        self._address: str | None = None  # set once the first bytes arrived

    def _pacer(self) -> AcceptPacer | None:
        pacer = getattr(self.app.ctx, "accept_pacer", None)
        return pacer if isinstance(pacer, AcceptPacer) else None

    def data_received(self, data: bytes) -> None:
        if self._address is not None:
            if self._paced is None:
                super().data_received(data)
            else:
                self._paced += data  # arrived before pause_reading took effect
            return
        transport = self.transport
        peer = transport.get_extra_info("peername") if transport is not None else None
        self._address = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        pacer = self._pacer()
        if transport is None or pacer is None or pacer.arrive(self, self._address, self.loop):
            super().data_received(data)
            return
        self._paced = bytearray(data)
        transport.pause_reading()

    def start(self) -> None:
        """Called by the pacer in a later turn: hand the parked bytes to Sanic."""
        data = self._paced
        if data is None:
            return
        self._paced = None
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        super().data_received(bytes(data))
        transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._paced is not None:
            self._paced = None
            pacer = self._pacer()
            if pacer is not None and self._address is not None:
                pacer.forget(self, self._address)
        super().connection_lost(exc)


# ------------------------------------------------------------------ handlers that upgrade

H = TypeVar("H", bound=Callable[..., Any])


def upgrading(handler: H) -> H:
    """Mark a route handler that does the WebSocket upgrade itself: Sanic
    then writes no HTTP response when it returns None."""
    handler.is_websocket = True  # type: ignore[attr-defined]  # the mark Sanic's own websocket routes carry
    return handler


# ------------------------------------------------------------------ /feed: Sanic's WebSocket


async def feed_upgrade(request: Request, max_message_bytes: int) -> WebsocketImplProtocol:
    """Upgrade on Sanic's own WebSocket (no subprotocol), after our checks."""
    refusal = admission.handshake_refusal(request.headers)
    if refusal is not None:
        # Sanic answers it as plain HTTP (426 with Sec-WebSocket-Version: 13, or 400).
        raise SanicException(refusal.message, status_code=refusal.status, headers=dict(refusal.headers))
    protocol = request.transport.get_protocol()
    if not isinstance(protocol, WebSocketProtocol):
        raise SanicException("not a WebSocket-capable connection", status_code=500)
    ws = await protocol.websocket_handshake(request, None)
    # Set before any frame is parsed: the handshake returns without yielding
    # once the protocol is attached.
    ws.ws_proto.max_message_size = max_message_bytes
    _fail_on_invalid_utf8(ws)
    return ws


def _fail_on_invalid_utf8(ws: WebsocketImplProtocol) -> None:
    """Close with 1007 on a text frame that is not UTF-8 (RFC 6455 8.1).

    Sanic's frame assembler lets the UnicodeDecodeError escape from a
    background task, so the connection would otherwise just hang.
    """
    process_events = ws.process_events

    async def checked(events: Any) -> None:
        try:
            await process_events(events)
        except UnicodeDecodeError:
            ws.fail_connection(1007, "invalid UTF-8 in a text frame")

    ws.process_events = checked  # type: ignore[method-assign]


async def run_tracked(request: Request, ws: WebsocketImplProtocol, session: Callable[[], Awaitable[None]]) -> None:
    """Run a session as Sanic runs its own websocket handlers: tracked, so the
    server cancels it on shutdown, and closed with 1001 when cancelled. A bug
    in the session closes the connection with 1011; it must not reach Sanic,
    which would write an HTTP 500 onto the upgraded stream."""
    app = request.app
    fut = asyncio.ensure_future(session())
    app.websocket_tasks.add(fut)
    try:
        await fut
    except asyncio.CancelledError:
        ws.end_connection(1001, "server shutting down")
    except Exception:
        log.exception("WebSocket session failed")
        ws.fail_connection(1011, "internal error")
    finally:
        app.websocket_tasks.discard(fut)


# ------------------------------------------------------------------ /ws: the takeover


class _Released:
    """Stands in for the WebSocket on the Sanic protocol we left: its own
    end-of-request cleanup must not touch the connection."""

    def end_connection(self, code: int = 1001, reason: str = "") -> None:
        return None


_RELEASED = _Released()


def take_over(transport: asyncio.Transport, protocol: asyncio.Protocol) -> None:
    """From now on `protocol` receives the connection's bytes. Sanic's
    protocol, request and handler task are released (they would cost several
    kilobytes per idle subscriber), and Sanic no longer counts the connection
    as its own (its shutdown would close it without a close frame)."""
    sanic_protocol = transport.get_protocol()
    transport.set_protocol(protocol)  # asyncio's documented API
    if isinstance(sanic_protocol, WebSocketProtocol):
        sanic_protocol.websocket = _RELEASED  # type: ignore[assignment]
        sanic_protocol.connections.discard(sanic_protocol)
        # Its timeout timer re-arms itself for as long as it runs and so kept
        # the whole protocol (events, ConnInfo, timer) alive per subscriber;
        # Sanic's HTTP timeouts no longer apply to a connection that is ours.
        timer = getattr(sanic_protocol, "_callback_check_timeouts", None)
        if timer is not None:
            timer.cancel()
            sanic_protocol._callback_check_timeouts = None
