"""The server's reader of client frames (RFC 6455 5.2): whatever way the
bytes are split, the messages come out whole, and violations are refused
with the close code the RFC asks for."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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
