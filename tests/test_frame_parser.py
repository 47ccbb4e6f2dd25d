"""The server's reader of client frames (RFC 6455 5.2): whatever way the
bytes are split, the messages come out whole, and violations are refused
with the close code the RFC asks for. With permessage-deflate (RFC 7692),
compressed messages come out inflated, never past the size limit."""

from __future__ import annotations

import tracemalloc
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orderbook.wire.compression import deflate
from orderbook.wire.framing import FrameError, FrameParser, _unmask

pytestmark = pytest.mark.timeout(60)


def client_frame(opcode: int, payload: bytes, fin: bool = True, mask: bytes = b"\x01\x02\x03\x04") -> bytes:
    n = len(payload)
    head = bytes([(0x80 if fin else 0) | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + n.to_bytes(8, "big")
    return head + mask + _unmask(payload, mask)


messages = st.lists(
    st.tuples(st.sampled_from([1, 2]), st.binary(max_size=70_000), st.integers(1, 4), st.booleans()),
    min_size=1,
    max_size=6,
)


@settings(max_examples=60, deadline=None)
@given(messages, st.lists(st.integers(1, 5000), max_size=30), st.binary(min_size=4, max_size=4))
def test_any_split_gives_the_same_messages(msgs, cuts, mask):
    wire = b""
    for opcode, payload, parts, ping_between in msgs:
        size = max(1, len(payload) // parts)
        pieces = [payload[i : i + size] for i in range(0, len(payload), size)] or [b""]
        for k, piece in enumerate(pieces):
            wire += client_frame(opcode if k == 0 else 0, piece, fin=k == len(pieces) - 1, mask=mask)
            if ping_between and k == 0:
                wire += client_frame(0x9, b"hi", mask=mask)  # control frames may interleave
    parser = FrameParser(max_size=1 << 20)
    out = []
    pos = 0
    for cut in cuts:
        out += parser.feed(wire[pos : pos + cut])
        pos += cut
    out += parser.feed(wire[pos:])
    expected = []
    for opcode, payload, _, ping_between in msgs:
        if ping_between:
            expected.append((0x9, b"hi"))
        expected.append((opcode, payload))
    # A ping sent between fragments comes out before the message it interrupted.
    assert sorted(out) == sorted(expected) and [m for m in out if m[0] != 9] == [m for m in expected if m[0] != 9]


@pytest.mark.parametrize(
    "wire, code",
    [
        (bytes([0x82, 0x02]) + b"hi", 1002),  # not masked
        (client_frame(0x3, b"x"), 1002),  # reserved opcode
        (bytes([0xC2]) + client_frame(2, b"x")[1:], 1002),  # reserved bit
        (client_frame(0x9, b"x", fin=False), 1002),  # fragmented control frame
        (client_frame(0x9, b"x" * 126), 1002),  # control frame too long
        (client_frame(0x0, b"x"), 1002),  # continuation of nothing
        (client_frame(0x2, b"a", fin=False) + client_frame(0x2, b"b"), 1002),  # new message mid-message
        (client_frame(0x2, b"x" * 2000), 1009),  # too big
        (client_frame(0x2, b"x" * 600, fin=False) + client_frame(0x0, b"x" * 600), 1009),  # too big in pieces
    ],
)
def test_violations_are_refused_with_the_right_code(wire, code):
    with pytest.raises(FrameError) as info:
        FrameParser(max_size=1024).feed(wire)
    assert info.value.code == code


# ------------------------------------------------------------- permessage-deflate (RFC 7692)


def compressed_frames(opcode: int, message: bytes, parts: int = 1, mask: bytes = b"\x05\x06\x07\x08") -> bytes:
    """`message` compressed as a client sends it, in `parts` frames: RSV1 on
    the first frame only (RFC 7692 6.1)."""
    data = deflate(message)
    size = max(1, -(-len(data) // parts))
    pieces = [data[i : i + size] for i in range(0, len(data), size)] or [b""]
    wire = b""
    for k, piece in enumerate(pieces):
        f = client_frame(opcode if k == 0 else 0, piece, fin=k == len(pieces) - 1, mask=mask)
        wire += bytes([f[0] | 0x40]) + f[1:] if k == 0 else f
    return wire


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from([1, 2]), st.binary(max_size=5000), st.integers(1, 4), st.booleans()),
        min_size=1,
        max_size=6,
    ),
    st.lists(st.integers(1, 700), max_size=30),
)
def test_compressed_messages_come_out_inflated_whatever_the_split(msgs, cuts):
    # Compressed and plain messages mixed (the client chooses per message),
    # some in fragments, cut anywhere.
    wire = b"".join(
        compressed_frames(op, payload * 3, parts) if packed else client_frame(op, payload * 3)
        for op, payload, parts, packed in msgs
    )
    parser = FrameParser(max_size=1 << 20, inflate=True)
    out = []
    pos = 0
    for cut in cuts:
        out += parser.feed(wire[pos : pos + cut])
        pos += cut
    out += parser.feed(wire[pos:])
    assert out == [(op, payload * 3) for op, payload, _, _ in msgs]


def test_a_ping_between_the_fragments_of_a_compressed_message():
    body = b"subscribe " * 50
    wire = compressed_frames(2, body, parts=2)
    # Find where the first frame ends: its length is in the 7-bit field here.
    n = wire[1] & 0x7F
    first, rest = wire[: 2 + 4 + n], wire[2 + 4 + n :]
    out = FrameParser(1024, inflate=True).feed(first + client_frame(0x9, b"hi") + rest)
    assert out == [(0x9, b"hi"), (2, body)]


def test_message_of_exactly_the_limit_once_inflated_is_accepted():
    body = bytes(range(256)) * 8  # 2048 bytes
    assert FrameParser(2048, inflate=True).feed(compressed_frames(2, body)) == [(2, body)]
    with pytest.raises(FrameError) as info:
        FrameParser(2047, inflate=True).feed(compressed_frames(2, body))
    assert info.value.code == 1009


def bomb_payload(megabytes: int) -> bytes:
    """`megabytes` MiB of zeros, compressed as hard as DEFLATE can (~1000:1)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    zeros = bytes(1024 * 1024)
    data = b"".join(packer.compress(zeros) for _ in range(megabytes)) + packer.flush(zlib.Z_SYNC_FLUSH)
    return data[:-4]


def test_a_decompression_bomb_is_refused_without_inflating_it():
    # 200 MiB of zeros in about 200 KiB: within the frame limit compressed,
    # far over it inflated. The parser must stop at the limit, not inflate it all.
    payload = bomb_payload(200)
    assert len(payload) < 256 * 1024
    f = client_frame(2, payload)
    bomb = bytes([f[0] | 0x40]) + f[1:]
    tracemalloc.start()
    try:
        with pytest.raises(FrameError) as info:
            FrameParser(256 * 1024, inflate=True).feed(bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.value.code == 1009
    assert "inflated" in info.value.reason
    assert peak < 8 * 1024 * 1024, f"{peak} bytes allocated while refusing the bomb"


@pytest.mark.parametrize(
    "wire, code",
    [
        # RSV1 is only allowed on the first frame of a data message.
        (bytes([0xC9]) + client_frame(0x9, b"x")[1:], 1002),  # on a ping
        (bytes([0xC8]) + client_frame(0x8, b"\x03\xe8")[1:], 1002),  # on a close
        (
            client_frame(2, deflate(b"a" * 300)[:3], fin=False)
            + bytes([0xC0])
            + client_frame(0, deflate(b"a" * 300)[3:])[1:],
            1002,
        ),  # on a continuation
        (bytes([0xA2]) + client_frame(2, b"x")[1:], 1002),  # RSV2 stays reserved
        (bytes([0x92]) + client_frame(2, b"x")[1:], 1002),  # RSV3 stays reserved
        (bytes([0xE2]) + client_frame(2, deflate(b"hello"))[1:], 1002),  # RSV1 with RSV2
        (bytes([0xC2]) + client_frame(2, b"\xff\xff\xff\xff")[1:], 1002),  # not DEFLATE data
        (compressed_frames(2, b"x" * 2000), 1009),  # over the limit once inflated
        (bytes([0xC2]) + client_frame(2, b"x" * 1025)[1:], 1009),  # compressed bytes over the limit
    ],
)
def test_compressed_violations_are_refused_with_the_right_code(wire, code):
    with pytest.raises(FrameError) as info:
        FrameParser(max_size=1024, inflate=True).feed(wire)
    assert info.value.code == code


def test_rsv1_without_the_extension_stays_a_protocol_error():
    with pytest.raises(FrameError) as info:
        FrameParser(max_size=1024).feed(compressed_frames(2, b"hello " * 40))
    assert (info.value.code, info.value.reason) == (1002, "reserved bits set")
