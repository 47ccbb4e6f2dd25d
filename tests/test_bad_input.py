"""Bad input from subscribers and publishers, against a real server.

Each case checks the exact outcome for the misbehaving peer and that nobody
else notices: a well-behaved watcher on the same symbol keeps receiving every
delta in order, and where the bad connection stays open its own subscription
keeps working.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from orderbook.v1 import feed_pb2, stream_pb2
from orderbook.wire import codec
from orderbook.wire.codec import SUBPROTOCOL_JSON, SUBPROTOCOL_PROTO, ErrorCode

from .harness import (
    FEED_TOKEN,
    InProcessServer,
    Publisher,
    eventually,
    instrument,
    read_http_head,
    serve_in_process,
    test_settings,
    update,
)

pytestmark = pytest.mark.timeout(30)

SYM = "TEST"
OTHER = "OTHER"
STEP5 = "STEP5"  # price_increment 5
WAIT = 5.0  # upper bound for anything the server should do promptly


# ---------------------------------------------------------------- client helpers


def connect(url: str, **kw):
    kw.setdefault("proxy", None)
    kw.setdefault("compression", None)  # frame sizes on the wire are what we send
    return websockets.connect(url, **kw)


async def recv(ws) -> stream_pb2.ServerMessage:
    return codec.parse_server_message(await asyncio.wait_for(ws.recv(), WAIT))


async def expect(ws, kind: str):
    """The next message must be of `kind`; returns its body."""
    msg = await recv(ws)
    assert msg.WhichOneof("kind") == kind, msg
    return getattr(msg, kind)


async def expect_error(ws, code: int, symbol: str = "", request_id: int = 0) -> stream_pb2.Error:
    err = await expect(ws, "error")
    assert (err.code, err.symbol, err.request_id) == (code, symbol, request_id), err
    assert err.message
    return err


async def send(ws, msg: stream_pb2.ClientMessage) -> None:
    """In the encoding the connection negotiated."""
    json_ = ws.subprotocol == SUBPROTOCOL_JSON
    await ws.send(codec.encode(msg, codec.Encoding.JSON if json_ else codec.Encoding.PROTOBUF))


async def subscribe(ws, symbol: str, request_id: int = 1, depth: int = 0) -> stream_pb2.Snapshot:
    await send(ws, codec.subscribe_message(symbol, depth, request_id=request_id))
    ack = await expect(ws, "subscribed")
    assert (ack.symbol, ack.request_id, ack.start) == (symbol, request_id, stream_pb2.START_SNAPSHOT)
    snap = await expect(ws, "snapshot")
    assert snap.symbol == symbol and snap.seq == ack.seq
    return snap


async def expect_close(ws, code: int) -> list[stream_pb2.ServerMessage]:
    """Read until the server's close frame; return what came before it."""
    got = []
    with pytest.raises(ConnectionClosed) as info:
        async with asyncio.timeout(WAIT):
            while True:
                got.append(codec.parse_server_message(await ws.recv()))
    rcvd = info.value.rcvd
    assert rcvd is not None and rcvd.code == code, info.value
    return got


async def refused(url: str, **kw) -> websockets.http11.Response:
    with pytest.raises(InvalidStatus) as info:
        async with connect(url, **kw):
            pass
    return info.value.response


# ---------------------------------------------------------------- raw sockets


GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def frame(opcode: int, payload: bytes, *, mask: bool = True) -> bytes:
    """A single final client frame; `mask=False` breaks RFC 6455 5.1."""
    n = len(payload)
    head = bytes([0x80 | opcode])
    bit = 0x80 if mask else 0
    if n < 126:
        head += bytes([bit | n])
    else:
        head += bytes([bit | 126]) + struct.pack("!H", n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


class RawWS:
    """A hand-driven client socket, for what websockets will not send."""

    def __init__(self, reader, writer, status: int, headers: dict[str, str], body: bytes) -> None:
        self.reader, self.writer = reader, writer
        self.status, self.headers, self.body = status, headers, body

    @classmethod
    async def open(
        cls, port: int, path: str = "/ws", headers: dict[str, str] | None = None, upgrade: bool = True
    ) -> RawWS:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [f"GET {path} HTTP/1.1"]
        hdrs = {"Host": f"127.0.0.1:{port}"}
        if upgrade:
            hdrs.update(
                {
                    "Upgrade": "websocket",
                    "Connection": "Upgrade",
                    "Sec-WebSocket-Key": key,
                    "Sec-WebSocket-Version": "13",
                }
            )
        else:
            hdrs["Connection"] = "close"
        hdrs.update(headers or {})
        lines += [f"{k}: {v}" for k, v in hdrs.items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        status, got = await read_http_head(reader, WAIT)
        body = b""
        if status == 101:
            accept = base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()
            assert got["sec-websocket-accept"] == accept
        elif "content-length" in got:
            body = await asyncio.wait_for(reader.readexactly(int(got["content-length"])), WAIT)
        return cls(reader, writer, status, got, body)

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def read_frame(self) -> tuple[int, bytes] | None:
        """(opcode, payload) of the next server frame; None at EOF."""
        try:
            b0, b1 = await self.reader.readexactly(2)
            n = b1 & 0x7F
            if n == 126:
                (n,) = struct.unpack("!H", await self.reader.readexactly(2))
            elif n == 127:
                (n,) = struct.unpack("!Q", await self.reader.readexactly(8))
            assert not b1 & 0x80, "server frames are never masked"
            return b0 & 0x0F, await self.reader.readexactly(n)
        except asyncio.IncompleteReadError:
            return None

    async def close_code(self) -> int:
        """Read frames until the close frame and EOF; the close code."""
        async with asyncio.timeout(WAIT):
            while (f := await self.read_frame()) is not None:
                opcode, payload = f
                if opcode == 0x8:
                    code = struct.unpack("!H", payload[:2])[0]
                    assert await self.read_frame() is None  # then the server closes the TCP stream
                    return code
        raise AssertionError("EOF without a close frame")

    async def aclose(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


async def http_get(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    raw = await RawWS.open(port, path, upgrade=False)
    await raw.aclose()
    return raw.status, raw.headers, raw.body


# ---------------------------------------------------------------- the scene


@dataclass
class Scene:
    """A server with three symbols, a publisher, and a watcher subscribed to SYM."""

    srv: InProcessServer
    pub: Publisher
    watcher: websockets.ClientConnection
    epoch: int
    seq: int
    n: int = 0

    async def step(self, *also) -> int:
        """Publish one change to SYM. The watcher and each of `also` must get
        exactly its delta next, at the next seq (so nothing rejected took one)."""
        self.n += 1
        reply = await self.pub.send(updates=[update(SYM, bids=[(9900, self.n)])])
        assert reply.WhichOneof("kind") == "ack", reply
        (pos,) = reply.ack.positions
        assert (pos.epoch, pos.seq) == (self.epoch, self.seq + 1)
        self.seq = pos.seq
        for ws in (self.watcher, *also):
            d = await expect(ws, "delta")
            assert (d.symbol, d.epoch, d.prev_seq, d.seq) == (SYM, self.epoch, self.seq - 1, self.seq)
            assert [(lv.price, lv.size) for lv in d.bids] == [(9900, self.n)] and not d.asks
        return self.seq

    def connections(self) -> int:
        return len(self.srv.hub.connections)

    async def gone(self, expected: int = 1) -> None:
        """Wait until the server has dropped the bad connection."""
        await eventually(lambda: self.connections() == expected, WAIT, "the bad connection dropped")


@contextlib.asynccontextmanager
async def scene(**overrides) -> AsyncIterator[Scene]:
    async with serve_in_process(test_settings(**overrides)) as srv, Publisher.connect(srv.feed_url) as pub:
        reply = await pub.send(
            [instrument(SYM), instrument(OTHER), instrument(STEP5, price_increment=5)],
            [
                update(SYM, bids=[(10000, 10)], asks=[(10100, 20)]),
                update(OTHER, asks=[(500, 1)]),
                update(STEP5, bids=[(1000, 1)]),
            ],
        )
        assert reply.WhichOneof("kind") == "ack", reply
        token = srv.app.ctx.state.settings.subscriber_token
        async with connect(srv.url + (f"?token={token}" if token else "")) as watcher:
            snap = await subscribe(watcher, SYM)
            s = Scene(srv, pub, watcher, snap.epoch, snap.seq)
            yield s
            # Reached only when the test body passed: the watcher is still in sync.
            await s.step()


# ---------------------------------------------------------------- subscriber: the connection stays open


async def test_garbage_binary_frame_is_malformed():
    async with scene() as s, connect(s.srv.url) as bad:
        await subscribe(bad, SYM)
        await s.step(bad)
        await bad.send(b"\xff\xff\xff\xff not protobuf")
        await expect_error(bad, ErrorCode.ERROR_CODE_MALFORMED_MESSAGE)
        await s.step(bad)


@pytest.mark.parametrize(
    "payload",
    [b"", b"\x78\x01"],  # an empty envelope; only field 15 (unknown to this version)
    ids=["empty-envelope", "unknown-field-only"],
)
async def test_unknown_message(payload):
    async with scene() as s, connect(s.srv.url) as bad:
        await subscribe(bad, SYM)
        await bad.send(payload)
        await expect_error(bad, ErrorCode.ERROR_CODE_UNKNOWN_MESSAGE)
        await s.step(bad)


async def test_unknown_symbol_echoes_symbol_and_request_id():
    async with scene() as s, connect(s.srv.url) as bad:
        await subscribe(bad, SYM)
        await send(bad, codec.subscribe_message("NOPE", request_id=41))
        await expect_error(bad, ErrorCode.ERROR_CODE_UNKNOWN_SYMBOL, "NOPE", 41)
        await send(bad, codec.subscribe_message("", request_id=42))
        await expect_error(bad, ErrorCode.ERROR_CODE_INVALID_ARGUMENT, "", 42)
        await s.step(bad)


async def test_subscribing_twice_leaves_the_first_subscription_alone():
    async with scene() as s, connect(s.srv.url) as bad:
        await subscribe(bad, SYM, request_id=1)
        await s.step(bad)
        await send(bad, codec.subscribe_message(SYM, request_id=2))
        await expect_error(bad, ErrorCode.ERROR_CODE_ALREADY_SUBSCRIBED, SYM, 2)
        await send(bad, codec.subscribe_message(SYM, depth=5, request_id=3))
        await expect_error(bad, ErrorCode.ERROR_CODE_ALREADY_SUBSCRIBED, SYM, 3)
        # The next thing is the next delta: no second ack or snapshot, no gap.
        await s.step(bad)
        assert s.srv.hub.channels[SYM].subscriber_count() == 2


async def test_unsubscribe_of_a_symbol_not_held():
    async with scene() as s, connect(s.srv.url) as bad:
        await subscribe(bad, SYM)
        await subscribe(bad, OTHER, request_id=2)
        await send(bad, codec.unsubscribe_message(STEP5, request_id=8))
        await expect_error(bad, ErrorCode.ERROR_CODE_NOT_SUBSCRIBED, STEP5, 8)
        await s.step(bad)
        await send(bad, codec.unsubscribe_message(OTHER, request_id=9))
        unsub = await expect(bad, "unsubscribed")
        assert (unsub.symbol, unsub.request_id) == (OTHER, 9)
        await send(bad, codec.unsubscribe_message(OTHER, request_id=10))
        await expect_error(bad, ErrorCode.ERROR_CODE_NOT_SUBSCRIBED, OTHER, 10)
        await s.step(bad)


async def test_depth_beyond_max_depth():
    async with scene(max_depth=10) as s, connect(s.srv.url) as bad:
        await subscribe(bad, SYM)
        await send(bad, codec.subscribe_message(OTHER, depth=11, request_id=4))
        await expect_error(bad, ErrorCode.ERROR_CODE_INVALID_ARGUMENT, OTHER, 4)
        await s.step(bad)
        snap = await subscribe(bad, OTHER, depth=10, request_id=5)  # the maximum itself is fine
        assert snap.depth == 10
        await s.step(bad)


async def test_json_malformed_and_unknown_fields():
    async with scene() as s, connect(s.srv.url, subprotocols=[SUBPROTOCOL_JSON]) as bad:
        assert bad.subprotocol == SUBPROTOCOL_JSON
        await subscribe(bad, OTHER)
        for text in ['{"subscribe": ', '{"subscribe": {"depth": "deep"}}', "[1, 2]"]:
            await bad.send(text)
            await expect_error(bad, ErrorCode.ERROR_CODE_MALFORMED_MESSAGE)
        # Fields from a newer version of the protocol are ignored.
        await bad.send(
            json.dumps(
                {
                    "subscribe": {"symbol": SYM, "requestId": "5", "fromTheFuture": {"x": 1}},
                    "alsoNew": [1, 2],
                }
            )
        )
        raw_ack = await asyncio.wait_for(bad.recv(), WAIT)
        assert isinstance(raw_ack, str)
        assert json.loads(raw_ack)["subscribed"]["requestId"] == "5"  # uint64 as a JSON string
        await expect(bad, "snapshot")
        await s.step(bad)


# ---------------------------------------------------------------- subscriber: the connection is closed


@pytest.mark.parametrize(
    "garbage",
    [frame(0x2, b"hello", mask=False), frame(0x3, b"x")],  # unmasked; reserved opcode 3
    ids=["unmasked", "reserved-opcode"],
)
async def test_invalid_websocket_frame_closes_1002(garbage):
    async with scene() as s:
        bad = await RawWS.open(s.srv.port)
        try:
            assert bad.status == 101
            bad.send(frame(0x2, codec.subscribe_message(SYM).SerializeToString()))
            assert (await bad.read_frame())[0] == 0x2  # subscribed
            assert (await bad.read_frame())[0] == 0x2  # snapshot
            await s.step()
            bad.send(garbage)
            assert await bad.close_code() == 1002
        finally:
            await bad.aclose()
        await s.gone()


async def test_text_frame_with_protobuf_closes_1003():
    async with scene() as s, connect(s.srv.url, subprotocols=[SUBPROTOCOL_PROTO]) as bad:
        await subscribe(bad, SYM)
        await s.step(bad)
        await bad.send(codec.to_json(codec.ping_message(1)))
        assert await expect_close(bad, 1003) == []
        await s.gone()


async def test_binary_frame_with_json_closes_1003():
    async with scene() as s, connect(s.srv.url, subprotocols=[SUBPROTOCOL_JSON]) as bad:
        await subscribe(bad, SYM)
        await s.step(bad)
        await bad.send(codec.ping_message(1).SerializeToString())
        assert await expect_close(bad, 1003) == []
        await s.gone()


async def test_invalid_utf8_in_text_frame_closes_1007():
    async with scene() as s:
        bad = await RawWS.open(s.srv.port, headers={"Sec-WebSocket-Protocol": SUBPROTOCOL_JSON})
        try:
            assert (bad.status, bad.headers["sec-websocket-protocol"]) == (101, SUBPROTOCOL_JSON)
            bad.send(frame(0x1, b'{"ping": {"requestId": "3"}}'))
            opcode, payload = await bad.read_frame()
            assert opcode == 0x1 and json.loads(payload)["pong"]["requestId"] == "3"
            bad.send(frame(0x1, b'{"ping": {"requestId": "\xff\xfe"}}'))
            assert await bad.close_code() == 1007
        finally:
            await bad.aclose()
        await s.gone()
        await s.step()


def padded_ping(request_id: int, total: int) -> bytes:
    """A Ping envelope of exactly `total` bytes: padded with an unknown field."""
    head = codec.ping_message(request_id).SerializeToString()
    for n in range(total, 0, -1):
        body = b"\x7a" + varint(n) + b"\0" * n  # field 15, length-delimited
        if len(head) + len(body) == total:
            return head + body
    raise AssertionError(total)


async def test_oversized_message_closes_1009():
    limit = test_settings().max_message_bytes
    async with scene() as s, connect(s.srv.url) as bad:
        await subscribe(bad, SYM)
        await bad.send(padded_ping(7, limit))  # at the limit: fine
        assert (await expect(bad, "pong")).request_id == 7
        await s.step(bad)
        await bad.send(padded_ping(8, limit + 1))
        assert await expect_close(bad, 1009) == []
        await s.gone()


async def test_too_many_bad_messages_in_a_row_closes_1008():
    async with scene(max_client_errors=3) as s, connect(s.srv.url) as bad:
        await subscribe(bad, SYM)
        for _ in range(2):
            await bad.send(b"\xff")
            await expect_error(bad, ErrorCode.ERROR_CODE_MALFORMED_MESSAGE)
        await send(bad, codec.ping_message(5))  # a good message resets the count
        assert (await expect(bad, "pong")).request_id == 5
        await bad.send(b"\xff")
        await expect_error(bad, ErrorCode.ERROR_CODE_MALFORMED_MESSAGE)
        await send(bad, codec.subscribe_message("NOPE", request_id=6))
        await expect_error(bad, ErrorCode.ERROR_CODE_UNKNOWN_SYMBOL, "NOPE", 6)
        await s.step(bad)  # two in a row so far: still open
        await bad.send(b"\xff")
        (last,) = await expect_close(bad, 1008)  # the third error is sent, then the close
        assert last.error.code == ErrorCode.ERROR_CODE_MALFORMED_MESSAGE
        await s.gone()


# ---------------------------------------------------------------- subscriber: refused before the upgrade


async def test_bad_origin_is_refused_403():
    async with scene() as s:
        resp = await refused(s.srv.url, origin="https://evil.example")
        assert resp.status_code == 403
        # Same host means the request's own Host, not just any name.
        bad = await RawWS.open(s.srv.port, headers={"Host": "books.example", "Origin": "https://evil.example"})
        await bad.aclose()
        assert bad.status == 403 and "sec-websocket-accept" not in bad.headers
        assert s.connections() == 1


async def test_allowed_origins():
    async with scene() as s:
        port = s.srv.port
        for origin in (f"http://127.0.0.1:{port}", "http://localhost:3000", "https://[::1]"):
            async with connect(s.srv.url, origin=origin) as ws:
                await send(ws, codec.ping_message(1))
                await expect(ws, "pong")
        ok = await RawWS.open(port, headers={"Host": "books.example:8443", "Origin": "https://books.example:8443"})
        await ok.aclose()
        assert ok.status == 101
    async with scene(allowed_origins=("https://app.example",)) as s:
        async with connect(s.srv.url, origin="https://app.example") as ws:
            await send(ws, codec.ping_message(1))
            await expect(ws, "pong")
        # An explicit list replaces the defaults: localhost is no longer enough.
        for origin in ("https://evil.example", "http://localhost:3000"):
            assert (await refused(s.srv.url, origin=origin)).status_code == 403


async def test_subscriber_token():
    async with scene(subscriber_token="s3cret") as s:
        url = s.srv.url
        assert (await refused(url)).status_code == 401
        assert (await refused(url + "?token=nope")).status_code == 401
        assert (await refused(url, subprotocols=["bearer.nope", SUBPROTOCOL_PROTO])).status_code == 401
        async with connect(url + "?token=s3cret") as ws:
            assert ws.subprotocol is None
            await send(ws, codec.ping_message(1))
            await expect(ws, "pong")
        for offered, encoding in (
            (["bearer.s3cret", SUBPROTOCOL_PROTO], SUBPROTOCOL_PROTO),
            ([SUBPROTOCOL_JSON, "bearer.s3cret"], SUBPROTOCOL_JSON),
        ):
            async with connect(url, subprotocols=offered) as ws:
                # The token is never echoed: only the encoding.
                assert ws.response.headers.get_all("Sec-WebSocket-Protocol") == [encoding]
                assert ws.subprotocol == encoding
                await send(ws, codec.ping_message(2))
                assert (await expect(ws, "pong")).request_id == 2
        await s.gone()


async def test_server_full_503_with_retry_after():
    async with serve_in_process(test_settings(max_connections=1)) as srv, connect(srv.url) as first:
        await send(first, codec.ping_message(1))  # the server has registered it
        await expect(first, "pong")
        resp = await refused(srv.url)
        assert resp.status_code == 503 and int(resp.headers["Retry-After"]) > 0
        await send(first, codec.ping_message(2))
        assert (await expect(first, "pong")).request_id == 2
        await first.close()
        await eventually(lambda: not srv.hub.connections, WAIT, "every connection closed")
        async with connect(srv.url) as again:
            await send(again, codec.ping_message(3))
            await expect(again, "pong")


@pytest.mark.parametrize("path", ["/ws", "/feed"])
async def test_plain_get_426(path):
    async with serve_in_process() as srv:
        status, headers, body = await http_get(srv.port, path)
        assert status == 426 and headers["upgrade"].lower() == "websocket"
        text = body.decode()
        assert text.endswith("\n") and "\n" not in text.rstrip("\n") and "WebSocket" in text


# ---------------------------------------------------------------- publishers


async def test_feed_needs_the_token():
    async with scene() as s:
        url = s.srv.feed_url
        assert (await refused(url)).status_code == 401
        assert (await refused(url, additional_headers={"Authorization": "Bearer nope"})).status_code == 401
        assert (await refused(url + "?token=nope")).status_code == 401
        async with connect(url + f"?token={FEED_TOKEN}") as ws:
            await ws.send(b"")  # an empty FeedMessage: no batch
            reply = codec.parse_feed_reply(await asyncio.wait_for(ws.recv(), WAIT))
            assert reply.error.code == ErrorCode.ERROR_CODE_UNKNOWN_MESSAGE


async def test_feed_disabled_403():
    async with serve_in_process(test_settings(feed_token=None)) as srv:
        assert (await refused(srv.feed_url)).status_code == 403
        auth = {"Authorization": f"Bearer {FEED_TOKEN}"}
        assert (await refused(srv.feed_url, additional_headers=auth)).status_code == 403


def varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negative ints as two's complement, as protobuf int64 does
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field(number: int, value: int | bytes) -> bytes:
    if isinstance(value, int):
        return varint(number << 3) + varint(value)
    return varint(number << 3 | 2) + varint(len(value)) + value


def raw_update(symbol: str, price: int, size: int) -> bytes:
    level = field(1, price) + field(2, size)
    return field(1, symbol.encode()) + field(2, level)  # one bid


BATCH_ID = 77
GOOD = (SYM, 9000, 1)  # would change SYM if the batch were applied


def batch(*updates: tuple[str, int, int], instruments=()) -> bytes:
    msg = feed_pb2.FeedMessage()
    msg.batch.batch_id = BATCH_ID
    for inst in instruments:
        codec.instrument_to_pb(inst, msg.batch.instruments.add())
    raw = msg.SerializeToString()
    # Append the updates as raw fields of the batch (field 1 of the envelope merges).
    extra = b"".join(field(3, raw_update(*u)) for u in updates)
    return raw + field(1, extra)


BAD_BATCHES = {
    "unknown-symbol": (batch(GOOD, ("NOPE", 100, 1)), ErrorCode.ERROR_CODE_INVALID_UPDATE, "NOPE"),
    "off-grid-price": (
        batch(("NEW", 100, 1), GOOD, (STEP5, 1003, 1), instruments=[instrument("NEW")]),
        ErrorCode.ERROR_CODE_INVALID_UPDATE,
        STEP5,
    ),
    # A signed writer's -1 in the uint64 size field.
    "negative-size": (batch(GOOD, (SYM, 9100, -1)), ErrorCode.ERROR_CODE_INVALID_UPDATE, SYM),
    "redefinition": (
        batch(GOOD, instruments=[instrument("NEW"), instrument(SYM, price_scale=3)]),
        ErrorCode.ERROR_CODE_INSTRUMENT_CONFLICT,
        None,
    ),
}


async def server_state(port: int) -> list:
    out = []
    for path in ("/symbols", f"/book/{SYM}?depth=0", f"/book/{STEP5}?depth=0"):
        status, _, body = await http_get(port, path)
        assert status == 200
        out.append(json.loads(body))
    return out


@pytest.mark.parametrize("case", BAD_BATCHES, ids=list(BAD_BATCHES))
async def test_bad_batch_is_rejected_whole(case):
    data, code, symbol = BAD_BATCHES[case]
    async with scene() as s:
        before = await server_state(s.srv.port)
        await s.pub.ws.send(data)
        reply = codec.parse_feed_reply(await asyncio.wait_for(s.pub.ws.recv(), WAIT))
        assert reply.WhichOneof("kind") == "error", reply
        assert (reply.error.code, reply.error.request_id) == (code, BATCH_ID), reply
        if symbol is not None:
            assert reply.error.symbol == symbol
        assert await server_state(s.srv.port) == before
        assert "NEW" not in s.srv.hub.channels
        # The publisher goes on, and the watcher sees the next change at the next seq.
        await s.step()


async def test_text_frame_on_feed_closes_1003():
    async with scene() as s, Publisher.connect(s.srv.feed_url) as bad:
        await bad.ws.send("hello")
        with pytest.raises(ConnectionClosed) as info:
            await asyncio.wait_for(bad.ws.recv(), WAIT)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1003
        await s.step()
