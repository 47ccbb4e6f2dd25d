"""Liveness: per-symbol heartbeats, application ping, dead-peer detection."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import struct
import time

import pytest
import websockets

from orderbook.wire import codec
from orderbook.wire.codec import SUBPROTOCOL_JSON

from .harness import Publisher, eventually, instrument, serve_in_process, test_settings, update

pytestmark = pytest.mark.timeout(30)

WAIT = 5.0
SYM = "TEST"


def connect(url: str, **kw):
    return websockets.connect(url, proxy=None, **kw)


async def recv(ws):
    return codec.parse_server_message(await asyncio.wait_for(ws.recv(), WAIT))


class Follower:
    """A subscriber that checks every message against what it holds: deltas
    chain by prev_seq, and each Heartbeat names the epoch and seq it holds."""

    def __init__(self, ws) -> None:
        self.ws = ws
        self.epoch = self.seq = None
        self.deltas: list[int] = []
        self.heartbeats = 0

    async def subscribe(self, symbol: str, depth: int = 0) -> None:
        await self.ws.send(codec.subscribe_message(symbol, depth).SerializeToString())
        assert (await recv(self.ws)).WhichOneof("kind") == "subscribed"
        snap = (await recv(self.ws)).snapshot
        self.epoch, self.seq = snap.epoch, snap.seq

    async def next(self) -> str:
        msg = await recv(self.ws)
        kind = msg.WhichOneof("kind")
        if kind == "delta":
            d = msg.delta
            assert (d.epoch, d.prev_seq) == (self.epoch, self.seq), d
            self.seq = d.seq
            self.deltas.append(d.seq)
        elif kind == "heartbeat":
            hb = msg.heartbeat
            assert (hb.symbol, hb.epoch, hb.seq) == (SYM, self.epoch, self.seq), hb
            assert abs(hb.time_ns - time.time_ns()) < 60 * 10**9
            self.heartbeats += 1
        else:
            raise AssertionError(msg)
        return kind

    async def until_heartbeat_at(self, seq: int) -> None:
        """Read until a Heartbeat arrives while holding `seq` (earlier ones, sent
        when the symbol went quiet in between, were checked on the way)."""
        async with asyncio.timeout(WAIT):
            while not (await self.next() == "heartbeat" and self.seq == seq):
                pass


async def test_heartbeat_on_a_quiet_symbol_full_and_depth_limited():
    async with (
        serve_in_process(test_settings(symbol_heartbeat=0.2)) as srv,
        Publisher.connect(srv.feed_url) as pub,
        connect(srv.url) as full_ws,
        connect(srv.url) as top_ws,
    ):
        await pub.send([instrument(SYM)], [update(SYM, bids=[(100, 1), (99, 1)])])
        full, top = Follower(full_ws), Follower(top_ws)
        await full.subscribe(SYM)
        await top.subscribe(SYM, depth=1)
        assert full.seq == top.seq == 1
        await pub.send(updates=[update(SYM, bids=[(99, 2)])])  # seq 2: below the top 1
        await pub.send(updates=[update(SYM, bids=[(100, 3)])])  # seq 3: the top level
        await pub.send(updates=[update(SYM, bids=[(98, 1)])])  # seq 4: below the top 1
        await full.until_heartbeat_at(4)
        await top.until_heartbeat_at(3)  # the seq of the last delta it got, not the book's
        assert full.deltas == [2, 3, 4] and top.deltas == [3]


async def test_heartbeat_before_any_change():
    async with (
        serve_in_process(test_settings(symbol_heartbeat=0.2)) as srv,
        Publisher.connect(srv.feed_url) as pub,
        connect(srv.url) as ws,
    ):
        await pub.send([instrument(SYM)])
        f = Follower(ws)
        await f.subscribe(SYM)
        assert f.seq == 0
        await f.until_heartbeat_at(0)
        assert f.deltas == []


@pytest.mark.parametrize("json_", [False, True], ids=["proto", "json"])
async def test_application_ping_pong(json_):
    big = 2**64 - 1  # the whole uint64 range round-trips (a string in JSON)
    async with serve_in_process() as srv:
        subprotocols = [SUBPROTOCOL_JSON] if json_ else None
        async with connect(srv.url, subprotocols=subprotocols) as ws:
            encoding = codec.Encoding.JSON if json_ else codec.Encoding.PROTOBUF
            for rid in (0, 7, big):
                await ws.send(codec.encode(codec.ping_message(rid), encoding))
                raw = await asyncio.wait_for(ws.recv(), WAIT)
                assert isinstance(raw, str) == json_
                pong = codec.parse_server_message(raw).pong
                assert pong.request_id == rid and pong.time_ns > 0
                if json_ and rid:
                    assert json.loads(raw)["pong"]["requestId"] == str(rid)


async def raw_handshake(port: int):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
    assert head.startswith(b"HTTP/1.1 101 ")
    return reader, writer


async def read_frames_until_eof(reader) -> list[tuple[int, bytes]]:
    """Every frame the server sends until it closes the TCP stream."""
    frames = []
    with contextlib.suppress(asyncio.IncompleteReadError, ConnectionResetError):
        while True:
            b0, b1 = await reader.readexactly(2)
            n = b1 & 0x7F
            if n == 126:
                (n,) = struct.unpack("!H", await reader.readexactly(2))
            elif n == 127:
                (n,) = struct.unpack("!Q", await reader.readexactly(8))
            frames.append((b0 & 0x0F, await reader.readexactly(n)))
    return frames


async def test_dead_peer_is_closed_live_peer_stays():
    # Short enough to be quick; the live client gets a generous margin to answer.
    interval, timeout = 0.2, 0.8
    async with (
        serve_in_process(test_settings(ping_interval=interval, ping_timeout=timeout)) as srv,
        # The websockets client answers the server's pings by itself.
        connect(srv.url, ping_interval=None) as live,
    ):
        await live.send(codec.ping_message(1).SerializeToString())
        assert (await recv(live)).pong.request_id == 1
        reader, writer = await raw_handshake(srv.port)
        started = time.monotonic()
        try:
            # Never answer: read (so the server can write) until it hangs up.
            frames = await asyncio.wait_for(read_frames_until_eof(reader), WAIT)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        elapsed = time.monotonic() - started
        *pings, (close_op, close_payload) = frames
        assert pings and all(op == 0x9 for op, _ in pings), frames  # pinged, never answered
        assert close_op == 0x8 and struct.unpack("!H", close_payload[:2])[0] == 1011, frames
        assert elapsed >= (interval + timeout) * 0.8  # by the ping timeout, not at once
        await eventually(lambda: len(srv.hub.connections) == 1, WAIT, "the dead client dropped")
        # The live client, connected since before the dead one, went through at
        # least one full ping cycle too and is still served.
        await live.send(codec.ping_message(2).SerializeToString())
        assert (await recv(live)).pong.request_id == 2
        assert live.state is websockets.State.OPEN
