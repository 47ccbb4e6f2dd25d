"""Plain HTTP endpoints: liveness, readiness, the symbol list, one book."""

from __future__ import annotations

import hmac
import os
from urllib.parse import unquote

from sanic import Request, response

from orderbook.core.instrument import Instrument

from .handshake_limits import throttled


async def healthz(request: Request) -> response.HTTPResponse:
    """Up: the process serves HTTP. Says nothing about capacity."""
    state = request.app.ctx.state
    body: dict[str, str | int] = {"status": "up", "epoch": str(state.hub.epoch)}
    if state.settings.worker is not None:
        # `serve --workers N`: which worker process answered (its pid).
        body["worker"] = os.getpid()
    return response.json(body)


async def readyz(request: Request) -> response.HTTPResponse:
    """Ready to take subscribers: 200 "ready"; 503 "draining", "starting" or "full"."""
    state = request.app.ctx.state
    hub, s = state.hub, state.settings
    conns = len(hub.connections)
    body = {"connections": conns, "max_connections": s.max_connections, "symbols": len(hub.channels)}
    if state.draining:
        # Before the others: a node told to stop takes no one, whatever else holds.
        return response.json({"status": "draining", **body}, status=503)
    cluster = state.cluster
    if cluster is not None:
        body.update(cluster.status())
        if cluster.stale:
            return response.json({"status": "stale", **body}, status=503)
    local = state.local
    if state.settings.worker is not None:
        body["worker"] = os.getpid()
    if local is not None:
        body.update(local.status())
        if local.stale:
            return response.json({"status": "stale", **body}, status=503)
        if not local.ready:
            return response.json({"status": "starting", **body}, status=503)
    if not state.serving:
        return response.json({"status": "starting", **body}, status=503)
    if conns >= s.max_connections:
        return response.json({"status": "full", **body}, status=503, headers={"Retry-After": "5"})
    return response.json({"status": "ready", **body})


def _instrument_json(inst: Instrument) -> dict:
    return {
        "symbol": inst.symbol,
        "price_scale": inst.price_scale,
        "size_scale": inst.size_scale,
        "price_increment": inst.format_price(inst.price_increment),
        "size_increment": inst.format_size(inst.size_increment),
        "base": inst.base,
        "quote": inst.quote,
        "venue": inst.venue,
    }


def _unauthorized(request: Request) -> response.HTTPResponse | None:
    """None if the request may read /symbols and /book (no --http-token, or
    it carries it as `Authorization: Bearer <token>` or `?token=<token>`);
    else the 401. /healthz and /readyz never ask: probes and load balancers
    call them without credentials, and they tell nothing about the books."""
    expected = request.app.ctx.state.settings.http_token
    if expected is None:
        return None
    offered = []
    auth = request.headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        offered.append(auth[7:].strip())
    offered.extend(request.args.getlist("token", []))
    want = expected.encode()
    if any(hmac.compare_digest(t.encode(), want) for t in offered):
        return None
    throttled.warning(
        "http_token", "refused %s %s from %s: missing or wrong HTTP token", request.method, request.path, request.ip
    )
    return response.json(
        {"error": "missing or wrong token: send Authorization: Bearer <token> or ?token=<token>"},
        status=401,
        headers={"WWW-Authenticate": 'Bearer realm="orderbook"'},
    )


async def symbols(request: Request) -> response.HTTPResponse:
    refused = _unauthorized(request)
    if refused is not None:
        return refused
    hub = request.app.ctx.state.hub
    out = []
    for name in sorted(hub.channels):
        ch = hub.channels[name]
        sb = ch.seqbook
        out.append(
            {
                **_instrument_json(sb.instrument),
                "epoch": str(sb.epoch),
                "seq": sb.seq,
                "subscribers": ch.subscriber_count(),
            }
        )
    return response.json({"symbols": out})


async def book(request: Request, symbol: str) -> response.HTTPResponse:
    """The book with exact decimal strings; `depth` levels per side (0 = all),
    at most --http-max-depth (a whole book longer than that: the WebSocket)."""
    refused = _unauthorized(request)
    if refused is not None:
        return refused
    state = request.app.ctx.state
    hub = state.hub
    cap = state.settings.http_max_depth
    # The router hands over the raw path segment; symbols such as "EUR/USD"
    # arrive percent-encoded.
    symbol = unquote(symbol)
    ch = hub.channels.get(symbol)
    if ch is None:
        return response.json({"error": f"unknown symbol {symbol!r}"}, status=404)
    raw = request.args.get("depth", "20")
    try:
        depth = int(raw)
        if depth < 0:
            raise ValueError
    except ValueError:
        return response.json({"error": f"depth must be an integer >= 0 (0 = all), got {raw!r}"}, status=400)
    sb = ch.seqbook
    if cap and depth > cap:
        throttled.warning(
            "http_max_depth", "refused GET /book depth=%d from %s (--http-max-depth %d)", depth, request.ip, cap
        )
        return response.json(
            {"error": f"depth {depth} is over this node's limit of {cap} levels (http_max_depth)"}, status=400
        )
    if cap and depth == 0 and max(sb.book.bid_count(), sb.book.ask_count()) > cap:
        throttled.warning(
            "http_max_depth",
            "refused GET /book depth=0 of %s from %s: a side is over --http-max-depth %d",
            symbol,
            request.ip,
            cap,
        )
        return response.json(
            {
                "error": f"{symbol} has more than {cap} levels on a side, this node's limit for GET /book "
                f"(http_max_depth): ask for depth <= {cap}, or subscribe on the WebSocket /ws for the whole book"
            },
            status=400,
        )
    inst = sb.instrument
    fp, fs = inst.format_price, inst.format_size
    return response.json(
        {
            "symbol": symbol,
            "epoch": str(sb.epoch),
            "seq": sb.seq,
            "checksum": sb.book.checksum(),
            "instrument": _instrument_json(inst),
            "bids": [[fp(p), fs(s)] for p, s in sb.book.bids(depth)],
            "asks": [[fp(p), fs(s)] for p, s in sb.book.asks(depth)],
        }
    )
