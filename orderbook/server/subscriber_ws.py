"""The subscriber endpoint /ws: admission before the upgrade, then a loop
that decodes client requests and hands them to the hub."""

from __future__ import annotations

import logging
import time

from sanic import Request, response
from sanic.exceptions import WebsocketClosed
from websockets.exceptions import ConnectionClosed

from orderbook.core.errors import InvalidInput
from orderbook.wire import codec
from orderbook.wire.codec import Encoding, PingRequest, SubscribeRequest, UnsubscribeRequest

from . import admission
from .connection import Connection
from .hub import Hub, SubscribeRejected
from .outgoing import Outgoing
from .settings import Settings
from .upgrade import run_tracked, upgrade

log = logging.getLogger("orderbook.ws")

CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_POLICY = 1008
CLOSE_TRY_AGAIN_LATER = 1013


async def subscriber_endpoint(request: Request):
    state = request.app.ctx.state
    settings: Settings = state.settings
    hub: Hub = state.hub
    headers = request.headers
    if not admission.is_upgrade(headers):
        return response.text(
            admission.NOT_WEBSOCKET, status=426, headers={"Upgrade": "websocket", "Connection": "Upgrade"}
        )
    offered = admission.offered_subprotocols(headers.getall("sec-websocket-protocol", []))
    if not admission.origin_allowed(headers.get("origin"), headers.get("host", ""), settings.allowed_origins):
        return response.text(f"origin {headers.get('origin')!r} is not allowed\n", status=403)
    if not admission.token_matches(settings.subscriber_token, offered, request.args.get("token")):
        return response.text(
            "missing or wrong token: pass ?token=... or the subprotocol bearer.<token>\n", status=401
        )
    if len(hub.connections) >= settings.max_connections:
        return response.text(
            f"server full ({settings.max_connections} connections); retry later\n",
            status=503,
            headers={"Retry-After": "5"},
        )
    adm = admission.choose_encoding(offered)
    ws = await upgrade(request, adm.subprotocol, settings.max_message_bytes)
    hub = state.hub  # a cluster may have switched hubs (new epoch) during the upgrade
    conn = hub.new_connection(ws.io_proto.transport, adm.encoding, peer=request.client_ip or "")
    conn.ws = ws
    try:
        await run_tracked(request, ws, lambda: _session(ws, conn, hub, settings))
    finally:
        hub.drop_connection(conn)


subscriber_endpoint.is_websocket = True  # type: ignore[attr-defined]  # Sanic: no HTTP response after


async def _session(ws, conn: Connection, hub: Hub, settings: Settings) -> None:
    expected_type = str if conn.encoding is Encoding.JSON else bytes
    try:
        while True:
            data = await ws.recv()
            if data is None:
                continue
            if not isinstance(data, expected_type):
                kind = "text" if isinstance(data, str) else "binary"
                await close(ws, conn, CLOSE_UNSUPPORTED_DATA, f"{kind} frame not allowed with {conn.encoding.value}")
                return
            _handle(data, conn, hub)
            if conn.errors >= settings.max_client_errors:
                await close(ws, conn, CLOSE_POLICY, f"{conn.errors} bad messages in a row")
                return
    except (ConnectionClosed, WebsocketClosed):
        return


def _handle(data: bytes | str, conn: Connection, hub: Hub) -> None:
    symbol, request_id = "", 0
    try:
        req = codec.decode_client(data, conn.encoding)
        if isinstance(req, SubscribeRequest):
            symbol, request_id = req.symbol, req.request_id
            hub.subscribe(conn, req)
        elif isinstance(req, UnsubscribeRequest):
            symbol, request_id = req.symbol, req.request_id
            hub.unsubscribe(conn, req.symbol, req.request_id)
        elif isinstance(req, PingRequest):
            conn.send(Outgoing(codec.pong_message(req.request_id, time.time_ns())))
        conn.errors = 0
    except SubscribeRejected as exc:
        conn.errors += 1
        conn.send(Outgoing(codec.error_message(exc.code, str(exc), symbol, request_id)))
    except InvalidInput as exc:
        conn.errors += 1
        conn.send(Outgoing(codec.error_message(codec.error_code_for(exc), str(exc), symbol, request_id)))


async def close(ws, conn: Connection, code: int, reason: str) -> None:
    """Send what is queued, then the close frame."""
    conn.flush()
    conn.closed = True
    await ws.close(code, reason[:120])
