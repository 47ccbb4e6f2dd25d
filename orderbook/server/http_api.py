"""Plain HTTP endpoints: liveness, readiness, the symbol list, one book."""

from __future__ import annotations

from urllib.parse import unquote

from sanic import Request, response

from orderbook.core.instrument import Instrument


async def healthz(request: Request):
    """Up: the process serves HTTP. Says nothing about capacity."""
    state = request.app.ctx.state
    return response.json({"status": "up", "epoch": str(state.hub.epoch)})


async def readyz(request: Request):
    """Ready to take subscribers: 200 "ready"; 503 "starting" or "full"."""
    state = request.app.ctx.state
    hub, s = state.hub, state.settings
    conns = len(hub.connections)
    body = {"connections": conns, "max_connections": s.max_connections, "symbols": len(hub.channels)}
    cluster = state.cluster
    if cluster is not None:
        body.update(cluster.status())
        if cluster.stale:
            return response.json({"status": "stale", **body}, status=503)
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


async def symbols(request: Request):
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


async def book(request: Request, symbol: str):
    """The book with exact decimal strings; `depth` levels per side (0 = all)."""
    hub = request.app.ctx.state.hub
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
