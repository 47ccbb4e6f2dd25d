"""The subscriber endpoint /ws: admission before the upgrade, then a loop
that decodes client requests and hands them to the hub."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import cast

from sanic import Request, response
from websockets import http11
from websockets.datastructures import Headers as WSHeaders
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol

from orderbook.core.errors import InvalidInput
from orderbook.core.ratelimit import TokenBucket
from orderbook.wire import codec
from orderbook.wire.codec import Encoding, ErrorCode, PingRequest, SubscribeRequest, UnsubscribeRequest

from . import admission, handshake_limits
from .connection import Connection, Socket
from .counts import ERROR, OTHER
from .drain import REFUSAL as DRAINING
from .hub import Hub, SubscribeRejected
from .outgoing import Outgoing
from .sanic_seam import take_over, upgrading
from .settings import Settings
from .state import ServerState
from .subscriber_socket import NoContextTakeoverDeflate, SubscriberSocket

log = logging.getLogger("orderbook.ws")

CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_POLICY = 1008
CLOSE_TRY_AGAIN_LATER = 1013


@upgrading
@handshake_limits.refusals_logged("/ws")
async def subscriber_endpoint(request: Request) -> response.HTTPResponse | None:
    state: ServerState = request.app.ctx.state
    settings: Settings = state.settings
    hub: Hub = state.hub
    counts = hub.counts  # each way out of here is counted by outcome (/metrics)
    headers = request.headers
    if not admission.is_upgrade(headers):
        counts.handshake("/ws", "bad_request")
        return response.text(
            admission.NOT_WEBSOCKET, status=426, headers={"Upgrade": "websocket", "Connection": "Upgrade"}
        )
    if state.draining:
        counts.handshake("/ws", "draining")
        return response.text(DRAINING.message, status=DRAINING.status, headers=dict(DRAINING.headers))
    gate = state.gate
    ip = gate.source(request)
    refusal = gate.admit(ip, "/ws") or admission.handshake_refusal(headers)
    if refusal is not None:
        counts.handshake("/ws", "rate_limited" if refusal.status == 429 else "bad_request")
        return response.text(refusal.message, status=refusal.status, headers=dict(refusal.headers))
    offered = admission.offered_subprotocols(headers.getall("sec-websocket-protocol", []))
    if not admission.origin_allowed(headers.get("origin"), headers.get("host", ""), settings.allowed_origins):
        counts.handshake("/ws", "origin")
        return response.text(f"origin {headers.get('origin')!r} is not allowed\n", status=403)
    if not admission.token_matches(settings.subscriber_token, offered, request.args.get("token")):
        counts.handshake("/ws", "token")
        return response.text("missing or wrong token: pass ?token=... or the subprotocol bearer.<token>\n", status=401)
    if len(hub.connections) >= settings.max_connections:
        counts.handshake("/ws", "full")
        return response.text(
            f"server full ({settings.max_connections} connections); retry later\n",
            status=503,
            headers={"Retry-After": "5"},
        )
    adm = admission.choose_encoding(offered)
    accepted = _accept(request, adm.subprotocol, settings.compression)
    if isinstance(accepted, response.HTTPResponse):
        counts.handshake("/ws", "bad_request")
        return accepted
    counts.handshake("/ws", "accepted")
    switching, deflate = accepted
    hub = state.hub
    # Sanic types it as its own protocol; it is the event loop's transport.
    transport = cast(asyncio.Transport, request.transport)
    conn = hub.new_connection(transport, adm.encoding, peer=ip, deflate=deflate)
    loop = asyncio.get_running_loop()

    def on_message(data: bytes | str) -> None:
        _receive(data, conn, hub, settings)

    def lost() -> None:
        gate.closed(ip, conn)
        hub.drop_connection(conn)

    sock = SubscriberSocket(
        transport,
        loop,
        settings.max_message_bytes,
        on_message,
        lambda: _stop_sending(conn),
        on_lost=lost,
        gate=conn.accepts_input,
        send_frame=conn.send_frame,
        rate=settings.client_rate,
        burst=settings.client_burst,
        max_fragments=settings.max_fragments,
        deflate=deflate,
    )
    if settings.churn_rate > 0:
        conn.churn = TokenBucket(settings.churn_rate, max(settings.churn_burst, 1.0), time.monotonic())
    conn.ws = sock
    gate.opened(ip, conn)
    # The 101 and the switch of the connection's reader happen with no await
    # in between, so no frame can reach Sanic's HTTP parser. From here the
    # connection is ours.
    transport.write(switching)
    take_over(transport, sock)
    return None


def _accept(request: Request, subprotocol: str | None, compression: bool) -> tuple[bytes, bool] | response.HTTPResponse:
    """The 101 response's bytes and whether permessage-deflate was agreed
    (only with `compression`, on the terms of NoContextTakeoverDeflate, which
    the response's Sec-WebSocket-Extensions states), or the HTTP error for a
    malformed handshake."""
    proto = ServerProtocol(
        subprotocols=[Subprotocol(subprotocol)] if subprotocol else None,
        extensions=[NoContextTakeoverDeflate()] if compression else None,
    )
    resp = proto.accept(http11.Request(path=request.path, headers=WSHeaders(request.headers)))
    if resp.status_code != 101:
        return response.text(resp.body.decode(errors="replace") or resp.reason_phrase, status=resp.status_code)
    head = f"HTTP/1.1 101 {resp.reason_phrase}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in resp.headers.raw_items())
    return (head + "\r\n").encode(), bool(proto.extensions)


def _stop_sending(conn: Connection) -> None:
    conn.flush()
    conn.closed = True


def _receive(data: bytes | str, conn: Connection, hub: Hub, settings: Settings) -> None:
    ws = conn.ws
    if conn.closed or ws is None:
        return
    expected_type = str if conn.encoding is Encoding.JSON else bytes
    if not isinstance(data, expected_type):
        kind = "text" if isinstance(data, str) else "binary"
        ws.end_connection(CLOSE_UNSUPPORTED_DATA, f"{kind} frame not allowed with {conn.encoding.value}")
        return
    _handle(data, conn, hub)
    if conn.errors >= settings.max_client_errors:
        log.info(
            "closing %s: %d bad messages in a row",
            conn.peer,
            conn.errors,
            extra={"peer": conn.peer, "conn": handshake_limits.conn_id(conn)},
        )
        ws.end_connection(CLOSE_POLICY, f"{conn.errors} bad messages in a row")


def _handle(data: bytes | str, conn: Connection, hub: Hub) -> None:
    symbol, request_id = "", 0
    try:
        req = codec.decode_client(data, conn.encoding)
        if isinstance(req, SubscribeRequest):
            symbol, request_id = req.symbol, req.request_id
            _churn(conn)
            hub.subscribe(conn, req)
        elif isinstance(req, UnsubscribeRequest):
            symbol, request_id = req.symbol, req.request_id
            _churn(conn)
            hub.unsubscribe(conn, req.symbol, req.request_id)
        elif isinstance(req, PingRequest):
            hub.reply(conn, OTHER, Outgoing(codec.pong_message(req.request_id, time.time_ns())))
        conn.errors = 0
    except SubscribeRejected as exc:
        conn.errors += 1
        hub.reply(conn, ERROR, Outgoing(codec.error_message(exc.code, str(exc), symbol, request_id)))
    except InvalidInput as exc:
        conn.errors += 1
        hub.reply(conn, ERROR, Outgoing(codec.error_message(codec.error_code_for(exc), str(exc), symbol, request_id)))


def _churn(conn: Connection) -> None:
    """Subscribe and Unsubscribe take a token from the connection's churn
    bucket (--churn-rate, --churn-burst); with none left the request is refused."""
    bucket = conn.churn
    if bucket is not None and not bucket.take(time.monotonic()):
        raise SubscribeRejected(
            ErrorCode.ERROR_CODE_RATE_LIMITED,
            f"more than {bucket.rate:g} subscribe/unsubscribe requests a second (burst {bucket.burst:g}); "
            "retry after a pause",
        )


async def close(ws: Socket, conn: Connection, code: int, reason: str) -> None:
    """Send what is queued, then the close frame."""
    if isinstance(ws, SubscriberSocket):
        await ws.close(code, reason[:120])
        return
    conn.flush()
    conn.closed = True
    await ws.close(code, reason[:120])
