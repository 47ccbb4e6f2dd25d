"""What the server takes from Sanic beyond its documented API
(orderbook/server/sanic_seam.py), each piece driven for real, so a Sanic
release that breaks one fails here by name: the start-up check, the paced
protocol, the takeover of a subscriber's transport (Sanic lets go of it, its
stream outlives the handler, and shutdown closes it with 1001), and /feed on
Sanic's own WebSocket (1001 on shutdown, 1007 on invalid UTF-8)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal

import pytest
import sanic
import websockets
from sanic.server.protocols.websocket_protocol import WebSocketProtocol

from orderbook.server import sanic_seam
from orderbook.wire import codec

from .harness import FEED_TOKEN, Publisher, Subscriber, instrument, serve_in_process, start_server_process, update

pytestmark = pytest.mark.timeout(60)


def test_the_installed_sanic_has_everything_the_server_uses():
    sanic_seam.check()


def test_a_sanic_without_one_of_them_fails_at_start_up_naming_it(monkeypatch):
    monkeypatch.delattr(WebSocketProtocol, "websocket_handshake")
    with pytest.raises(RuntimeError) as info:
        sanic_seam.check()
    message = str(info.value)
    assert "WebSocketProtocol.websocket_handshake" in message
    assert sanic.__version__ in message and sanic_seam.SUPPORTED in message


async def test_sanic_lets_go_of_a_subscriber_it_upgraded_and_the_stream_outlives_the_handler():
    async with serve_in_process() as srv, Publisher.connect(srv.feed_url) as pub:
        await pub.send([instrument("A")], [update("A", bids=[(990, 5)], asks=[(1010, 5)])])
        async with Subscriber.connect(srv.url) as sub:
            await sub.send(codec.ping_message(7))
            await sub.until(lambda: sub.pongs)
            [conn] = srv.hub.connections
            sanic_protocols = list(srv.server.connections)
            assert all(isinstance(p, sanic_seam.PacedProtocol) for p in sanic_protocols)
            # Sanic no longer tracks it (its shutdown would drop it without a
            # close frame) and its protocol is no longer the transport's.
            assert not any(p.transport is conn.transport for p in sanic_protocols)
            assert not isinstance(conn.transport.get_protocol(), WebSocketProtocol)
            await sub.subscribe("A")
            await sub.until(lambda: sub.snapshots.get("A"))
            for i in range(5):
                await pub.send(updates=[update("A", bids=[(991 + i, 1)])])
            await sub.until(lambda: len(sub.seen.get("A", [])) >= 5)
        # The feed socket is Sanic's own WebSocket: Sanic still tracks it.
        assert any(isinstance(p, sanic_seam.PacedProtocol) for p in srv.server.connections)


async def test_nothing_keeps_sanics_protocol_of_an_upgraded_subscriber_alive():
    # Its events, ConnInfo and timeout timer cost ~2.5 KB per idle subscriber.
    async with serve_in_process() as srv, contextlib.AsyncExitStack() as stack:
        subs = [await stack.enter_async_context(Subscriber.connect(srv.url)) for _ in range(5)]
        for sub in subs:
            await sub.send(codec.ping_message(1))
            await sub.until(lambda sub=sub: sub.pongs)
        assert len(srv.hub.connections) == 5
        gc.collect()
        taken_over = [
            o
            for o in gc.get_objects()
            if isinstance(o, WebSocketProtocol) and o.transport is not None and o.transport.get_protocol() is not o
        ]
        assert taken_over == []


async def test_shutdown_closes_subscribers_and_publishers_with_1001(tmp_path):
    node = start_server_process(tmp_path, "--no-simulator", "--feed-token", FEED_TOKEN)
    try:
        async with Publisher.connect(node.feed_url) as pub, Subscriber.connect(node.url) as sub:
            await pub.send([instrument("A")], [update("A", bids=[(990, 5)])])
            await sub.subscribe("A")
            await sub.until(lambda: sub.snapshots.get("A"))
            node.proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(sub.ws.wait_closed(), 15)
            await asyncio.wait_for(pub.ws.wait_closed(), 15)
            # A stopping node drains: its subscribers are told to reconnect elsewhere.
            assert sub.ws.close_code == 1001 and "reconnect" in sub.ws.close_reason
            assert pub.ws.close_code == 1001
    finally:
        node.kill()


async def test_feed_on_sanic_websocket_fails_invalid_utf8_with_1007():
    async with (
        serve_in_process() as srv,
        websockets.connect(srv.feed_url, additional_headers={"Authorization": f"Bearer {FEED_TOKEN}"}) as ws,
    ):
        await ws.send(b"\xff\xfe", text=True)
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 10)
        assert ws.close_code == 1007


async def test_a_bug_in_a_feed_session_closes_1011_instead_of_writing_http_onto_the_stream(monkeypatch):
    from orderbook.server import feed_ws

    async def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(feed_ws, "_publisher", broken)  # the fault injected: a session that raises
    async with (
        serve_in_process() as srv,
        websockets.connect(srv.feed_url, additional_headers={"Authorization": f"Bearer {FEED_TOKEN}"}) as ws,
    ):
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 10)
        assert ws.close_code == 1011
