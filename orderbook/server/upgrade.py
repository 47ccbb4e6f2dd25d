"""Performing the WebSocket upgrade ourselves, after our own checks.

Sanic's websocket routes negotiate subprotocols from a fixed list and refuse
clients that offer none; we need protobuf as the default and a token that may
travel as a subprotocol, so the handler answers refusals with plain HTTP and
then asks Sanic's protocol for the handshake with the subprotocol it chose.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from sanic import Request
from sanic.exceptions import SanicException

from . import admission


async def upgrade(request: Request, subprotocol: str | None, max_message_bytes: int):
    refusal = admission.handshake_refusal(request.headers)
    if refusal is not None:
        # Sanic answers it as plain HTTP (426 with Sec-WebSocket-Version: 13, or 400).
        raise SanicException(refusal.message, status_code=refusal.status, headers=dict(refusal.headers))
    protocol = request.transport.get_protocol()
    ws = await protocol.websocket_handshake(request, [subprotocol] if subprotocol else None)
    # Set before any frame is parsed: the handshake returns without yielding
    # once the protocol is attached.
    ws.ws_proto.max_message_size = max_message_bytes
    _fail_on_invalid_utf8(ws)
    return ws


def _fail_on_invalid_utf8(ws) -> None:
    """Close with 1007 on a text frame that is not UTF-8 (RFC 6455 8.1).

    Sanic's frame assembler lets the UnicodeDecodeError escape from a
    background task, so the connection would otherwise just hang.
    """
    process_events = ws.process_events

    async def checked(events) -> None:
        try:
            await process_events(events)
        except UnicodeDecodeError:
            ws.fail_connection(1007, "invalid UTF-8 in a text frame")

    ws.process_events = checked


async def run_tracked(request: Request, ws, session: Callable[[], Awaitable[None]]) -> None:
    """Run a session as Sanic runs its own websocket handlers: tracked, so the
    server cancels it on shutdown, and closed with 1001 when cancelled."""
    app = request.app
    fut = asyncio.ensure_future(session())
    app.websocket_tasks.add(fut)
    try:
        await fut
    except asyncio.CancelledError:
        ws.end_connection(1001, "server shutting down")
    finally:
        app.websocket_tasks.discard(fut)
