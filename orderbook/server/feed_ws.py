"""The publisher endpoint /feed: token-checked before the upgrade; each
binary message is a FeedMessage answered by one FeedReply."""

from __future__ import annotations

import asyncio
import contextlib

from redis.exceptions import RedisError
from sanic import Request, response
from sanic.exceptions import SanicException, WebsocketClosed
from sanic.server.websockets.impl import WebsocketImplProtocol
from websockets.exceptions import ConnectionClosed

from orderbook.core.errors import InvalidInput, LimitExceeded, UnknownSymbol
from orderbook.core.events import FeedBatch
from orderbook.core.market import FEED
from orderbook.wire import codec

from . import admission, handshake_limits
from .counts import Counts
from .drain import REFUSAL as DRAINING
from .hub import Hub
from .local_node import LocalNode
from .sanic_seam import feed_upgrade, run_tracked, upgrading
from .settings import Settings
from .state import ServerState
from .subscriber_ws import CLOSE_UNSUPPORTED_DATA

# Batches of one publisher a worker has forwarded and not yet answered.
MAX_PIPELINED_BATCHES = 64


def _bearer(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return request.args.get("token")


@upgrading
@handshake_limits.refusals_logged("/feed")
async def feed_endpoint(request: Request) -> response.HTTPResponse | None:
    state: ServerState = request.app.ctx.state
    settings: Settings = state.settings
    counts = state.hub.counts  # each way out of here is counted by outcome (/metrics)
    if not admission.is_upgrade(request.headers):
        counts.handshake("/feed", "bad_request")
        return response.text(admission.NOT_WEBSOCKET, status=426, headers={"Upgrade": "websocket"})
    if state.draining:
        # Publishers already connected stay until the drain ends; new ones go elsewhere.
        counts.handshake("/feed", "draining")
        return response.text(DRAINING.message, status=DRAINING.status, headers=dict(DRAINING.headers))
    gate = state.gate
    ip = gate.source(request)
    refusal = gate.admit(ip, "/feed")
    if refusal is not None:
        counts.handshake("/feed", "rate_limited")
        return response.text(refusal.message, status=refusal.status, headers=dict(refusal.headers))
    if settings.feed_token is None:
        counts.handshake("/feed", "disabled")
        return response.text("publishing is disabled: start the server with a feed token\n", status=403)
    offered = admission.offered_subprotocols(request.headers.getall("sec-websocket-protocol", []))
    if not admission.token_matches(settings.feed_token, offered, _bearer(request)):
        counts.handshake("/feed", "token")
        return response.text("missing or wrong feed token (Authorization: Bearer <token>)\n", status=401)
    try:
        ws = await feed_upgrade(request, settings.max_feed_message_bytes)
    except SanicException:
        counts.handshake("/feed", "bad_request")
        raise
    counts.handshake("/feed", "accepted")
    gate.opened(ip, ws)
    counts.publishers += 1
    try:
        local = state.local
        await run_tracked(request, ws, lambda: _publisher(ws, state, ip, local))
    finally:
        counts.publishers -= 1
        gate.closed(ip, ws)
    return None


def _feed_error_code(exc: InvalidInput) -> int:
    # feed.proto: an update for an unknown symbol is an invalid update.
    if isinstance(exc, UnknownSymbol):
        return codec.ErrorCode.ERROR_CODE_INVALID_UPDATE
    return codec.error_code_for(exc)


async def _publisher(
    ws: WebsocketImplProtocol, state: ServerState, peer: str = "", local: LocalNode | None = None
) -> None:
    counts = state.hub.counts  # the node's: a hub that replaces this one keeps them
    # A worker forwards each batch to the supervisor and streams the next one
    # without waiting for its reply: the replies (and refusals decided here)
    # go back in order from this bounded queue, so a publisher's rate is not
    # one local round trip per batch.
    replies: asyncio.Queue[asyncio.Future[bytes]] | None = None
    replier: asyncio.Task[None] | None = None
    if local is not None:
        replies = asyncio.Queue(MAX_PIPELINED_BATCHES)
        replier = asyncio.ensure_future(_send_replies(ws, replies, counts))
    try:
        while True:
            data = await ws.recv()
            if data is None:
                continue
            if isinstance(data, str):
                if replies is not None:
                    await replies.join()  # the replies to its earlier batches first
                await ws.close(CLOSE_UNSUPPORTED_DATA, "the feed protocol is binary protobuf")
                return
            batch_id = 0
            try:
                pb = codec.parse_feed(data)
                batch_id = pb.batch_id
                hub: Hub = state.hub
                hub.market.check_counts(pb)  # before the levels become objects
                batch = codec.feed_batch_from_pb(pb)
                if local is not None and replies is not None and state.cluster is None:
                    # A worker: the supervisor sequences; its exact reply goes back.
                    await replies.put(await local.follower.send(bytes(data)))
                    continue
                if state.cluster is None:
                    # Every /feed publisher is the one source FEED.
                    result = hub.ingest(batch, FEED, state.settings.allow_takeover)
                    reply = codec.feed_ack(batch_id, len(result.deltas), result.positions)
                    counts.feed_accepted += 1
                else:
                    # Checked here so the publisher hears of a bad batch at
                    # once; then queued for whichever node holds the lease.
                    # Ownership needs no check: cluster nodes run neither the
                    # simulator nor a replay, so /feed is the only source.
                    cluster = state.cluster
                    # Symbols this node queued definitions for may not have come
                    # back through the log yet: count them as defined. Once the
                    # log has defined a symbol, the log's definition rules.
                    queued = cluster.queued_instruments
                    for symbol in [s for s in queued if s in hub.market]:
                        del queued[symbol]
                    hub.market.validate(
                        FeedBatch(
                            batch.batch_id, (*cluster.queued_instruments.values(), *batch.instruments), batch.updates
                        )
                    )
                    try:
                        await cluster.log.submit(bytes(data))
                    except RedisError as exc:
                        counts.redis_errors_feed += 1
                        counts.feed_refusal(codec.ErrorCode.ERROR_CODE_INTERNAL)
                        reply = codec.feed_error(
                            codec.ErrorCode.ERROR_CODE_INTERNAL, f"not accepted, redis unavailable: {exc}", "", batch_id
                        )
                    else:
                        for inst in batch.instruments:
                            cluster.queued_instruments[inst.symbol] = inst
                        reply = codec.feed_ack(batch_id, 0, ())
                        counts.feed_accepted += 1
            except InvalidInput as exc:
                if isinstance(exc, LimitExceeded):
                    handshake_limits.throttled.warning(
                        "feed_" + exc.limit,
                        "refused feed batch %d from %s: %s",
                        batch_id,
                        peer,
                        exc,
                        extra={
                            "peer": peer,
                            "conn": handshake_limits.conn_id(ws),
                            "symbol": getattr(exc, "symbol", ""),
                            "batch": batch_id,
                        },
                    )
                code = _feed_error_code(exc)
                counts.feed_refusal(code)
                reply = codec.feed_error(code, str(exc), getattr(exc, "symbol", ""), batch_id)
            if replies is not None:
                done: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
                done.set_result(reply)
                await replies.put(done)
                continue
            # Awaiting here paces this publisher alone by its own socket.
            await ws.send(reply)
    except (ConnectionClosed, WebsocketClosed):
        return
    finally:
        if replier is not None:
            replier.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed, WebsocketClosed):
                await replier


async def _send_replies(
    ws: WebsocketImplProtocol, replies: asyncio.Queue[asyncio.Future[bytes]], counts: Counts
) -> None:
    """A worker's replies to one publisher, in the order of its batches. It
    takes every reply even once the socket is gone, so the reading side
    never waits on a full queue."""
    closed = False
    while True:
        fut = await replies.get()
        reply = await fut
        answer = codec.parse_feed_reply(reply)
        if answer.HasField("error"):
            counts.feed_refusal(answer.error.code)
        else:
            counts.feed_accepted += 1
        if not closed:
            try:
                await ws.send(reply)
            except (ConnectionClosed, WebsocketClosed):
                closed = True
        replies.task_done()
