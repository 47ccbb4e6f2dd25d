"""RFC 6455 conformance of the subscriber socket, with raw frames over TCP.

A hand-driven client performs the opening handshake itself, sends frames
built byte by byte (masked unless a case says otherwise) and reads what the
server answers: a close frame with the expected code (or an empty close),
then the end of the TCP connection; or the expected pong and messages.
The cases go through RFC 6455 §5 (framing, lengths, masking, control frames,
fragmentation) and §7 (close codes and close bodies, UTF-8), and §4 for the
handshake. Every case runs on its own server next to a well-behaved watcher
subscribed to a symbol; after the case the watcher must still receive the
next delta and a fresh client must still get a pong and a clean close.

Choices where the RFC leaves room (docs/protocol.md §4.5):
* an empty close frame is answered with an empty close (no status code;
  1005 is never sent); a valid close code is echoed, without a reason;
* a length not encoded in the minimal number of bytes is accepted.
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
from dataclasses import dataclass, field

import pytest

from orderbook.server import admission
from orderbook.wire import codec
from orderbook.wire.codec import SUBPROTOCOL_JSON, Encoding
from orderbook.wire.compression import deflate
from orderbook.wire.framing import close_code_valid, close_frame

from .harness import (
    FEED_TOKEN,
    InProcessServer,
    Publisher,
    Subscriber,
    eventually,
    instrument,
    read_http_head,
    serve_in_process,
    update,
)

pytestmark = pytest.mark.timeout(30)

SYM = "TEST"
WAIT = 5.0  # upper bound for anything the server should do at once
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX = 64 * 1024  # settings.max_message_bytes by default

CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


# ---------------------------------------------------------------- frames, by hand


def mframe(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    mask: bool = True,
    length: str = "min",
    declared: int | None = None,
) -> bytes:
    """One client frame. `rsv` is the RSV1-3 bits (0-7); `length` forces the
    7-bit ("7"), 16-bit ("16") or 64-bit ("64") length form; `declared`
    writes another length than the payload's."""
    n = len(payload) if declared is None else declared
    b0 = (0x80 if fin else 0) | (rsv & 7) << 4 | opcode
    m = 0x80 if mask else 0
    if length == "min":
        length = "7" if n < 126 else "16" if n < 65536 else "64"
    if length == "7":
        head = bytes([b0, m | n])
    elif length == "16":
        head = bytes([b0, m | 126]) + struct.pack("!H", n)
    else:
        head = bytes([b0, m | 127]) + struct.pack("!Q", n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def close_body(code: int, reason: bytes = b"") -> bytes:
    return struct.pack("!H", code) + reason


def subscribe_bytes(symbol: str = SYM, request_id: int = 7) -> bytes:
    return codec.encode(codec.subscribe_message(symbol, request_id=request_id), Encoding.PROTOBUF)


# ---------------------------------------------------------------- a raw client


@dataclass
class Raw:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    status: int
    headers: dict[str, str]
    body: bytes = b""

    @classmethod
    async def open(
        cls, port: int, path: str = "/ws", *, set_headers: dict[str, str] | None = None, drop: tuple[str, ...] = ()
    ) -> Raw:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), WAIT)
        key = base64.b64encode(os.urandom(16)).decode()
        hdrs = {
            "Host": f"127.0.0.1:{port}",
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Key": key,
            "Sec-WebSocket-Version": "13",
        }
        hdrs.update(set_headers or {})
        for name in drop:
            hdrs.pop(name, None)
        request = f"GET {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items()) + "\r\n"
        writer.write(request.encode())
        status, got = await read_http_head(reader, WAIT)
        body = b""
        if status == 101:
            accept = base64.b64encode(hashlib.sha1(hdrs["Sec-WebSocket-Key"].encode() + GUID).digest()).decode()
            assert got["sec-websocket-accept"] == accept
        elif "content-length" in got:
            body = await asyncio.wait_for(reader.readexactly(int(got["content-length"])), WAIT)
        return cls(reader, writer, status, got, body)

    def send(self, *frames: bytes) -> None:
        self.writer.write(b"".join(frames))

    async def read_frame(self) -> tuple[int, bytes] | None:
        """(opcode, payload) of the next server frame; None at EOF."""
        async with asyncio.timeout(WAIT):
            try:
                b0, b1 = await self.reader.readexactly(2)
            except asyncio.IncompleteReadError as exc:
                assert exc.partial == b"", "EOF inside a frame"
                return None
            except ConnectionResetError:
                return None
            assert b0 & 0x80, "server frames are final"
            assert not b0 & 0x70, "no RSV bits from the server"
            assert not b1 & 0x80, "server frames are never masked"
            n = b1 & 0x7F
            if n == 126:
                (n,) = struct.unpack("!H", await self.reader.readexactly(2))
            elif n == 127:
                (n,) = struct.unpack("!Q", await self.reader.readexactly(8))
            return b0 & 0x0F, await self.reader.readexactly(n)

    async def expect_close(self, code: int | None, *, answer: bool = False) -> list[tuple[int, bytes]]:
        """Read up to the server's close frame, which must carry `code` (None:
        an empty close), then EOF; with `answer`, the client sends its close
        first (a server-initiated close waits for it). Returns the frames that
        came before the close."""
        before: list[tuple[int, bytes]] = []
        while True:
            f = await self.read_frame()
            assert f is not None, f"EOF without a close frame (after {before})"
            opcode, payload = f
            if opcode != CLOSE:
                before.append(f)
                continue
            if code is None:
                assert payload == b"", payload
            else:
                assert len(payload) >= 2, payload
                got = struct.unpack("!H", payload[:2])[0]
                assert got == code, (got, payload[2:])
                assert close_code_valid(got)  # never 1005, 1006, 1015
                payload[2:].decode()  # the reason is UTF-8
            break
        if answer:
            self.send(mframe(CLOSE, close_body(code or 1000)))
        assert await self.read_frame() is None, "the server ends the TCP connection after the close"
        return before

    async def expect(self, opcode: int) -> bytes:
        f = await self.read_frame()
        assert f is not None and f[0] == opcode, f
        return f[1]

    async def aclose(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


# ---------------------------------------------------------------- the scene: a server and a watcher


@dataclass
class Scene:
    srv: InProcessServer
    pub: Publisher
    watcher: Subscriber
    seq: int = 1
    raws: list[Raw] = field(default_factory=list)

    async def raw(self, **kw) -> Raw:
        r = await Raw.open(self.srv.port, **kw)
        self.raws.append(r)
        return r

    async def others_unaffected(self) -> None:
        """The watcher gets the next delta; a fresh client gets a pong and a
        clean close; no connection is left behind but the watcher's."""
        await self.pub.send(updates=[update(SYM, bids=[(100 + self.seq, 1)])])
        self.seq += 1
        await self.watcher.until_seq(SYM, self.seq, timeout=WAIT)
        fresh = await Raw.open(self.srv.port)
        assert fresh.status == 101
        fresh.send(mframe(PING, b"still there?"))
        assert await fresh.expect(PONG) == b"still there?"
        fresh.send(mframe(CLOSE, close_body(1000)))
        await fresh.expect_close(1000)
        await fresh.aclose()
        await eventually(lambda: len(self.srv.hub.connections) == 1, WAIT, "only the watcher left")


@pytest.fixture
async def scene() -> AsyncIterator[Scene]:
    async with (
        serve_in_process() as srv,
        Publisher.connect(srv.feed_url) as pub,
        Subscriber.connect(srv.url) as watcher,
    ):
        await pub.send([instrument(SYM)], [update(SYM, bids=[(100, 1)])])
        await watcher.subscribe(SYM)
        await watcher.until_seq(SYM, 1, timeout=WAIT)
        s = Scene(srv, pub, watcher)
        try:
            yield s
            await s.others_unaffected()
        finally:
            for r in s.raws:
                await r.aclose()


# ---------------------------------------------------------------- the case table: bytes in, close out

JSON_PROTO = {"Sec-WebSocket-Protocol": SUBPROTOCOL_JSON}
INVALID_CLOSE_CODES = [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535]
VALID_CLOSE_CODES = [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 4000, 4999]


@dataclass(frozen=True)
class Case:
    name: str
    send: bytes
    close: int | None  # the server's close code; None: an empty close frame
    headers: dict[str, str] | None = None  # handshake headers, e.g. the JSON subprotocol
    answer: bool = False  # the server starts a closing handshake and waits for the client's close

    def __str__(self) -> str:
        return self.name


CASES = [
    # §5.5.1 / §7.4: close bodies and codes
    *(Case(f"close code {c} is invalid -> 1002", mframe(CLOSE, close_body(c)), 1002) for c in INVALID_CLOSE_CODES),
    *(Case(f"close code {c} is echoed", mframe(CLOSE, close_body(c)), c) for c in VALID_CLOSE_CODES),
    Case("close with a UTF-8 reason is echoed", mframe(CLOSE, close_body(1000, "bye ✓ €".encode())), 1000),
    Case("close with a 123-byte reason (125 in all) is echoed", mframe(CLOSE, close_body(1000, b"r" * 123)), 1000),
    Case("empty close -> empty close", mframe(CLOSE), None),
    Case("1-byte close body -> 1002", mframe(CLOSE, b"\x03"), 1002),
    Case("close reason not UTF-8 -> 1007", mframe(CLOSE, close_body(1000, b"ok \xff\xfe")), 1007),
    Case("close reason a cut UTF-8 sequence -> 1007", mframe(CLOSE, close_body(1000, "€".encode()[:2])), 1007),
    Case("close reason a UTF-16 surrogate -> 1007", mframe(CLOSE, close_body(1000, b"\xed\xa0\x80")), 1007),
    Case("close reason an overlong encoding -> 1007", mframe(CLOSE, close_body(1000, b"\xc0\xaf")), 1007),
    Case("invalid code wins over invalid reason -> 1002", mframe(CLOSE, close_body(1005, b"\xff")), 1002),
    Case(
        "data after the client's close is ignored",
        mframe(CLOSE, close_body(1000)) + mframe(BINARY, subscribe_bytes()) + mframe(PING, b"x"),
        1000,
    ),
    # §5.5: control frames
    Case("close body of 126 bytes -> 1002", mframe(CLOSE, close_body(1000, b"r" * 124)), 1002),
    Case("ping of 126 bytes -> 1002", mframe(PING, b"p" * 126), 1002),
    Case("pong of 126 bytes -> 1002", mframe(PONG, b"p" * 126), 1002),
    Case("ping with 16-bit length 126 -> 1002", mframe(PING, b"p" * 126, length="16"), 1002),
    Case("fragmented ping (FIN=0) -> 1002", mframe(PING, b"a", fin=False) + mframe(CONT, b"b"), 1002),
    Case("fragmented close (FIN=0) -> 1002", mframe(CLOSE, close_body(1000), fin=False), 1002),
    Case("fragmented pong (FIN=0) -> 1002", mframe(PONG, b"", fin=False), 1002),
    # §5.2: opcodes and reserved bits
    *(Case(f"reserved opcode {op:#x} -> 1002", mframe(op, b"x"), 1002) for op in (3, 4, 5, 6, 7)),
    *(Case(f"reserved control opcode {op:#x} -> 1002", mframe(op, b""), 1002) for op in range(0xB, 0x10)),
    *(
        Case(f"RSV bits {rsv:03b} without an extension -> 1002", mframe(BINARY, subscribe_bytes(), rsv=rsv), 1002)
        for rsv in (4, 2, 1, 7)
    ),
    Case("RSV1 on a ping -> 1002", mframe(PING, b"x", rsv=4), 1002),
    # RFC 7692: an offer the server did not agree to (compression is off by
    # default) does not make RSV1 valid.
    Case(
        "RSV1 after offering permessage-deflate, not agreed -> 1002",
        mframe(BINARY, deflate(subscribe_bytes()), rsv=4),
        1002,
        {"Sec-WebSocket-Extensions": "permessage-deflate; client_max_window_bits"},
    ),
    # §5.1 / §5.3: masking
    Case("unmasked binary frame -> 1002", mframe(BINARY, subscribe_bytes(), mask=False), 1002),
    Case("unmasked ping -> 1002", mframe(PING, b"x", mask=False), 1002),
    Case("unmasked close -> 1002", mframe(CLOSE, close_body(1000), mask=False), 1002),
    Case("unmasked empty text frame -> 1002", mframe(TEXT, b"", mask=False), 1002, JSON_PROTO),
    # §5.4: fragmentation
    Case("continuation with no message started -> 1002", mframe(CONT, b"x"), 1002),
    Case("non-final continuation with no message started -> 1002", mframe(CONT, b"x", fin=False), 1002),
    Case(
        "new binary message inside a fragmented one -> 1002",
        mframe(BINARY, b"\x0a", fin=False) + mframe(BINARY, b"x"),
        1002,
    ),
    Case(
        "new text message inside a fragmented one -> 1002",
        mframe(TEXT, b"{", fin=False) + mframe(TEXT, b"{}"),
        1002,
        JSON_PROTO,
    ),
    Case(
        "second continuation after the final one -> 1002",
        mframe(BINARY, b"\x0a", fin=False) + mframe(CONT, b"\x04") + mframe(CONT, b"TEST"),
        1002,
    ),
    # §5.2: lengths
    Case("64-bit length with the top bit set -> 1002", mframe(BINARY, b"", length="64", declared=1 << 63), 1002),
    Case("64-bit length 2**64-1 -> 1002", mframe(BINARY, b"", length="64", declared=(1 << 64) - 1), 1002),
    Case("message over 64 KiB in one frame -> 1009", mframe(BINARY, b"\x00" * (MAX + 1)), 1009),
    Case(
        "message over 64 KiB declared, nothing sent -> 1009", mframe(BINARY, b"", length="64", declared=1 << 40), 1009
    ),
    Case(
        "message over 64 KiB in fragments -> 1009",
        mframe(BINARY, b"\x00" * (MAX // 2), fin=False) + mframe(CONT, b"\x00" * (MAX // 2 + 1)),
        1009,
    ),
    Case("text message over 64 KiB -> 1009", mframe(TEXT, b" " * (MAX + 1)), 1009, JSON_PROTO),
    # §8.1: UTF-8 in text messages; §1.2 of the protocol: frame types per encoding
    Case("text not UTF-8 (JSON) -> 1007", mframe(TEXT, b'{"ping": {}}\xff'), 1007, JSON_PROTO),
    Case("text with a surrogate (JSON) -> 1007", mframe(TEXT, b'"\xed\xa0\x80"'), 1007, JSON_PROTO),
    Case(
        "text ending in a cut sequence over fragments (JSON) -> 1007",
        mframe(TEXT, b'{"a": "', fin=False) + mframe(CONT, b"\xe2\x82"),
        1007,
        JSON_PROTO,
    ),
    Case("text not UTF-8 (protobuf) -> 1007", mframe(TEXT, b"\xff"), 1007),
    Case("valid text with protobuf -> 1003", mframe(TEXT, b"{}"), 1003, answer=True),
    Case("binary with JSON -> 1003", mframe(BINARY, subscribe_bytes()), 1003, JSON_PROTO, answer=True),
]


@pytest.mark.parametrize("case", CASES, ids=str)
async def test_case_closes(scene: Scene, case: Case) -> None:
    raw = await scene.raw(set_headers=case.headers)
    assert raw.status == 101
    raw.send(case.send)
    await raw.expect_close(case.close, answer=case.answer)


# ---------------------------------------------------------------- cases the connection survives


async def _expect_subscribed(raw: Raw, request_id: int) -> None:
    kinds = []
    async with asyncio.timeout(WAIT):
        while "snapshot" not in kinds:
            msg = codec.parse_server_message(await raw.expect(BINARY))
            kinds.append(msg.WhichOneof("kind"))
            if kinds[-1] == "subscribed":
                assert msg.subscribed.request_id == request_id
    assert kinds[0] == "subscribed", kinds


async def _clean_close(raw: Raw) -> None:
    raw.send(mframe(CLOSE, close_body(1000, b"done")))
    await raw.expect_close(1000)


@pytest.mark.parametrize("payload", [b"", b"hello", bytes(range(125))], ids=["empty", "short", "125 bytes"])
async def test_ping_answered_with_same_payload(scene: Scene, payload: bytes) -> None:
    raw = await scene.raw()
    raw.send(mframe(PING, payload))
    assert await raw.expect(PONG) == payload
    await _clean_close(raw)


async def test_unsolicited_pong_ignored(scene: Scene) -> None:
    raw = await scene.raw()
    raw.send(mframe(PONG, b"unasked"), mframe(PING, b"after"))
    assert await raw.expect(PONG) == b"after"
    await _clean_close(raw)


async def test_two_fragments_make_one_subscribe(scene: Scene) -> None:
    data = subscribe_bytes(request_id=11)
    raw = await scene.raw()
    raw.send(mframe(BINARY, data[:3], fin=False), mframe(CONT, data[3:]))
    await _expect_subscribed(raw, 11)
    await _clean_close(raw)


async def test_many_fragments_and_empty_ones_make_one_subscribe(scene: Scene) -> None:
    data = subscribe_bytes(request_id=12)
    raw = await scene.raw()
    frames = [mframe(BINARY, b"", fin=False)] + [mframe(CONT, bytes([b]), fin=False) for b in data] + [mframe(CONT)]
    for f in frames:  # one write each: the parser sees the message arrive piecewise
        raw.send(f)
        await raw.writer.drain()
    await _expect_subscribed(raw, 12)
    await _clean_close(raw)


async def test_ping_inside_a_fragmented_message(scene: Scene) -> None:
    data = subscribe_bytes(request_id=13)
    raw = await scene.raw()
    raw.send(mframe(BINARY, data[:4], fin=False), mframe(PING, b"mid-message"))
    assert await raw.expect(PONG) == b"mid-message"  # answered before the message ends
    raw.send(mframe(CONT, data[4:]))
    await _expect_subscribed(raw, 13)
    await _clean_close(raw)


async def test_frame_split_byte_by_byte(scene: Scene) -> None:
    raw = await scene.raw()
    for b in mframe(PING, b"slow") + mframe(BINARY, subscribe_bytes(request_id=14), length="64"):
        raw.send(bytes([b]))
        await raw.writer.drain()
    assert await raw.expect(PONG) == b"slow"
    await _expect_subscribed(raw, 14)
    await _clean_close(raw)


@pytest.mark.parametrize("form", ["16", "64"])
async def test_non_minimal_length_is_accepted(scene: Scene, form: str) -> None:
    raw = await scene.raw()
    raw.send(mframe(PING, b"p", length=form), mframe(BINARY, subscribe_bytes(request_id=15), length=form))
    assert await raw.expect(PONG) == b"p"
    await _expect_subscribed(raw, 15)
    await _clean_close(raw)


async def test_ping_before_a_bad_frame_in_the_same_segment_is_answered(scene: Scene) -> None:
    raw = await scene.raw()
    raw.send(mframe(PING, b"first"), mframe(BINARY, b"x", mask=False))
    before = await raw.expect_close(1002)
    assert before == [(PONG, b"first")]


async def test_json_text_split_inside_a_utf8_character(scene: Scene) -> None:
    """UTF-8 is checked on the whole message: a character cut between two
    fragments is fine; the message is then handled (an unknown symbol)."""
    text = json.dumps({"subscribe": {"symbol": "T€ST", "requestId": "21"}}, ensure_ascii=False).encode()
    cut = text.index("€".encode()) + 1
    raw = await scene.raw(set_headers=JSON_PROTO)
    raw.send(mframe(TEXT, text[:cut], fin=False), mframe(CONT, text[cut:]))
    msg = json.loads(await raw.expect(TEXT))
    assert "error" in msg, msg
    await _clean_close(raw)


async def test_frames_after_the_servers_close_are_ignored(scene: Scene) -> None:
    """The server closes (1003); a ping and a message sent before the client
    answers get nothing back; the client's close ends the TCP connection."""
    raw = await scene.raw()
    raw.send(mframe(TEXT, b"{}"))
    f = await raw.read_frame()
    assert f is not None and f[0] == CLOSE and struct.unpack("!H", f[1][:2])[0] == 1003
    raw.send(mframe(PING, b"ignored"), mframe(BINARY, subscribe_bytes()), mframe(CLOSE, close_body(1003)))
    assert await raw.read_frame() is None  # no pong, no second close: just the end


async def test_bad_frame_after_the_servers_close_gets_no_second_close(scene: Scene) -> None:
    raw = await scene.raw()
    raw.send(mframe(TEXT, b"{}"))
    f = await raw.read_frame()
    assert f is not None and f[0] == CLOSE and struct.unpack("!H", f[1][:2])[0] == 1003
    raw.send(mframe(BINARY, b"x", mask=False))
    assert await raw.read_frame() is None


# ---------------------------------------------------------------- the opening handshake (§4)


@pytest.mark.parametrize("path", ["/ws", "/feed"])
@pytest.mark.parametrize("version", ["8", "12", "14", "13, 8", None], ids=["8", "12", "14", "list", "missing"])
async def test_unsupported_version_gets_426(scene: Scene, path: str, version: str | None) -> None:
    hdrs = {"Authorization": f"Bearer {FEED_TOKEN}"}
    drop: tuple[str, ...] = ()
    if version is None:
        drop = ("Sec-WebSocket-Version",)
    else:
        hdrs["Sec-WebSocket-Version"] = version
    raw = await scene.raw(path=path, set_headers=hdrs, drop=drop)
    assert raw.status == 426, (raw.status, raw.body)
    assert raw.headers.get("sec-websocket-version") == "13"
    assert b"13" in raw.body


@pytest.mark.parametrize("path", ["/ws", "/feed"])
@pytest.mark.parametrize(
    "key",
    [None, "", "not base64!", base64.b64encode(os.urandom(15)).decode(), base64.b64encode(os.urandom(17)).decode()],
    ids=["missing", "empty", "not base64", "15 bytes", "17 bytes"],
)
async def test_bad_key_gets_400(scene: Scene, path: str, key: str | None) -> None:
    hdrs = {"Authorization": f"Bearer {FEED_TOKEN}"}
    drop: tuple[str, ...] = ()
    if key is None:
        drop = ("Sec-WebSocket-Key",)
    else:
        hdrs["Sec-WebSocket-Key"] = key
    reader, writer = await asyncio.open_connection("127.0.0.1", scene.srv.port)
    raw = Raw(reader, writer, 0, {})
    scene.raws.append(raw)
    # Opened by hand: Raw.open would check Sec-WebSocket-Accept against the key.
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: 127.0.0.1:{scene.srv.port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Version: 13",
    ]
    lines += [f"{k}: {v}" for k, v in hdrs.items() if k not in drop]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)).decode("latin-1")
    status = int(head.split()[1])
    assert status == 400, head
    length = next(int(line.split(":")[1]) for line in head.split("\r\n") if line.lower().startswith("content-length"))
    body = await asyncio.wait_for(reader.readexactly(length), WAIT)
    assert b"Sec-WebSocket-Key" in body, body


async def test_version_13_with_a_valid_key_upgrades(scene: Scene) -> None:
    raw = await scene.raw(set_headers={"Sec-WebSocket-Version": "13"})
    assert raw.status == 101
    await _clean_close(raw)


# ---------------------------------------------------------------- what the server may put on the wire


@pytest.mark.parametrize("code", [1005, 1006, 1015, 1004, 999, 2000, 5000])
def test_close_frame_refuses_codes_not_for_the_wire(code: int) -> None:
    with pytest.raises(ValueError):
        close_frame(code)


def test_close_frame_reason_is_cut_on_a_character_boundary() -> None:
    f = close_frame(1001, "€" * 60)  # 180 bytes of UTF-8
    assert len(f) <= 2 + 125
    f[4:].decode()  # still UTF-8


def test_handshake_refusal_unit() -> None:
    from sanic.compat import Header

    ok = Header({"sec-websocket-version": "13", "sec-websocket-key": base64.b64encode(b"k" * 16).decode()})
    assert admission.handshake_refusal(ok) is None
    old = Header({"sec-websocket-version": "8", "sec-websocket-key": base64.b64encode(b"k" * 16).decode()})
    refusal = admission.handshake_refusal(old)
    assert refusal is not None and refusal.status == 426
    assert dict(refusal.headers) == {"Sec-WebSocket-Version": "13"}
