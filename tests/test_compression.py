"""permessage-deflate on /ws (RFC 7692), over real sockets.

On a node started with compression on, a client that offers the extension
gets it on the node's terms (no context takeover either way), a client that
does not gets plain frames, and both verify every checksum and seq. Each
server message is compressed once, whatever the number of subscribers: the
same compressed bytes reach each of them. Clients may send compressed
messages; RSV1 without the extension, on a control frame or on a
continuation is a protocol error (1002), and a message that would inflate
past the size limit closes 1009. A node without compression never agrees.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import zlib
from collections.abc import AsyncIterator

import pytest

from orderbook.core.resume import ResumePoint
from orderbook.v1 import stream_pb2
from orderbook.wire import codec, compression
from orderbook.wire.codec import SUBPROTOCOL_JSON, Encoding

from .harness import InProcessServer, Publisher, Subscriber, instrument, serve_in_process, test_settings, update
from .test_rfc6455_conformance import BINARY, CLOSE, CONT, PING, PONG, TEXT, WAIT, Raw, close_body, mframe

pytestmark = pytest.mark.timeout(60)

SYM = "ZIP"
AGREED = "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
OFFER = {"Sec-WebSocket-Extensions": "permessage-deflate; client_max_window_bits"}
ENCODINGS = [Encoding.PROTOBUF, Encoding.JSON]


def wide(seq: int, levels: int = 20):
    """An update touching `levels` levels per side: its delta is well over
    compression.MIN_SIZE in either encoding."""
    return update(
        SYM,
        bids=[(10_000 - i, seq * 100 + i + 1) for i in range(levels)],
        asks=[(10_001 + i, seq * 100 + i + 1) for i in range(levels)],
    )


@contextlib.asynccontextmanager
async def node(compress: bool = True) -> AsyncIterator[tuple[InProcessServer, Publisher]]:
    async with (
        serve_in_process(test_settings(compression=compress)) as srv,
        Publisher.connect(srv.feed_url) as pub,
    ):
        reply = await pub.send([instrument(SYM)], [wide(0)])
        assert reply.WhichOneof("kind") == "ack", reply
        yield srv, pub


def extensions_of(sub: Subscriber) -> str | None:
    return sub.ws.response.headers.get("Sec-WebSocket-Extensions")


def encode(msg, encoding: Encoding) -> bytes:
    data = codec.encode(msg, encoding)
    return data.encode() if isinstance(data, str) else data


def parse(message: bytes, encoding: Encoding):
    return codec.parse_server_message(message if encoding is Encoding.PROTOBUF else message.decode())


def opcode_of(encoding: Encoding) -> int:
    return BINARY if encoding is Encoding.PROTOBUF else TEXT


# ---------------------------------------------------------------- a raw client that reads RSV1


async def open_raw(srv: InProcessServer, encoding: Encoding = Encoding.PROTOBUF, offer: str | None = None) -> Raw:
    headers = {}
    if offer is not None:
        headers["Sec-WebSocket-Extensions"] = offer
    if encoding is Encoding.JSON:
        headers["Sec-WebSocket-Protocol"] = SUBPROTOCOL_JSON
    raw = await Raw.open(srv.port, set_headers=headers)
    assert raw.status == 101
    return raw


async def read_raw(raw: Raw) -> tuple[int, bool, bytes, bytes]:
    """The next server frame: (opcode, RSV1, payload as sent, the frame's bytes)."""
    async with asyncio.timeout(WAIT):
        head = await raw.reader.readexactly(2)
        b0, b1 = head
        assert b0 & 0x80, "server frames are final"
        assert not b0 & 0x30, "RSV2 and RSV3 are never set"
        n = b1 & 0x7F
        ext = b""
        if n == 126:
            ext = await raw.reader.readexactly(2)
            (n,) = struct.unpack("!H", ext)
        elif n == 127:
            ext = await raw.reader.readexactly(8)
            (n,) = struct.unpack("!Q", ext)
        payload = await raw.reader.readexactly(n)
        return b0 & 0x0F, bool(b0 & 0x40), payload, head + ext + payload


def inflated(payload: bytes) -> bytes:
    return zlib.decompressobj(-15).decompress(payload + b"\x00\x00\xff\xff")


async def raw_messages(raw: Raw, count: int) -> list[tuple[bool, bytes, bytes]]:
    """The next `count` data messages: (compressed, message, frame bytes)."""
    out = []
    while len(out) < count:
        opcode, rsv1, payload, wire = await read_raw(raw)
        if opcode in (BINARY, TEXT):
            out.append((rsv1, inflated(payload) if rsv1 else payload, wire))
    return out


# ---------------------------------------------------------------- both kinds of client, verified


@pytest.mark.parametrize("encoding", ENCODINGS, ids=lambda e: e.name)
async def test_a_compressing_and_a_plain_client_verify_every_message(encoding):
    async with (
        node() as (srv, pub),
        Subscriber.connect(srv.url, encoding, compression="deflate") as packed,
        Subscriber.connect(srv.url, encoding, compression=None) as plain,
    ):
        assert extensions_of(packed) == AGREED
        assert extensions_of(plain) is None
        for sub in (packed, plain):
            await sub.subscribe(SYM)
            await sub.until_seq(SYM, 1)
        # Wide deltas (compressed) and one-level ones (under MIN_SIZE in
        # protobuf: sent as they are) mixed.
        for seq in range(2, 42):
            u = wide(seq) if seq % 3 else update(SYM, bids=[(10_000, seq)])
            assert (await pub.send(updates=[u])).WhichOneof("kind") == "ack"
        for sub in (packed, plain):
            await sub.until_seq(SYM, 41)
            # BookFollower checked each checksum; every seq came once, in order.
            assert [s for _, s in sub.seen[SYM]] == list(range(2, 42))
            assert sub.snapshots == {SYM: 1}
            assert sub.errors == []
        assert sorted(s.conn.deflate for s in srv.hub.channels[SYM].full) == [False, True]


@pytest.mark.parametrize("encoding", ENCODINGS, ids=lambda e: e.name)
async def test_each_message_is_compressed_once_for_every_subscriber(monkeypatch, encoding):
    compressed: list[bytes] = []
    real = compression.deflate

    def counting(payload: bytes) -> bytes:
        compressed.append(payload)
        return real(payload)

    monkeypatch.setattr(compression, "deflate", counting)
    subscribers, deltas = 6, 25
    async with node() as (srv, pub), contextlib.AsyncExitStack() as stack:
        subs = [
            await stack.enter_async_context(Subscriber.connect(srv.url, encoding, compression="deflate"))
            for _ in range(subscribers)
        ]
        plain = await stack.enter_async_context(Subscriber.connect(srv.url, encoding, compression=None))
        for sub in [*subs, plain]:
            await sub.subscribe(SYM)
        for sub in [*subs, plain]:
            await sub.until_seq(SYM, 1)
        for seq in range(2, 2 + deltas):
            assert (await pub.send(updates=[wide(seq)])).WhichOneof("kind") == "ack"
        for sub in [*subs, plain]:
            await sub.until_seq(SYM, 1 + deltas)
            assert [s for _, s in sub.seen[SYM]] == list(range(2, 2 + deltas))

    kinds = [parse(p, encoding) for p in compressed]
    snapshots = [m for m in kinds if m.WhichOneof("kind") == "snapshot"]
    delta_seqs = [m.delta.seq for m in kinds if m.WhichOneof("kind") == "delta"]
    # Subscribers that joined at one seq share one snapshot, compressed once;
    # each delta is compressed once, not once per subscriber.
    assert len(snapshots) == 1
    assert sorted(delta_seqs) == list(range(2, 2 + deltas))


async def test_every_compressing_subscriber_gets_the_same_bytes():
    async with node() as (srv, pub):
        a = await open_raw(srv, offer="permessage-deflate")
        b = await open_raw(srv, offer="permessage-deflate")
        assert a.headers["sec-websocket-extensions"] == b.headers["sec-websocket-extensions"] == AGREED
        for raw in (a, b):
            raw.send(mframe(BINARY, encode(codec.subscribe_message(SYM, request_id=1), Encoding.PROTOBUF)))
            await raw_messages(raw, 2)  # Subscribed, Snapshot
        await pub.send(updates=[wide(2)])
        await pub.send(updates=[update(SYM, bids=[(10_000, 5)])])
        got_a, got_b = await raw_messages(a, 2), await raw_messages(b, 2)
        assert [w for *_, w in got_a] == [w for *_, w in got_b]
        (wide_rsv1, wide_msg, wide_frame), (small_rsv1, _, _) = got_a
        # The wide delta is compressed, the one-level delta is not worth it.
        assert wide_rsv1 and not small_rsv1
        assert len(wide_frame) < len(wide_msg)
        assert [codec.parse_server_message(m).delta.seq for _, m, _ in got_a] == [2, 3]
        for raw in (a, b):
            await raw.aclose()


@pytest.mark.parametrize("encoding", ENCODINGS, ids=lambda e: e.name)
async def test_shared_snapshots_and_resume_replays_are_compressed(encoding):
    async with node() as (srv, pub):
        async with Subscriber.connect(srv.url, encoding, compression="deflate") as first:
            await first.subscribe(SYM)
            await first.until_seq(SYM, 1)
            held = first.followers[SYM]
            epoch, seq = held.epoch, held.seq
        for s in range(2, 8):
            await pub.send(updates=[wide(s)])
        raw = await open_raw(srv, encoding, offer="permessage-deflate")
        resume = codec.subscribe_message(SYM, 0, ResumePoint(epoch, seq), 9)
        raw.send(mframe(opcode_of(encoding), encode(resume, encoding)))
        got = await raw_messages(raw, 7)  # Subscribed (resumed), then the six deltas it missed
        msgs = [parse(m, encoding) for _, m, _ in got]
        assert msgs[0].subscribed.start == stream_pb2.START_RESUMED
        assert [m.delta.seq for m in msgs[1:]] == list(range(2, 8))
        assert all(rsv1 for rsv1, _, _ in got[1:]), "replayed wide deltas are compressed"
        await raw.aclose()
        # Joiners at one seq: one snapshot, compressed, the same bytes for each.
        snaps = []
        for _ in range(3):
            r = await open_raw(srv, encoding, offer="permessage-deflate")
            sub = codec.subscribe_message(SYM, request_id=1)
            r.send(mframe(opcode_of(encoding), encode(sub, encoding)))
            _, (rsv1, msg, wire) = await raw_messages(r, 2)
            assert rsv1
            assert parse(msg, encoding).snapshot.seq == 7
            snaps.append(wire)
            await r.aclose()
        assert len(set(snaps)) == 1


# ---------------------------------------------------------------- what clients send


@pytest.mark.parametrize("encoding", ENCODINGS, ids=lambda e: e.name)
async def test_a_compressed_subscribe_is_accepted(encoding):
    async with node() as (srv, _):
        raw = await open_raw(srv, encoding, offer="permessage-deflate")
        data = compression.deflate(encode(codec.subscribe_message(SYM, request_id=4), encoding))
        # In two fragments, RSV1 on the first only, a ping between them.
        raw.send(mframe(opcode_of(encoding), data[:3], fin=False, rsv=4), mframe(PING, b"hi"), mframe(CONT, data[3:]))
        assert (await read_raw(raw))[0] == PONG
        (_, ack, _), (_, snap, _) = await raw_messages(raw, 2)
        assert parse(ack, encoding).subscribed.request_id == 4
        assert parse(snap, encoding).snapshot.seq == 1
        await raw.aclose()


async def test_websockets_client_sends_compressed_requests_the_node_understands():
    # websockets compresses what it sends once the extension is agreed.
    async with node() as (srv, _), Subscriber.connect(srv.url, compression="deflate") as sub:
        assert extensions_of(sub) == AGREED
        await sub.subscribe(SYM)
        await sub.until_seq(SYM, 1)
        await sub.send(codec.ping_message(77))
        await sub.until(lambda: any(p.request_id == 77 for p in sub.pongs))


async def test_rsv1_without_the_extension_is_a_protocol_error():
    async with node() as (srv, _):
        raw = await open_raw(srv)  # offers nothing
        assert "sec-websocket-extensions" not in raw.headers
        sub = compression.deflate(encode(codec.subscribe_message(SYM, request_id=1), Encoding.PROTOBUF))
        raw.send(mframe(BINARY, sub, rsv=4))
        await raw.expect_close(1002)
        await raw.aclose()


@pytest.mark.parametrize(
    "frames",
    [
        pytest.param(lambda: mframe(PING, b"x", rsv=4), id="RSV1 on a ping"),
        pytest.param(lambda: mframe(CLOSE, close_body(1000), rsv=4), id="RSV1 on a close"),
        pytest.param(
            lambda: mframe(BINARY, b"\x0a", fin=False, rsv=4) + mframe(CONT, b"\x03", rsv=4),
            id="RSV1 on a continuation",
        ),
        pytest.param(lambda: mframe(BINARY, compression.deflate(b"x" * 200), rsv=2), id="RSV2"),
        pytest.param(lambda: mframe(BINARY, b"\xff\xff\xff\xff", rsv=4), id="not DEFLATE data"),
    ],
)
async def test_rsv_misuse_with_the_extension_is_a_protocol_error(frames):
    async with node() as (srv, _):
        raw = await open_raw(srv, offer="permessage-deflate")
        raw.send(frames())
        await raw.expect_close(1002)
        await raw.aclose()


async def test_a_decompression_bomb_closes_1009_and_the_node_goes_on():
    max_bytes = test_settings().max_message_bytes
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    zeros = bytes(1024 * 1024)
    bomb = b"".join(packer.compress(zeros) for _ in range(48)) + packer.flush(zlib.Z_SYNC_FLUSH)
    bomb = bomb[:-4]
    assert len(bomb) < max_bytes < 48 * len(zeros)  # small compressed, 48 MiB inflated
    async with node() as (srv, pub), Subscriber.connect(srv.url, compression="deflate") as watcher:
        await watcher.subscribe(SYM)
        await watcher.until_seq(SYM, 1)
        raw = await open_raw(srv, offer="permessage-deflate")
        raw.send(mframe(BINARY, bomb, rsv=4))
        await raw.expect_close(1009)
        await raw.aclose()
        await pub.send(updates=[wide(2)])
        await watcher.until_seq(SYM, 2)


# ---------------------------------------------------------------- negotiation


async def test_a_node_without_compression_never_agrees():
    async with node(compress=False) as (srv, pub):
        async with Subscriber.connect(srv.url, compression="deflate") as sub:
            assert extensions_of(sub) is None
            await sub.subscribe(SYM)
            await sub.until_seq(SYM, 1)
        offers = ("permessage-deflate", "permessage-deflate; client_max_window_bits", AGREED)
        for seq, offer in enumerate(offers, start=2):
            raw = await open_raw(srv, offer=offer)
            assert "sec-websocket-extensions" not in raw.headers
            raw.send(mframe(BINARY, encode(codec.subscribe_message(SYM, request_id=1), Encoding.PROTOBUF)))
            await raw_messages(raw, 2)
            await pub.send(updates=[wide(seq)])
            ((rsv1, _, _),) = await raw_messages(raw, 1)
            assert not rsv1, "no compressed frame without the extension"
            # RSV1 stays an error though the client offered the extension.
            raw.send(mframe(BINARY, compression.deflate(b"x" * 300), rsv=4))
            await raw.expect_close(1002)
            await raw.aclose()


@pytest.mark.parametrize(
    "offer, agreed",
    [
        ("permessage-deflate", AGREED),
        ("permessage-deflate; client_max_window_bits", AGREED),
        ("permessage-deflate; client_max_window_bits=10", AGREED + "; client_max_window_bits=10"),
        ("permessage-deflate; server_no_context_takeover", AGREED),
        ("permessage-deflate; server_max_window_bits=15", AGREED + "; server_max_window_bits=15"),
        # A smaller server window cannot be honoured: declined.
        ("permessage-deflate; server_max_window_bits=10", None),
        # ... and the next offer taken instead.
        ("permessage-deflate; server_max_window_bits=9, permessage-deflate", AGREED),
        ("permessage-deflate; server_max_window_bits", None),  # no value: not a valid offer
        ("permessage-deflate; x-unknown=1", None),
        ("x-webkit-deflate-frame", None),
    ],
)
async def test_the_agreement_states_exactly_what_the_node_does(offer, agreed):
    async with node() as (srv, _):
        raw = await open_raw(srv, offer=offer)
        assert raw.headers.get("sec-websocket-extensions") == agreed
        conn = next(iter(srv.hub.connections))
        assert conn.deflate is (agreed is not None)
        await raw.aclose()


async def test_a_malformed_extensions_header_gets_400_saying_so():
    async with node() as (srv, _):
        raw = await Raw.open(srv.port, set_headers={"Sec-WebSocket-Extensions": "permessage-deflate; ="})
        assert raw.status == 400
        assert b"Sec-WebSocket-Extensions" in raw.body
        await raw.aclose()
